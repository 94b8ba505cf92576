"""Locks and transfers in seed 001's shapes, for every answer that shows them.

`wtfs status --json` (the client) and `/dm/lock` and `/dm/transfer` (the Girder plugin) show the
same index rows; shaping them here, once, keeps the two answers alike without the plugin
importing the client (which would drag pyfuse3 and trio into Girder's environment).

The seed's keys come first (`_id`, `_modelType`, `_accessLevel`, `itemId`, `sessionId`,
`ownerId`, `userId` for locks; the DM's transfer fields and status codes for transfers), ids as
strings as in the seed (the index's ids are integers). What the seed lacks and the index knows
follows (`kind`, `expires`, `alive`, `rate`, ...). Times are ISO 8601 in UTC, or null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wtfs_index.model import LockRow, TransferRow, TransferStatus

#: Girder's AccessType.ADMIN, the `_accessLevel` of whoever may do anything with the record
#: (the only level `wtfs status` knows: it reads the index itself)
ADMIN = 2


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def lock_record(
    lock: LockRow, *, user_id: str | None = None, access_level: int = ADMIN
) -> dict[str, Any]:
    """A lock as the DM shows one, plus its kind, lease, where it lives and whether it lives.

    `user_id` is the Girder user who owns the lock's session: the plugin knows it, the client
    does not (null). `expires` is null for a lock that lives as long as its owner (a mount's),
    and set for a pin; `entryKey` null means every entry of the item.
    """
    return {
        "_id": str(lock.id),
        "_modelType": "lock",
        "_accessLevel": access_level,
        "itemId": lock.item_id,
        "sessionId": lock.session_id,
        "ownerId": lock.owner_id,
        "userId": user_id,
        "kind": lock.kind,
        "entryKey": lock.entry_key,
        "host": lock.host,
        "path": lock.path,
        "mountpoint": lock.mountpoint,
        "created": iso(lock.created),
        "expires": iso(lock.expires),
        "alive": lock.alive,
    }


def transfer_record(row: TransferRow, now: float, *, access_level: int = ADMIN) -> dict[str, Any]:
    """A transfer as the DM shows one (its status codes), plus its rate in bytes/s (over its
    whole run so far, by `now`), attempts, start offset and source (credentials removed)."""
    start, end = row.start_time, row.end_time
    elapsed = ((end or now) - start) if start else 0.0
    rate = row.transferred / elapsed if elapsed > 0 else 0.0
    return {
        "_id": str(row.id),
        "_modelType": "transfer",
        "_accessLevel": access_level,
        "itemId": row.item_id,
        "ownerId": row.owner_id,
        "sessionId": row.session_id,
        "path": row.path,
        "size": row.size,
        "transferred": row.transferred,
        "status": row.status,
        "statusName": TransferStatus(row.status).name,
        "startTime": iso(start),
        "endTime": iso(end),
        "error": row.error,
        "rate": round(rate),
        "attempts": row.attempts,
        "offset": row.start_offset,
        "source": row.source,
    }
