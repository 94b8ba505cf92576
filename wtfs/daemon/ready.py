"""The ready handshake: how `wtfs mount --foreground --ready-fd N` tells its starter it is up.

Whoever starts a mount daemon (the background `wtfs mount`, the tests, the benchmarks, a
supervisor script) needs to know when the mount serves, or why it never will, without polling
the mountpoint (`os.path.ismount` is true of a dead endpoint too). The daemon writes one line on
an inherited pipe once it is mounted, or once it has failed, and closes it:

    OK
    ERR <exit code> <cause>

Before it, zero or more `WARN <text>` lines carry what the starter should tell its user (a
capacity the store's filesystem cannot hold), since a background mount's log is a file nobody
reads at mount time.

Both ends live here so the line has one writer and one reader. A daemon that dies first just
closes the pipe (the reader sees `closed`); one that never answers is `timeout`.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

State = Literal["ready", "failed", "closed", "timeout"]


def send(fd: int, code: int, cause: str = "", warnings: Sequence[str] = ()) -> None:
    """Write the daemon's answer on `fd` and close it: `code` 0 is ready, else the exit code;
    `warnings` go first, one line each."""
    line = "OK" if code == 0 else f"ERR {code} {_one_line(cause)}"
    lines = [f"WARN {_one_line(w)}" for w in warnings] + [line]
    try:
        os.write(fd, "".join(f"{x}\n" for x in lines).encode())
    finally:
        os.close(fd)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


@dataclass(frozen=True)
class Answer:
    """What the daemon said: `ready`; `failed` with its exit code and cause; or nothing, because
    it closed the pipe (exited) or said nothing in time."""

    state: State
    code: int = 0
    cause: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def __str__(self) -> str:
        if self.state == "failed":
            return f"exit {self.code}: {self.cause}"
        return self.state


class ReadyPipe:
    """The starter's end: give the daemon `--ready-fd {pipe.fd}` and `pass_fds=(pipe.fd,)`,
    call `started()` once it runs (or `close()` if it could not be started), then `wait()`."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()

    def started(self) -> None:
        """Drop our copy of the write end: only the daemon's keeps the pipe open."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.started()
        if self._read >= 0:
            os.close(self._read)
            self._read = -1

    def wait(self, timeout: float) -> Answer:
        """The daemon's answer, waiting at most `timeout` seconds; closes the pipe."""
        self.started()
        deadline = time.monotonic() + timeout
        warnings: list[str] = []
        try:
            # Unbuffered: select() must see every byte not read yet, none may wait in a buffer.
            with os.fdopen(self._read, "rb", buffering=0, closefd=False) as pipe:
                while True:
                    left = max(0.0, deadline - time.monotonic())
                    readable, _, _ = select.select([pipe], [], [], left)
                    line = pipe.readline().decode(errors="replace").strip() if readable else None
                    if line is None or not line.startswith("WARN "):
                        break
                    warnings.append(line.removeprefix("WARN "))
        finally:
            self.close()
        answer = parse(line)
        return Answer(answer.state, answer.code, answer.cause, tuple(warnings))


def parse(line: str | None) -> Answer:
    """An answer line (None: nothing arrived in time)."""
    if line is None:
        return Answer("timeout")
    if line == "OK":
        return Answer("ready")
    if line.startswith("ERR "):
        _, code, *cause = line.split(" ", 2)
        if code.isdigit():
            return Answer("failed", int(code), cause[0] if cause else "")
    return Answer("closed", cause=line)
