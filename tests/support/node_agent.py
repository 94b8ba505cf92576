"""The helper that runs *inside* a test node (tests/support/nodes.py): PID 1 of the node's PID
namespace, in its own UTS and mount namespaces. It sets the node's hostname, starts the node's
`wtfs mount --foreground` when asked, and runs readers for the test, since a FUSE mount made in
the node lives in the node's mount namespace only.

It reads one JSON command per line on stdin and answers each on stdout with the command's `id`.
Every command runs in a thread of its own, so a reader may wait on the mount (a frozen peer, an
index that is down) while others are answered. Answers carry bytes as sha256 (and base64 for
small reads) or the errno and its text: a test sees what a program in the node would see.

    {"id": 1, "op": "mount", "argv": [...], "stderr": PATH, "wait": 60}
        -> {"state": "ready" | "failed" | "closed" | "timeout", "code", "cause"}
    {"op": "umount", "mountpoint": PATH, "wait": 30} -> {"code": the daemon's exit code or null}
    {"op": "sha256", "path": PATH}         -> {"sha256", "size"} | {"errno", "error"}
    {"op": "read", "path", "offset", "length"} -> {"sha256", "size", "data"} | {"errno", ...}
    {"op": "open", "path"}                 -> {"handle"}
    {"op": "pread", "handle", "offset", "length"} -> as read
    {"op": "close", "handle"}              -> {}
    {"op": "compare", "path" | "handle", "original", "chunk"}
        -> {"size", "mismatches": [offsets of chunks that differ], "errno"?, "error"?}
    {"op": "run", "argv": [...], "limit"}  -> {"code", "stdout", "stderr"}
    {"op": "whoami"}                       -> {"hostname", "pidns", "pid"}

Run as `python -m tests.support.node_agent HOSTNAME` (cwd: the repository).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

SMALL = 1024 * 1024  # reads up to this size also answer their bytes
CHUNK = 1024 * 1024


class Agent:
    def __init__(self) -> None:
        self._out = threading.Lock()
        self._handles: dict[int, int] = {}
        self._next_handle = 1
        self._daemon: subprocess.Popen[bytes] | None = None

    def answer(self, reply: dict[str, Any]) -> None:
        line = json.dumps(reply) + "\n"
        with self._out:
            sys.stdout.write(line)
            sys.stdout.flush()

    def serve(self) -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            threading.Thread(target=self._run, args=(command,), daemon=True).start()
        # stdin closed: the test is done with this node
        self._stop_daemon()

    def _run(self, command: dict[str, Any]) -> None:
        op = command.pop("op")
        cid = command.pop("id")
        try:
            result = getattr(self, f"op_{op}")(**command)
        except OSError as exc:
            result = {"errno": exc.errno, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # the test sees it as the answer; the agent goes on
            result = {"agent_error": f"{type(exc).__name__}: {exc}"}
        self.answer({"id": cid, **result})

    # -- the daemon -------------------------------------------------------------------------

    def op_mount(self, argv: list[str], stderr: str, wait: float) -> dict[str, Any]:
        from wtfs.daemon.ready import ReadyPipe

        pipe = ReadyPipe()
        with open(stderr, "ab") as err:
            self._daemon = subprocess.Popen(
                [a.replace("{ready_fd}", str(pipe.fd)) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(pipe.fd,),
            )
        answer = pipe.wait(wait)
        return {"state": answer.state, "code": answer.code, "cause": answer.cause}

    def op_umount(self, mountpoint: str, wait: float = 30) -> dict[str, Any]:
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
        return {"code": self._stop_daemon(wait)}

    def _stop_daemon(self, timeout: float = 30) -> int | None:
        daemon = self._daemon
        if daemon is None:
            return None
        try:
            return daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            return daemon.wait(timeout=10)

    # -- readers ----------------------------------------------------------------------------

    def op_sha256(self, path: str) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return {"sha256": digest.hexdigest(), "size": size}

    def op_read(self, path: str, offset: int, length: int) -> dict[str, Any]:
        fd = os.open(path, os.O_RDONLY)
        try:
            return _bytes(_pread_all(fd, length, offset))
        finally:
            os.close(fd)

    def op_open(self, path: str) -> dict[str, Any]:
        fd = os.open(path, os.O_RDONLY)
        with self._out:
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = fd
        return {"handle": handle}

    def op_pread(self, handle: int, offset: int, length: int) -> dict[str, Any]:
        return _bytes(_pread_all(self._handles[handle], length, offset))

    def op_close(self, handle: int) -> dict[str, Any]:
        os.close(self._handles.pop(handle))
        return {}

    def op_compare(
        self, original: str, path: str | None = None, handle: int | None = None,
        chunk: int = CHUNK,
    ) -> dict[str, Any]:  # fmt: skip
        """Read every byte of a file of the mount (by path, or through an open handle) and
        compare it with the original, chunk by chunk."""
        fd = self._handles[handle] if handle is not None else os.open(path or "", os.O_RDONLY)
        mismatches: list[int] = []
        size = 0
        result: dict[str, Any] = {}
        try:
            with open(original, "rb") as want:
                total = os.fstat(want.fileno()).st_size
                while size < total:
                    expected = want.read(chunk)
                    try:
                        got = _pread_all(fd, len(expected), size)
                    except OSError as exc:
                        result = {"errno": exc.errno, "error": f"{exc} at offset {size}"}
                        break
                    if got != expected:
                        mismatches.append(size)
                    size += len(expected)
        finally:
            if handle is None:
                os.close(fd)
        return {"size": size, "mismatches": mismatches, **result}

    # -- anything else ----------------------------------------------------------------------

    def op_run(self, argv: list[str], limit: float = 120) -> dict[str, Any]:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
        return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def op_whoami(self) -> dict[str, Any]:
        return {
            "hostname": socket.gethostname(),
            "pidns": os.readlink("/proc/self/ns/pid"),
            "pid": os.getpid(),
        }


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        data = os.pread(fd, min(length, CHUNK), offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
        length -= len(data)
    return b"".join(parts)


def _bytes(data: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if len(data) <= SMALL:
        reply["data"] = base64.b64encode(data).decode()
    return reply


def main() -> None:
    socket.sethostname(sys.argv[1])
    Path("/proc/self/comm").write_text(f"node-agent-{sys.argv[1]}"[:15])
    Agent().serve()


if __name__ == "__main__":
    main()
