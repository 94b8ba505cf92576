"""Who holds a lock, a claim or an unlinking batch, and how anyone judges whether it still lives.

A process is identified by its host (the kernel's boot id and the hostname), its PID namespace
(the inode of `/proc/self/ns/pid`), its pid and its start time (`/proc/PID/stat` field 22). A
pid alone is no identity: pids are reused, and two containers started the same way often have
the very same pids. Liveness is judged by one rule, wherever it is judged:

- an owner on *my* host (same boot id) in *my* PID namespace is alive while a process with that
  pid and that start time exists in my /proc;
- every other owner (another container, another node, or an owner with no process at all such
  as a pin set through Girder) is alive while its lease is fresh: it renews the lease with its
  heartbeat, and a lease runs out by the index's own clock (the database server's on
  PostgreSQL), so clock skew between nodes cannot end a live lease early.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from functools import cache

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None when no such process lives."""
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


@cache
def boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:  # not Linux, or /proc hidden: no owner can ever be judged by /proc then
        return f"unknown-{uuid.uuid4().hex}"


def pid_namespace() -> str:
    """`pid:[INODE]` of this process's PID namespace (differs between containers)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"unknown-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Owner:
    owner_id: str
    host: str  # the hostname, for people; identity on a host comes from boot_id + pidns
    boot_id: str | None = None
    pidns: str | None = None
    pid: int | None = None
    pid_start: int | None = None

    @classmethod
    def current(cls, tag: str = "") -> Owner:
        """This process."""
        pid = os.getpid()
        start = process_start_time(pid)
        assert start is not None, "/proc is required"
        suffix = uuid.uuid4().hex[:8]
        owner_id = f"{tag}-{pid}-{suffix}" if tag else f"{pid}-{suffix}"
        return cls(owner_id, socket.gethostname(), boot_id(), pid_namespace(), pid, start)

    @classmethod
    def lease_only(cls, owner_id: str, host: str | None = None) -> Owner:
        """An owner with no process behind it (a pin set through Girder): alive by lease only."""
        return cls(owner_id, host or socket.gethostname())

    def sees(self, boot: str | None, pidns: str | None) -> bool:
        """Whether this process can judge an owner of (boot id, PID namespace) by its /proc."""
        return boot is not None and boot == self.boot_id and pidns == self.pidns

    def judges_alive(
        self,
        *,
        boot: str | None,
        pidns: str | None,
        pid: int | None,
        pid_start: int | None,
        lease_fresh: bool,
    ) -> bool:
        """The one liveness rule (module docstring), judged from this process's point of view."""
        if pid is not None and pid_start is not None and self.sees(boot, pidns):
            return is_alive(pid, pid_start)
        return lease_fresh

    def alive(self) -> bool:
        """Whether this owner's own process still runs (only meaningful on its own host)."""
        return (
            self.pid is not None
            and self.pid_start is not None
            and is_alive(self.pid, self.pid_start)
        )
