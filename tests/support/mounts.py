"""Real `wtfs mount` daemons for tests: started with Popen in the foreground, waited for, and
always unmounted (`fusermount3 -u -z`) and reaped in teardown, as s3ql's tests do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wtfs.daemon.ready import ReadyPipe

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Mount:
    mountpoint: Path
    config_path: Path
    session_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(repr=False)

    def log(self) -> str:
        """The daemon's log, and what it wrote to stderr (an exception that escaped its loop)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        stderr = Path(f"{self.log_path}.stderr")
        return text + (stderr.read_text(errors="replace") if stderr.exists() else "")

    def wtfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_wtfs(["-c", str(self.config_path), *args], self.env, check=check)

    def status(self, *args: str) -> dict[str, Any]:
        result = self.wtfs("status", "--json", *args, check=False)
        assert result.returncode in (0, 3), result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
            )
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # A killed daemon leaves a dead endpoint behind.
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
        )


def run_wtfs(
    args: list[str], env: dict[str, str], *, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "wtfs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"wtfs {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def write_session(
    path: Path, data_set: list[dict[str, str]], session_id: str | None = None
) -> Path:
    """A session file; with `session_id` (a Girder session's `_id`, as `GET /dm/session/{id}`
    answers it) the mount's locks and transfers are taken under that id, not the file's name."""
    record: dict[str, Any] = {"dataSet": data_set}
    if session_id is not None:
        record["_id"] = session_id
    path.write_text(json.dumps(record))
    return path


def start_mount(
    workdir: Path,
    config: dict[str, Any],
    data_set: list[dict[str, str]],
    *,
    env: dict[str, str] | None = None,
    mountpoint: Path | None = None,
    timeout: float = 60,
    session_id: str | None = None,
) -> Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(workdir / f"wtfs-{time.monotonic_ns()}.yaml", config)
    session_path = write_session(
        workdir / f"session-{time.monotonic_ns()}.json", data_set, session_id
    )
    mountpoint = mountpoint or workdir / "mnt"
    mountpoint.mkdir(exist_ok=True)
    log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
    config_path.write_text(yaml.safe_dump({**config, "log_file": str(log_path)}, sort_keys=False))
    extra, env = env or {}, dict(os.environ)
    env.pop("GIRDER_API_KEY", None)  # tests give the key by file unless they say otherwise
    env.update(extra)
    # The daemon answers on this pipe once mounted (wtfs.daemon.ready, as the background mode
    # does). os.path.ismount is no readiness test: it is True on a dead endpoint.
    pipe = ReadyPipe()
    stderr = open(f"{log_path}.stderr", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "wtfs", "-c", str(config_path), "-v", "mount", "--foreground",
         "--ready-fd", str(pipe.fd), str(session_path), str(mountpoint)],
        stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT, pass_fds=(pipe.fd,),
    )  # fmt: skip
    stderr.close()
    mount = Mount(mountpoint, config_path, session_path, log_path, process, env)
    answer = pipe.wait(timeout)
    if not answer.ready:
        mount.stop()
        raise AssertionError(f"wtfs mount not ready ({answer}):\n{mount.log()}")
    return mount


@contextmanager
def mounted(
    workdir: Path, config: dict[str, Any], data_set: list[dict[str, str]], **kwargs: Any
) -> Iterator[Mount]:
    mount = start_mount(workdir, config, data_set, **kwargs)
    try:
        yield mount
    finally:
        mount.stop()
        log = mount.log()
        assert "Traceback" not in log, f"the daemon logged a traceback:\n{log}"


def drop_page_cache() -> None:
    """Make the next read of a mounted file reach the daemon (we are root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
