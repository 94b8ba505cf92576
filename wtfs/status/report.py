"""What `wtfs status` shows, read from the shared index (works with 0, 1 or many mounts).

JSON records use seed 001's field names and status codes for transfers (`_id`, `itemId`,
`ownerId`, `path`, `sessionId`, `size`, `transferred`, `status`, `startTime`, `endTime`,
`error`, ...), plus `rate` (bytes/s), `attempts` and `source`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wtfs_index.index import Index, TransferStatus
from wtfs_index.owner import is_alive

from wtfs.cache.store import Store
from wtfs.config import Config

DISCARD_AFTER = 60.0  # seed 001: discardOld hides transfers finished more than a minute ago
RECENT = 20


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


@dataclass
class Report:
    store: dict[str, Any]
    mounts: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    locks: list[dict[str, Any]] = field(default_factory=list)
    evictions: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

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
        }


def gather(config: Config, *, session_id: str | None = None, discard_old: bool = True) -> Report:
    store = Store(config.private_storage_path)
    store_info: dict[str, Any] = {
        "path": str(config.private_storage_path),
        "capacity": config.private_storage_capacity,
        "gcStartBytes": config.gc_start_bytes,
        "gcEndBytes": config.gc_end_bytes,
        "gcStartFraction": config.gc_collect_start_fraction,
        "gcEndFraction": config.gc_collect_end_fraction,
        "usage": 0,
        "present": 0,
        "reserved": 0,
        "entries": 0,
        "complete": 0,
        "exists": False,
    }
    if not store.index_path.exists():
        return Report(store_info)
    index = Index(store.index_path)
    try:
        return _gather(index, store_info, session_id, discard_old)
    finally:
        index.close()


def _gather(
    index: Index, store_info: dict[str, Any], session_id: str | None, discard_old: bool
) -> Report:
    q = index.query
    present, entries, complete = q(
        "SELECT COALESCE(SUM(present),0), COUNT(*), COALESCE(SUM(complete),0) FROM entries"
    )[0]
    reserved = q("SELECT COALESCE(SUM(bytes),0) FROM claims")[0][0]
    unlinking = q("SELECT COALESCE(SUM(bytes),0) FROM unlinking")[0][0]
    store_info.update(
        exists=True,
        present=present,
        reserved=reserved,
        unlinking=unlinking,
        usage=present + reserved + unlinking,
        entries=entries,
        complete=complete,
    )
    report = Report(store_info)
    now = time.time()
    saved = q("SELECT v FROM meta WHERE k = 'totals'")
    totals: dict[str, int] = json.loads(saved[0]["v"]) if saved else {}
    for row in q("SELECT * FROM owners ORDER BY started"):
        stats = json.loads(row["stats"])
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        if row["kind"] != "mount" or (session_id and row["session_id"] != session_id):
            continue
        report.mounts.append(
            {
                "ownerId": row["owner_id"],
                "pid": row["pid"],
                "mountpoint": row["mountpoint"],
                "sessionId": row["session_id"],
                "origin": row["session_origin"],
                "started": iso(row["started"]),
                "heartbeat": iso(row["heartbeat"]),
                "alive": is_alive(row["pid"], row["pid_start"]),
                "stats": stats,
            }
        )
    report.totals = totals
    where: list[str] = ["1=1"]
    params: list[object] = []
    if session_id:
        where.append("session_id = ?")
        params.append(session_id)
    if discard_old:
        where.append("(end_time IS NULL OR end_time >= ?)")
        params.append(now - DISCARD_AFTER)
    for row in q(f"SELECT * FROM transfers WHERE {' AND '.join(where)} ORDER BY id", params):
        report.transfers.append(transfer_record(row, now))
    lock_where = "WHERE session_id = ?" if session_id else ""
    for row in q(
        f"SELECT * FROM locks {lock_where} ORDER BY id", [session_id] if session_id else []
    ):
        report.locks.append(
            {
                "_id": row["id"],
                "_modelType": "lock",
                "itemId": row["item_id"],
                "sessionId": row["session_id"],
                "ownerId": row["owner_id"],
                "pid": row["pid"],
                "path": row["path"],
                "mountpoint": row["mountpoint"],
                "created": iso(row["created"]),
                "alive": is_alive(row["pid"], row["pid_start"]),
            }
        )
    for row in q("SELECT * FROM evictions ORDER BY id DESC LIMIT ?", [RECENT]):
        report.evictions.append(
            {
                "key": row["key"],
                "itemId": row["item_id"],
                "path": row["path"],
                "bytes": row["bytes"],
                "time": iso(row["time"]),
                "reason": row["reason"],
            }
        )
    for row in q("SELECT * FROM failures ORDER BY id DESC LIMIT ?", [RECENT]):
        report.failures.append(
            {
                "time": iso(row["time"]),
                "kind": row["kind"],
                "key": row["key"],
                "cause": row["cause"],
            }
        )
    return report


def transfer_record(row: Any, now: float) -> dict[str, Any]:
    start, end = row["start_time"], row["end_time"]
    elapsed = ((end or now) - start) if start else 0.0
    rate = row["transferred"] / elapsed if elapsed > 0 else 0.0
    return {
        "_id": row["id"],
        "_modelType": "transfer",
        "_accessLevel": 2,
        "itemId": row["item_id"],
        "ownerId": row["owner_id"],
        "sessionId": row["session_id"],
        "path": row["path"],
        "size": row["size"],
        "transferred": row["transferred"],
        "status": row["status"],
        "statusName": TransferStatus(row["status"]).name,
        "startTime": iso(start),
        "endTime": iso(end),
        "error": row["error"],
        "rate": round(rate),
        "attempts": row["attempts"],
        "offset": row["start_offset"],
        "source": row["source"],
    }
