"""Room in the store: reserving bytes before they are fetched, and making room when there is
none, in this order:

1. evict least recently used entries nobody holds (the GC, at once);
2. window entries that only readers hold (`wtfs_index.base`): drop their bytes outside what
   each reader needs now (its pin); the readers of this process pin at once, those of other
   processes at their next heartbeat, so this waits for them a little (at most a lease: a
   reader that never answers has lost its locks by then);
3. wait for room other processes are making (a GC pass of theirs unlinking, at most a lease);
4. otherwise ENOSPC, with the cause recorded. Only a read waiting for the bytes gets there:
   read-ahead that finds no room stops quietly.

The store's capacity is also bounded by the disk it is on (`Capacity`): a reservation that the
filesystem could not hold (its free space, less a reserve for the index and logs) is no room
either, and the GC sizes its water marks on what the filesystem can hold when that is less than
the configured capacity (or it would never evict, and every read would meet a full disk).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from wtfs_index import Eviction, Owner, Ranges, Reservation, StoreSummary
from wtfs_index.sqlite import WAL_LIMIT

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.store import Store
from wtfs.config import format_size
from wtfs.errors import NoSpace, WtfsError

log = logging.getLogger(__name__)

#: seconds between looks while other processes' readers have yet to pin
PIN_POLL = 0.1

MakeRoom = Callable[[int], Awaitable[int]]
PinOwn = Callable[[list[tuple[int, str]]], Awaitable[None]]


@dataclass(frozen=True)
class Capacity:
    """How many bytes the store may hold: the configured capacity, or less when the filesystem
    under it cannot hold that much.

    What the filesystem can hold for the store is what the store's files take (present bytes,
    and bytes dropped but not unlinked yet) plus its free space, less `reserve` (room kept for
    the index and logs). Bytes reserved by fetches in flight are not counted as taken: they are
    still free on the disk until written.
    """

    configured: int
    effective: int
    #: bytes the filesystem can hold for the store (None: its free space cannot be read)
    disk: int | None
    reserve: int

    @property
    def limited(self) -> bool:
        """Whether the filesystem, not the configuration, bounds the store."""
        return self.effective < self.configured


def measure(store: Store, configured: int, reserve: int | None, summary: StoreSummary) -> Capacity:
    """The store's `Capacity` now (`reserve` None: `auto_reserve`)."""
    reserve = auto_reserve(store) if reserve is None else reserve
    free = free_space(store)
    if free is None:
        return Capacity(configured, configured, None, reserve)
    disk = max(0, summary.present + summary.unlinking + free - reserve)
    return Capacity(configured, min(configured, disk), disk, reserve)


def capacity_warning(capacity: Capacity, store: Store) -> str:
    """What a mount says when the filesystem cannot hold the configured capacity."""
    return (
        f"private_storage_capacity: {format_size(capacity.configured)} configured, but the "
        f"filesystem under {store.root} holds only {format_size(capacity.effective)} for the "
        f"store (its files plus the free space, less the {format_size(capacity.reserve)} "
        "disk_reserve): the store keeps within that, evicting sooner"
    )


def free_space(store: Store) -> int | None:
    """Bytes an unprivileged writer may still add to the filesystem under the store."""
    try:
        stats = os.statvfs(store.data if store.data.exists() else store.root)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


@dataclass(frozen=True)
class Claimed:
    claim_id: int | None  # None: nothing to fetch (present) — see Reservation
    reservation: Reservation


class Space:
    def __init__(
        self,
        index: AsyncIndex,
        store: Store,
        owner: Owner,
        *,
        capacity: int,
        block_size: int,
        disk_reserve: int | None,
        lease: float,
        make_room: MakeRoom | None,
        pin_own: PinOwn,
    ) -> None:
        self.index = index
        self.store = store
        self.owner = owner
        self.capacity = capacity
        self.block_size = block_size
        self.disk_reserve = disk_reserve if disk_reserve is not None else auto_reserve(store)
        self.lease = lease
        self.make_room = make_room
        self.pin_own = pin_own

    def disk_room(self) -> int:
        """Bytes the filesystem under the store can still take, less the reserve."""
        free = free_space(self.store)
        return (1 << 62) if free is None else free - self.disk_reserve

    async def reserve(
        self, key: str, start: int, end: int, file_name: str, *, wanted: bool, path: str
    ) -> Reservation:
        """A claim on [start, end) of entry `key`, or the reason there is none (busy, present,
        stale). Raises NoSpace when a reader wants the bytes and no room can be made, and
        StopRun (from the caller's point of view: `no_room` answered) for read-ahead."""
        sync = self.index.sync
        waited_for_pins = waited_for_others = 0.0
        tried_gc = False
        last: StoreSummary | None = None
        while True:
            res = await self.index.run_retrying(
                sync.reserve, key, start, end, self.owner, self.capacity, file_name=file_name
            )
            res, needed = await self._on_disk(res, start, end)
            if not res.no_room:
                return res
            if not tried_gc and self.make_room is not None:
                tried_gc = True
                if await self.make_room(needed) > 0:
                    continue
            if not wanted:
                return res  # read-ahead: give up quietly
            freed, awaiting = await self.window(needed)
            if freed > 0:
                continue
            if awaiting and waited_for_pins < self.lease + 2 * PIN_POLL:
                await trio.sleep(PIN_POLL)
                waited_for_pins += PIN_POLL
                continue
            if self.make_room is not None and await self.make_room(needed) > 0:
                continue  # another process released something meanwhile
            summary = await self.index.run(sync.summary)
            # A store that changed since the last look is one where other readers take the
            # room as fast as it is made, and their pins move on: look again, so this reader
            # gets its turn (seen in the windowed soak under load: ENOSPC 20 ms after room
            # was made, with far less pinned than the capacity). A store that stays the same
            # has no room coming.
            churning, last = summary != last, summary
            if waited_for_others < self.lease and (
                churning or self._others_making_room(summary, needed)
            ):
                await trio.sleep(PIN_POLL)
                waited_for_others += PIN_POLL
                continue
            raise await self._no_space(key, path, summary)

    async def commit_and_reserve(
        self,
        claim_id: int,
        key: str,
        start: int,
        end: int,
        transfer: tuple[int, int] | None,
        next_end: int,
        file_name: str,
    ) -> tuple[Ranges, Reservation]:
        """Commit [start, end) and claim the read-ahead [end, next_end) in one transaction.

        Only the claim the index grants is taken here: when it answers no room (or the disk
        has none), the caller's `reserve` takes the long way, with the GC, as for any piece.
        """
        ranges, res = await self.index.run_retrying(
            self.index.sync.commit_and_reserve, claim_id, key, start, end, transfer,
            next_end=next_end, owner=self.owner, capacity=self.capacity, file_name=file_name,
        )  # fmt: skip
        res, _ = await self._on_disk(res, end, next_end)
        return ranges, res

    async def _on_disk(self, res: Reservation, start: int, end: int) -> tuple[Reservation, int]:
        """`res`, unless the index granted room the disk has not (a capacity set larger than
        the disk): then the claim is given back and the answer is no room. And the bytes of
        [start, end) it needs."""
        needed = (end - start) - (res.ranges.overlap(start, end) if res.ranges else 0)
        if res.claim_id is not None and needed > self.disk_room():
            await self.index.run(self.index.sync.release_claim, res.claim_id)
            res = Reservation(ranges=res.ranges, no_room=True, usage=res.usage)
        return res, needed

    def _others_making_room(self, summary: StoreSummary, needed: int) -> bool:
        """Whether the room this process could not make is on its way: another process's GC
        pass has chosen its victims and is unlinking them (their bytes are counted until it
        has), or room was made since this one looked. (Seen under load: the two daemons' passes
        overlap, and the second finds nothing left to evict while the first's unlinks run.)
        Room in the count is no room when the disk has none: waiting then would only grow the
        index, a transaction per look, on the very disk that is full."""
        if summary.unlinking > 0:
            return True
        return summary.usage + needed <= self.capacity and needed <= self.disk_room()

    async def window(self, needed: int) -> tuple[int, int]:
        """Drop bytes of read-locked entries outside their readers' pins. (freed, awaiting)."""
        sync = self.index.sync
        for _ in range(3):
            result = await self.index.run(
                sync.window, needed, self.owner.owner_id, align=self.block_size
            )
            if result.eviction.punches:
                await self.settle(result.eviction)
                log.info(
                    "made room for %d bytes inside files being read (%d spans dropped)",
                    needed,
                    len(result.eviction.punches),
                )
                return result.eviction.freed, result.awaiting
            if not result.to_pin:
                return 0, result.awaiting
            await self.pin_own(result.to_pin)  # ours first, then ask again
        return 0, result.awaiting

    async def settle(self, eviction: Eviction) -> None:
        """Unlink the files and punch the spans of an eviction, then stop counting them."""
        if eviction.unlink_id is None:
            return
        with trio.CancelScope(shield=True), self.store.carrying_out(eviction.unlink_id):
            await trio.to_thread.run_sync(self.store.apply, eviction)
            await self.index.run(self.index.sync.finish_unlink, eviction.unlink_id)

    async def _no_space(self, key: str, path: str, summary: StoreSummary) -> WtfsError:
        disk = self.disk_room()
        where = (
            f"{summary.usage} of {self.capacity} bytes used, nothing unlocked left to evict and "
            "no room left inside the files being read"
        )
        if disk < self.block_size:
            where = (
                f"the disk under the store is full ({max(0, disk)} bytes free beyond the "
                "reserve for the index)"
            )
        return await self.refused(key, NoSpace(f"{path}: private store full: {where}"))

    async def refused(self, key: str, error: NoSpace) -> NoSpace:
        """Record why a read gets ENOSPC (the index's failures, the log), and return the error.

        The index may be what is full: then the cause is logged only, and the reader still gets
        ENOSPC with it.
        """
        log.error("%s", error.cause)
        try:
            await self.index.run(
                self.index.sync.record_failure, "nospace", key, error.cause, self.owner.owner_id
            )
        except WtfsError as exc:
            log.warning("could not record the failure in the index: %s", exc.cause)
        return error

    async def disk_full(self, needed: int) -> bool:
        """A store write or the index met ENOSPC: make room, as a reservation would (the GC,
        then inside files being read), True if any was made."""
        needed = max(needed, self.block_size)
        try:
            if self.make_room is not None and await self.make_room(needed) > 0:
                return True
            freed, _ = await self.window(needed)
            return freed > 0
        except WtfsError as exc:
            log.warning("could not make room on the store's disk: %s", exc.cause)
            return False


#: the least `auto_reserve` keeps: an SQLite index's write-ahead log, and as much again for the
#: index's tables and the logs. (1 MiB was less than the log alone: on a 48 MiB filesystem the
#: data filled the disk to its 2.4 MiB reserve, the log grew to 4.1 MiB, and reads failed.)
MIN_RESERVE = 2 * WAL_LIMIT


def auto_reserve(store: Store) -> int:
    """5 % of the store's filesystem, between `MIN_RESERVE` (8 MiB) and 256 MiB: room for the
    index and logs."""
    try:
        stats = os.statvfs(store.root if store.root.exists() else store.root.parent)
    except OSError:
        return 64 * 1024**2
    return max(MIN_RESERVE, min(256 * 1024**2, stats.f_blocks * stats.f_frsize // 20))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
