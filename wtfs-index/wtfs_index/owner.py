"""Who holds a lock or a claim: a process identified by pid *and* start time.

A pid alone is not an identity (pids are reused); pid + the process start time from
`/proc/PID/stat` (field 22, clock ticks since boot) is. An owner is live while a process with
that pid and that start time exists on this host.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass


def process_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # exited, not yet reaped: it holds nothing any more
        return None
    return int(fields[19])  # field 22 overall


def is_alive(pid: int, start_time: int) -> bool:
    return process_start_time(pid) == start_time


@dataclass(frozen=True)
class Owner:
    owner_id: str
    pid: int
    pid_start: int
    host: str

    @classmethod
    def current(cls, tag: str = "") -> Owner:
        pid = os.getpid()
        start = process_start_time(pid)
        assert start is not None, "/proc is required"
        suffix = uuid.uuid4().hex[:8]
        owner_id = f"{tag}-{pid}-{suffix}" if tag else f"{pid}-{suffix}"
        return cls(owner_id, pid, start, socket.gethostname())

    def alive(self) -> bool:
        return is_alive(self.pid, self.pid_start)
