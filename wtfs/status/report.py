"""What `wtfs status` shows, read from the shared index (works with 0, 1 or many mounts).

Locks and transfers are shaped by `wtfs_index.records`, as the Girder plugin's /dm/lock and
/dm/transfer shape them: the field names and status codes of WholeTale's Data Manager (`_id`,
`itemId`, `ownerId`, `path`, `sessionId`, `size`, `transferred`, `status` 0-4, `startTime`,
`endTime`, `error`, ...; tests/fixtures/seed001 holds its examples), plus `rate` (bytes/s),
`attempts` and `source`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from wtfs_index import (
    DISCARD_AFTER,
    Index,
    Owner,
    TransferStatus,
    index_location,
    open_index,
)
from wtfs_index.records import iso, lock_record, transfer_record

from wtfs.cache.space import measure
from wtfs.cache.store import Store
from wtfs.config import Config, gc_policy
from wtfs.status.progress import prefetch_record

RECENT = 20


@dataclass
class Report:
    store: dict[str, Any]
    mounts: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    locks: list[dict[str, Any]] = field(default_factory=list)
    evictions: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    #: `wtfs prefetch` runs not ended, and those that ended within the last minute
    prefetches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_count(self) -> int:
        return sum(1 for t in self.transfers if t["status"] == TransferStatus.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "mounts": self.mounts,
            "transfers": self.transfers,
            "locks": self.locks,
            "evictions": self.evictions,
            "failures": self.failures,
            "totals": self.totals,
            "prefetches": self.prefetches,
        }


def gather(config: Config, *, session_id: str | None = None, discard_old: bool = True) -> Report:
    store = Store(config.private_storage_path, config.index_url)
    marks = gc_policy(config)
    store_info: dict[str, Any] = {
        "path": str(config.private_storage_path),
        "index": index_location(config.index_url, config.private_storage_path),
        "capacity": config.private_storage_capacity,
        # what the store may hold: the capacity, or less when its filesystem holds less
        "effectiveCapacity": config.private_storage_capacity,
        "gcStartBytes": marks.start_bytes,
        "gcEndBytes": marks.end_bytes,
        "gcStartFraction": config.gc_collect_start_fraction,
        "gcEndFraction": config.gc_collect_end_fraction,
        "usage": 0,
        "present": 0,
        "reserved": 0,
        "entries": 0,
        "complete": 0,
        "exists": False,
    }
    if not store.has_index():
        return Report(store_info)
    index = open_index(config.index_url, config.private_storage_path, lease=config.lease)
    try:
        return _gather(index, store, config, store_info, session_id, discard_old)
    finally:
        index.close()


def _gather(
    index: Index,
    store: Store,
    config: Config,
    store_info: dict[str, Any],
    session_id: str | None,
    discard_old: bool,
) -> Report:
    me = Owner.current("status")
    summary = index.summary()
    store_info.update(
        exists=True,
        present=summary.present,
        reserved=summary.reserved,
        unlinking=summary.unlinking,
        usage=summary.usage,
        entries=summary.entries,
        complete=summary.complete,
    )
    capacity = measure(store, config.private_storage_capacity, config.disk_reserve, summary)
    if capacity.limited:  # the GC's marks are fractions of what the store may hold
        marks = dataclasses.replace(gc_policy(config), capacity=capacity.effective)
        store_info.update(
            effectiveCapacity=capacity.effective,
            gcStartBytes=marks.start_bytes,
            gcEndBytes=marks.end_bytes,
        )
    report = Report(store_info)
    now = time.time()
    report.totals = index.totals()
    for owner in index.owners(me):
        if owner.kind != "mount" or (session_id and owner.session_id != session_id):
            continue
        report.mounts.append(
            {
                "ownerId": owner.owner_id,
                "host": owner.host,
                "pid": owner.pid,
                "mountpoint": owner.mountpoint,
                "sessionId": owner.session_id,
                "origin": owner.session_origin,
                "started": iso(owner.started),
                "heartbeat": iso(owner.heartbeat),
                "alive": owner.alive,
                "stats": owner.stats,
            }
        )
    ended_after = now - DISCARD_AFTER if discard_old else None
    for row in index.transfers(session_id=session_id, ended_after=ended_after):
        report.transfers.append(transfer_record(row, now))
    for lock in index.locks(me, session_id=session_id):
        report.locks.append(lock_record(lock))
    for prefetch in index.prefetches(session_id=session_id, ended_after=ended_after):
        report.prefetches.append(prefetch_record(prefetch, now=now))
    for ev in index.evictions(RECENT):
        report.evictions.append(
            {
                "key": ev.key,
                "itemId": ev.item_id,
                "path": ev.path,
                "bytes": ev.bytes,
                "time": iso(ev.time),
                "reason": ev.reason,
            }
        )
    for failure in index.failures(RECENT):
        report.failures.append(
            {
                "time": iso(failure.time),
                "kind": failure.kind,
                "key": failure.key,
                "cause": failure.cause,
            }
        )
    return report
