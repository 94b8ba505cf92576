"""Test nodes: a wtfs mount daemon on "another node", i.e. in new UTS, PID and mount namespaces
of this machine with a hostname of its own (`unshare -u -p -m -f --mount-proc`), sharing a store
directory (and, with `index_url`, a PostgreSQL index) with other nodes.

    with Cluster(tmp_path) as cluster:
        a = cluster.node("node-a", config, data_set)
        b = cluster.node("node-b", config, data_set)
        assert b.sha256("file.bin") == digest          # read inside node b
        h = a.open("file.bin"); a.pread(h, 0, 4096)    # a file held open in node a
        a.freeze(); ...; a.thaw()                      # SIGSTOP / SIGCONT the whole node
        a.kill()                                       # kill -9 the node (its process group)

What a node is: `unshare` started in a session of its own (so its process group is the node),
forking PID 1 of the new PID namespace, which runs `tests/support/node_agent.py`. The agent sets
the hostname, starts `wtfs mount --foreground` in the node and runs readers for the test (the
node's FUSE mount lives in the node's mount namespace only): each command is a JSON line on
its stdin, answered on its stdout, each in a thread of its own so that a reader may block on
the mount while the test goes on (`submit` returns a future).

A node has the same boot id as the machine (it is the same kernel) but another PID namespace:
its peers judge it alive by its lease only, as they would a process on another machine.

Teardown (`Cluster.close`, whatever happened): every node is thawed, asked to unmount, then
its process group is killed (the namespace and its mount die with its last process); the
daemon's log is read and a traceback in it fails the test, as `mounts.mounted()` does.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.mounts import ROOT, write_config, write_session

UNSHARE = ["unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc"]


class NodeError(AssertionError):
    """A command the agent could not run, or an agent that went away."""


@dataclass(frozen=True)
class ReadResult:
    """What a reader in the node got: bytes (their sha256 and size) or an errno."""

    sha256: str | None = None
    size: int = 0
    data: bytes | None = None
    errno: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.errno is None


class Node:
    def __init__(self, name: str, workdir: Path, config: dict[str, Any], mountpoint: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.mountpoint = mountpoint
        self.log_path = workdir / "daemon.log"
        self.config = {**config, "log_file": str(self.log_path)}
        self.config_path = write_config(workdir / "wtfs.yaml", self.config)
        self.agent_log = workdir / "agent.stderr"
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._gone = False
        env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
        env["PYTHONPATH"] = str(ROOT)
        self.env = env
        with open(self.agent_log, "wb") as err:
            self.process = subprocess.Popen(
                [*UNSHARE, sys.executable, "-m", "tests.support.node_agent", name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=ROOT, env=env, start_new_session=True,
            )  # fmt: skip
        self.pgid = self.process.pid  # a session of its own: its process group is the node
        threading.Thread(target=self._pump, name=f"{name}-answers", daemon=True).start()
        self.whoami = self.call("whoami", timeout=30)

    # -- the command channel ----------------------------------------------------------------

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            reply = json.loads(line)
            with self._lock:
                future = self._pending.pop(int(reply.pop("id")), None)
            if future is not None:
                future.set_result(reply)
        with self._lock:
            self._gone = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(NodeError(f"{self.name}: the node went away\n{self.log()}"))

    def submit(self, op: str, **args: Any) -> Future[dict[str, Any]]:
        """Send a command; its answer arrives on the future (the command runs in the node)."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._gone:
                raise NodeError(f"{self.name}: the node is gone")
            cid = next(self._ids)
            self._pending[cid] = future
        line = json.dumps({"id": cid, "op": op, **args}) + "\n"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except OSError as exc:
            with self._lock:
                self._pending.pop(cid, None)
            raise NodeError(f"{self.name}: the node is gone ({exc})") from None
        return future

    def call(self, op: str, *, timeout: float = 120, **args: Any) -> dict[str, Any]:
        reply = self.submit(op, **args).result(timeout=timeout)
        if "agent_error" in reply:
            raise NodeError(f"{self.name}: {op} failed in the agent: {reply['agent_error']}")
        return reply

    # -- the mount --------------------------------------------------------------------------

    def mount(self, data_set: list[dict[str, str]], *, timeout: float = 60) -> None:
        session = write_session(self.workdir / "session.json", data_set)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "wtfs", "-c", str(self.config_path), "-v", "mount",
                "--foreground", "--ready-fd", "{ready_fd}", str(session),
                str(self.mountpoint)]  # fmt: skip
        answer = self.call(
            "mount", argv=argv, stderr=f"{self.log_path}.stderr", wait=timeout,
            timeout=timeout + 15,
        )  # fmt: skip
        if answer["state"] != "ready":
            raise NodeError(f"{self.name}: wtfs mount not ready ({answer}):\n{self.log()}")

    def umount(self, timeout: float = 30) -> int | None:
        reply = self.call(
            "umount", mountpoint=str(self.mountpoint), wait=timeout, timeout=timeout + 15
        )
        code: int | None = reply["code"]
        return code

    def log(self) -> str:
        """The daemon's log and its stderr (an exception that escaped its loop)."""
        parts = []
        for path in (self.log_path, Path(f"{self.log_path}.stderr")):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    # -- readers in the node ----------------------------------------------------------------

    def path(self, relative: str) -> str:
        return str(self.mountpoint / relative.lstrip("/"))

    def sha256(self, relative: str, *, timeout: float = 300) -> str:
        result = _result(self.call("sha256", path=self.path(relative), timeout=timeout))
        if not result.ok:
            raise NodeError(f"{self.name}: reading {relative}: {result.error}")
        assert result.sha256 is not None
        return result.sha256

    def read(self, relative: str, offset: int, length: int, *, timeout: float = 300) -> ReadResult:
        reply = self.call(
            "read", path=self.path(relative), offset=offset, length=length, timeout=timeout
        )
        return _result(reply)

    def open(self, relative: str, *, timeout: float = 120) -> int:
        reply = self.call("open", path=self.path(relative), timeout=timeout)
        if "handle" not in reply:
            raise NodeError(f"{self.name}: open {relative}: {reply.get('error')}")
        return int(reply["handle"])

    def pread(self, handle: int, offset: int, length: int, *, timeout: float = 300) -> ReadResult:
        return _result(
            self.call("pread", handle=handle, offset=offset, length=length, timeout=timeout)
        )

    def close_handle(self, handle: int) -> None:
        self.call("close", handle=handle)

    def submit_compare(
        self, original: Path, *, relative: str | None = None, handle: int | None = None
    ) -> Future[dict[str, Any]]:
        """Compare every byte of a file of the mount with `original`, in the node; the answer
        is {"size", "mismatches", "errno"?, "error"?}."""
        args: dict[str, Any] = {"original": str(original)}
        if handle is not None:
            args["handle"] = handle
        else:
            assert relative is not None
            args["path"] = self.path(relative)
        return self.submit("compare", **args)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        reply = self.call("run", argv=list(argv), limit=timeout, timeout=timeout + 15)
        return subprocess.CompletedProcess(argv, reply["code"], reply["stdout"], reply["stderr"])

    def wtfs(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "wtfs", "-c", str(self.config_path), *args,
                        timeout=timeout)  # fmt: skip

    def status(self) -> dict[str, Any]:
        """`wtfs status --json`, run in the node."""
        result = self.wtfs("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    # -- signals ----------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Signal the whole node (unshare does not forward signals to its child)."""
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9 the node: every process in it, at once."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Thaw, unmount, kill: whatever state the node is in."""
        self.thaw()
        if self.alive:
            with suppress(Exception):
                self.umount(timeout=20)
        with suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def _result(reply: dict[str, Any]) -> ReadResult:
    if "errno" in reply:
        return ReadResult(errno=int(reply["errno"]), error=str(reply.get("error")))
    data = base64.b64decode(reply["data"]) if "data" in reply else None
    return ReadResult(sha256=reply["sha256"], size=int(reply["size"]), data=data)


class Cluster:
    """The nodes of one test, all torn down by `close()` (or the `with` block's end)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[Node] = []

    def node(
        self,
        name: str,
        config: dict[str, Any],
        data_set: list[dict[str, str]] | None = None,
        *,
        mountpoint: Path | None = None,
    ) -> Node:
        """A new node named `name` (its hostname), mounting `data_set` unless it is None."""
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        node = Node(name, workdir, config, mountpoint or workdir / "mnt")
        self.nodes.append(node)
        if data_set is not None:
            node.mount(data_set)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for node in self.nodes:
            log = node.log()
            assert "Traceback" not in log, f"{node.name}: the daemon logged a traceback:\n{log}"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> float:
    """Poll `predicate` until true; the seconds it took. AssertionError after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - start
