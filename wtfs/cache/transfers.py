"""Transfer records: one per fetch run, in the Data Manager's shape and codes.

INITIALIZING when created, QUEUED while waiting for a transfer slot, TRANSFERRING while bytes
move (`transferred` is updated with each committed piece, in the commit's transaction), then
DONE or FAILED with the cause. A run stopped early because its readers went away ends DONE with
`size` set to what it moved. Records are bookkeeping: when the index cannot take an update
(its server is down, its disk is full), the fetch goes on and the record catches up at the next
update. A record update never raises into the run it describes: a run ends in a `finally`
that updates its record, and an error escaping there would take the mount's fetches with it.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import trio
from wtfs_index import TransferStatus

from wtfs.cache.aindex import AsyncIndex
from wtfs.errors import IndexUnavailable, WtfsError
from wtfs.providers.urls import redact_url

log = logging.getLogger(__name__)


class Transfer:
    def __init__(self, index: AsyncIndex, transfer_id: int, size: int) -> None:
        self.index = index
        self.id = transfer_id
        self.size = size
        self.attempts = 1

    async def _update(self, **fields: Any) -> None:
        try:
            await self.index.run(self.index.sync.transfer_update, self.id, **fields)
        except WtfsError as exc:
            log.warning("transfer %d: record not updated: %s", self.id, exc.cause)

    async def queued(self) -> None:
        await self._update(status=int(TransferStatus.QUEUED), size=self.size)

    async def transferring(self) -> None:
        await self._update(
            status=int(TransferStatus.TRANSFERRING), start_time=time.time(), attempts=1
        )

    def retried(self, attempt: int) -> None:
        self.attempts = attempt + 1

    async def finish(self, transferred: int, error: WtfsError | None) -> None:
        fields: dict[str, Any] = {
            "status": int(TransferStatus.FAILED if error else TransferStatus.DONE),
            "end_time": time.time(),
            "transferred": transferred,
            "attempts": self.attempts,
        }
        if error is None and transferred < self.size:
            fields["size"] = transferred  # stopped early: record what it moved
        if error is not None:
            fields["error"] = error.cause
        await self._update(**fields)


class TransferLog:
    """Creates the records of one daemon (its session and owner)."""

    def __init__(self, index: AsyncIndex, session_id: str, owner_id: str) -> None:
        self.index = index
        self.session_id = session_id
        self.owner_id = owner_id

    async def begin(
        self,
        *,
        key: str,
        item_id: str,
        path: str,
        source: str,
        start: int,
        size: int,
        wait: float | None = None,
        transferring: bool = False,
    ) -> Transfer:
        """A new record (TRANSFERRING at once when its fetch has its slot). With `wait`, an
        index that cannot be reached is tried again with backoff for up to `wait` seconds (a
        fetch needs it anyway, to reserve its blocks), then IndexUnavailable with its cause."""
        create = functools.partial(
            self.index.sync.transfer_create,
            key=key,
            item_id=item_id,
            path=path,
            session_id=self.session_id,
            owner_id=self.owner_id,
            source=redact_url(source),
            size=size,
            start_offset=start,
            status=int(
                TransferStatus.TRANSFERRING if transferring else TransferStatus.INITIALIZING
            ),
        )
        if wait is None:
            return Transfer(self.index, await self.index.run(create), size)
        with trio.move_on_after(wait):
            return Transfer(self.index, await self.index.run_retrying(create), size)
        raise IndexUnavailable(f"{path}: {self.index.unreachable} (for {wait:g}s)")

    def resume(self, transfer_id: int, size: int) -> Transfer:
        """A record `wtfs retry` re-queued, run again."""
        return Transfer(self.index, transfer_id, size)

    async def failed_at_once(
        self, *, key: str, item_id: str, path: str, source: str, size: int, cause: str
    ) -> None:
        """A FAILED record for a file that can never be fetched (the cause says why)."""
        record = await self.begin(
            key=key, item_id=item_id, path=path, source=source, start=0, size=size
        )
        await self.fail(record.id, cause)

    async def fail(self, transfer_id: int, cause: str) -> None:
        await self.index.run(
            self.index.sync.transfer_update,
            transfer_id,
            status=int(TransferStatus.FAILED),
            error=cause,
            end_time=time.time(),
        )

    async def done(self, transfer_id: int) -> None:
        await self.index.run(
            self.index.sync.transfer_update,
            transfer_id,
            status=int(TransferStatus.DONE),
            end_time=time.time(),
        )
