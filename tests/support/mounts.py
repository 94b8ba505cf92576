"""Real `wtfs mount` daemons for tests: started with Popen in the foreground, waited for, and
always unmounted (`fusermount3 -u -z`) and reaped in teardown, as s3ql's tests do."""

from __future__ import annotations

import json
import os
import select
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
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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


def write_session(path: Path, data_set: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps({"dataSet": data_set}))
    return path


def start_mount(
    workdir: Path,
    config: dict[str, Any],
    data_set: list[dict[str, str]],
    *,
    env: dict[str, str] | None = None,
    mountpoint: Path | None = None,
    timeout: float = 60,
) -> Mount:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(workdir / f"wtfs-{time.monotonic_ns()}.yaml", config)
    session_path = write_session(workdir / f"session-{time.monotonic_ns()}.json", data_set)
    mountpoint = mountpoint or workdir / "mnt"
    mountpoint.mkdir(exist_ok=True)
    log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
    config_path.write_text(yaml.safe_dump({**config, "log_file": str(log_path)}, sort_keys=False))
    extra, env = env or {}, dict(os.environ)
    env.pop("GIRDER_API_KEY", None)  # tests give the key by file unless they say otherwise
    env.update(extra)
    # The daemon says "OK" (or "ERR ...") on this pipe once mounted: the same protocol as the
    # background mode. (os.path.ismount is no readiness test: it is True on a dead endpoint.)
    ready_read, ready_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "wtfs", "-c", str(config_path), "-v", "mount", "--foreground",
         "--ready-fd", str(ready_write), str(session_path), str(mountpoint)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
        pass_fds=(ready_write,),
    )  # fmt: skip
    os.close(ready_write)
    mount = Mount(mountpoint, config_path, session_path, log_path, process, env)
    with os.fdopen(ready_read, "rb") as pipe:
        readable, _, _ = select.select([pipe], [], [], timeout)
        message = pipe.readline().decode().strip() if readable else ""
    if message != "OK":
        mount.stop()
        raise AssertionError(f"wtfs mount not ready ({message or 'timeout'}):\n{mount.log()}")
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
