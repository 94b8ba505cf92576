"""Owner identities for index tests: this process, a process that has exited, and owners that
this process cannot judge by /proc (another PID namespace, another host) whatever their pid.

Every identity here is real: a dead owner's pid and start time are those of a process that ran
and exited; an owner "in another PID namespace" carries this very process's pid and start time,
so only the namespace decides how it is judged.
"""

from __future__ import annotations

import os
import socket
import subprocess

from wtfs_index.owner import Owner, boot_id, pid_namespace, process_start_time

OTHER_PIDNS = "pid:[4026599999]"  # no namespace of this host has that inode
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"


def exited_process() -> tuple[int, int]:
    """(pid, start time) of a process that really existed and has exited."""
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    assert process_start_time(proc.pid) != start
    return proc.pid, start


def this_process(owner_id: str) -> Owner:
    """Another owner id for this very process (a second daemon on this host, say)."""
    start = process_start_time(os.getpid())
    assert start is not None
    return Owner(owner_id, socket.gethostname(), boot_id(), pid_namespace(), os.getpid(), start)


def dead(owner_id: str, identity: tuple[int, int]) -> Owner:
    """An owner on this host, in this PID namespace, whose process has exited."""
    pid, start = identity
    owner = Owner(owner_id, socket.gethostname(), boot_id(), pid_namespace(), pid, start)
    assert not owner.alive()
    return owner


def in_other_pidns(owner_id: str, *, pid: int | None = None, pid_start: int | None = None) -> Owner:
    """An owner in another container of this host: by default with *this* process's pid and
    start time, which must not make it look alive (or dead) by our /proc."""
    me = this_process(owner_id)
    return Owner(
        owner_id,
        me.host,
        me.boot_id,
        OTHER_PIDNS,
        me.pid if pid is None else pid,
        me.pid_start if pid_start is None else pid_start,
    )


def on_other_host(owner_id: str) -> Owner:
    """An owner on another node (another boot id), with this process's pid and namespace."""
    me = this_process(owner_id)
    return Owner(owner_id, "other-node", OTHER_BOOT, me.pidns, me.pid, me.pid_start)
