"""The cache manager: opens (locks), reads (served from the store, fetched on demand), closes.

The read path (see the design sketch in the README):
- bytes already present are read inline with `os.pread` on the store file: no index write, no
  thread hop (the hot path);
- missing blocks are fetched by *runs*: one provider request streaming one or more consecutive
  blocks into the sparse store file; each block is reserved in the index before its bytes are
  written and committed once written, and waiting readers are woken per block;
- a sequential reader keeps a run ahead of itself (read-ahead); a random reader fetches only the
  block it needs;
- every reader of an entry in this process shares its runs; another process fetching the same
  block is seen through its claim in the index, and we wait for its range to appear.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio
from wtfs_index.index import Index, TransferStatus
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.errors import (
    AccessDenied,
    ChecksumMismatch,
    NoSpace,
    NotFound,
    SizeMismatch,
    Timeout,
    TransferFailed,
    WtfsError,
)
from wtfs.providers.base import Sink, Source
from wtfs.providers.registry import ProviderRegistry
from wtfs.providers.retry import RetryPolicy, fetch_with_retry
from wtfs.providers.urls import redact_url

log = logging.getLogger(__name__)

MAX_RUN_BLOCKS = 64
# Failures that stick to an open file: retrying them cannot succeed until something changes.
PERMANENT = (AccessDenied, NotFound, SizeMismatch)
# A sequential reader's runs: long enough that Girder's per-request cost (~3 ms) vanishes, short
# enough that a reader who stops early did not make us fetch much more than it read.
STREAM_BLOCKS = 16
# How far ahead of a sequential reader of a complete file the kernel reads the store file.
PREFETCH = 16 * 1024 * 1024
BUSY_POLL = 0.05


@dataclass(frozen=True)
class CacheSettings:
    capacity: int
    block_size: int = 4 * 1024**2
    readahead_blocks: int = 8
    max_concurrent_transfers: int = 8
    read_deadline: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class FileRef:
    """What the manager needs to know of a file in the tree (the cache never sees FUSE)."""

    key: str
    item_id: str
    size: int
    source: Source
    path: str
    error: str | None = None


@dataclass(eq=False)
class LiveEntry:
    """One cached file while this process has it open (rclone's Item)."""

    ref: FileRef
    file_name: str
    fd: int
    ranges: Ranges
    complete: bool
    opens: int = 0
    runs: int = 0
    pending: dict[int, trio.Event] = field(default_factory=dict)
    block_errors: dict[int, WtfsError] = field(default_factory=dict)
    busy_until: dict[int, float] = field(default_factory=dict)
    failure: WtfsError | None = None
    cancel_scopes: set[trio.CancelScope] = field(default_factory=set)
    handles: set[Handle] = field(default_factory=set)
    #: blocks some reader is waiting for (the rest of a run is read-ahead)
    wanted: collections.Counter[int] = field(default_factory=collections.Counter)

    def low_water(self) -> int:
        """The offset of the slowest reader: bytes before it may be dropped when space is short."""
        return min((h.next_offset for h in self.handles), default=0)


@dataclass(eq=False)
class Handle:  # eq=False: hashable by identity, kept in LiveEntry.handles
    entry: LiveEntry
    lock_id: int
    next_offset: int = 0  # where a sequential reader would read next
    prefetched: int = 0  # the store file is being read ahead by the kernel up to here

    @property
    def keep_cache(self) -> bool:
        return self.entry.complete


class _StopRun(Exception):
    """End a run early: the next block is present already or another process is fetching it."""


class CacheManager:
    def __init__(
        self,
        store: Store,
        index: Index,
        owner: Owner,
        providers: ProviderRegistry,
        settings: CacheSettings,
        *,
        session_id: str,
        mountpoint: str | None = None,
        make_room: Callable[[int], Awaitable[int]] | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.store = store
        self.index = AsyncIndex(index)
        self.owner = owner
        self.providers = providers
        self.settings = settings
        self.session_id = session_id
        self.mountpoint = mountpoint
        self.make_room = make_room
        self.stats = stats or Stats()
        self._entries: dict[str, LiveEntry] = {}
        self._slots = trio.CapacityLimiter(settings.max_concurrent_transfers)
        self._nursery: trio.Nursery | None = None
        self._atimes: dict[str, float] = {}
        self._load_lock = trio.Lock()
        self._unfetchable: set[str] = set()
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery that fetch runs live in, and flush stats/atimes periodically."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    await trio.sleep(1.0)
                    await self.flush()
            finally:
                nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        """Unmounting: stop every fetch and fail the reads waiting for one.

        A read stuck on a stalled network would otherwise hold the unmount until its deadline.
        """
        self._closing = True
        for entry in self._entries.values():
            if entry.failure is None:
                entry.failure = TransferFailed(f"{entry.ref.path}: the mount is being unmounted")
            for scope in entry.cancel_scopes:
                scope.cancel()

    async def flush(self) -> None:
        atimes, self._atimes = self._atimes, {}
        with trio.CancelScope(shield=True):
            await self.index.run(
                self.index.sync.heartbeat, self.owner, self.stats.snapshot(), atimes
            )

    # -- open / close -------------------------------------------------------------------------

    async def open(self, ref: FileRef) -> Handle:
        if self._closing:
            raise TransferFailed(f"{ref.path}: the mount is being unmounted")
        if ref.error is not None:
            await self._fail_unfetchable(ref)
        lock_id = await self.index.run(
            self.index.sync.acquire_lock,
            ref.item_id,
            self.session_id,
            self.owner,
            mountpoint=self.mountpoint,
            path=ref.path,
        )
        try:
            async with self._load_lock:  # concurrent first opens must share one LiveEntry
                entry = self._entries.get(ref.key)
                if entry is not None and entry.opens == 0:
                    # Held only by a run winding down: while unlocked, another process may
                    # have evicted it. Keep it only if the index still names its file.
                    row = await self.index.run(self.index.sync.get_entry, ref.key)
                    if row is None or row.file_name != entry.file_name:
                        del self._entries[ref.key]
                        entry = None
                if entry is None:
                    entry = await self._load_entry(ref)
                entry.opens += 1
            if not entry.complete and entry.ranges.total == entry.ref.size:
                await self._complete(entry)  # e.g. a crash came between last commit and marking
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.index.run(self.index.sync.release_lock, lock_id)
            raise
        handle = Handle(entry, lock_id)
        entry.handles.add(handle)
        return handle

    async def _load_entry(self, ref: FileRef) -> LiveEntry:
        row = await self.index.run(
            self.index.sync.ensure_entry,
            ref.key,
            ref.item_id,
            ref.size,
            ref.source.checksum,
            redact_url(ref.source.url),
            ref.path,
        )
        if row.replaced_file is not None:
            self.store.unlink(row.replaced_file)
        fd = self.store.open_file(row.file_name, ref.size)
        entry = LiveEntry(ref, row.file_name, fd, row.ranges, row.complete)
        self._entries[ref.key] = entry
        return entry

    async def release(self, handle: Handle) -> None:
        entry = handle.entry
        entry.opens -= 1
        entry.handles.discard(handle)
        with trio.CancelScope(shield=True):
            await self.index.run(self.index.sync.release_lock, handle.lock_id)
        if entry.opens == 0:
            # Nobody here reads it any more: stop its fetches (they free their claims).
            for scope in entry.cancel_scopes:
                scope.cancel()
            self._maybe_close(entry)

    def _maybe_close(self, entry: LiveEntry) -> None:
        if entry.opens == 0 and entry.runs == 0 and entry.fd >= 0:
            if self._entries.get(entry.ref.key) is entry:
                del self._entries[entry.ref.key]
            os.close(entry.fd)
            entry.fd = -1

    # -- reads --------------------------------------------------------------------------------

    async def read(self, handle: Handle, offset: int, length: int) -> bytes:
        entry = handle.entry
        if entry.failure is not None:
            raise entry.failure
        end = min(offset + length, entry.ref.size)
        if offset >= end:
            return b""
        sequential = offset == handle.next_offset
        handle.next_offset = end
        if entry.complete:
            self.stats.hit(end - offset)
            self._atimes[entry.ref.key] = time.time()
            if sequential and end > handle.prefetched - PREFETCH // 2:
                # Ask the kernel to read the store file ahead of us, off this thread's clock.
                os.posix_fadvise(entry.fd, end, PREFETCH, os.POSIX_FADV_WILLNEED)
                handle.prefetched = end + PREFETCH
            return os.pread(entry.fd, end - offset, offset)
        if sequential:
            self._read_ahead(entry, offset)
        if entry.ranges.present(offset, end):
            self.stats.hit(end - offset)
            self._atimes[entry.ref.key] = time.time()
            return os.pread(entry.fd, end - offset, offset)
        self.stats.miss(end - offset)
        with trio.move_on_after(self.settings.read_deadline) as deadline:
            await self._ensure(entry, offset, end, sequential)
        if deadline.cancelled_caught:
            cause = (
                f"{entry.ref.path}: no bytes at offset {offset} after "
                f"{self.settings.read_deadline:g}s"
            )
            raise Timeout(cause)
        if entry.failure is not None:
            raise entry.failure
        self._atimes[entry.ref.key] = time.time()
        return os.pread(entry.fd, end - offset, offset)

    async def _ensure(self, entry: LiveEntry, start: int, end: int, sequential: bool) -> None:
        bs = self.settings.block_size
        while True:
            missing = [
                b for b in range(start // bs, (end - 1) // bs + 1) if not self._has_block(entry, b)
            ]
            if not missing:
                return
            block = missing[0]
            entry.wanted[block] += 1
            try:
                await self._wait_for_block(entry, block, missing[-1], sequential)
            finally:
                entry.wanted[block] -= 1
                if entry.wanted[block] <= 0:
                    del entry.wanted[block]
            error = entry.block_errors.pop(block, None)
            if error is not None:
                raise error
            if entry.failure is not None:
                raise entry.failure

    async def _wait_for_block(
        self, entry: LiveEntry, block: int, last: int, sequential: bool
    ) -> None:
        if block in entry.pending:
            await entry.pending[block].wait()
        elif entry.busy_until.get(block, 0) > time.monotonic():
            # Another process is fetching it: wait for its range to show up in the index.
            await trio.sleep(BUSY_POLL)
            await self._refresh_ranges(entry)
        else:
            ahead = STREAM_BLOCKS - 1 if sequential else 0
            self._start_run(entry, block, last=max(last, block + ahead))
            if block in entry.pending:
                await entry.pending[block].wait()

    def _has_block(self, entry: LiveEntry, block: int) -> bool:
        bs = self.settings.block_size
        return entry.complete or entry.ranges.present(
            block * bs, min(entry.ref.size, (block + 1) * bs)
        )

    def _read_ahead(self, entry: LiveEntry, position: int) -> None:
        """Keep a run going ahead of a sequential reader.

        The frontier is the first block at or after the reader that is neither present nor being
        fetched. When the reader comes within `readahead_blocks` of it, a new run of
        `STREAM_BLOCKS` starts there, so two runs overlap and the stream never stalls.
        """
        bs = self.settings.block_size
        current = position // bs
        last_block = (entry.ref.size - 1) // bs
        frontier = current
        limit = min(last_block, current + self.settings.readahead_blocks)
        while frontier <= limit and (frontier in entry.pending or self._has_block(entry, frontier)):
            frontier += 1
        if frontier > limit or entry.busy_until.get(frontier, 0) > time.monotonic():
            return
        self._start_run(entry, frontier, last=frontier + STREAM_BLOCKS - 1)

    def _start_run(
        self, entry: LiveEntry, first: int, last: int, transfer_id: int | None = None
    ) -> list[int]:
        """Fetch the consecutive missing, not-yet-pending blocks from `first` (up to `last`).

        Returns the blocks the new run covers (empty when there was nothing to start).
        """
        bs = self.settings.block_size
        last_block = (entry.ref.size - 1) // bs
        blocks: list[int] = []
        block = first
        while block <= min(last, last_block) and len(blocks) < MAX_RUN_BLOCKS:
            if block in entry.pending or self._has_block(entry, block):
                break
            blocks.append(block)
            block += 1
        if not blocks:
            return blocks
        for b in blocks:
            entry.pending[b] = trio.Event()
            entry.block_errors.pop(b, None)  # an older run's failure is not this run's
        entry.runs += 1
        assert self._nursery is not None, "CacheManager.run() is not running"
        self._nursery.start_soon(self._run, entry, blocks, transfer_id)
        return blocks

    async def _refresh_ranges(self, entry: LiveEntry) -> None:
        row = await self.index.run(self.index.sync.get_entry, entry.ref.key)
        if row is not None and row.file_name == entry.file_name:
            entry.ranges = row.ranges
            entry.complete = entry.complete or row.complete

    # -- fetch runs ---------------------------------------------------------------------------

    async def _run(self, entry: LiveEntry, blocks: list[int], transfer_id: int | None) -> None:
        bs = self.settings.block_size
        start, end = blocks[0] * bs, min(entry.ref.size, (blocks[-1] + 1) * bs)
        sink = _BlockSink(self, entry, start, end)
        scope = trio.CancelScope()
        entry.cancel_scopes.add(scope)
        try:
            with scope:
                await self._transfer(entry, sink, start, end, transfer_id)
        finally:
            entry.cancel_scopes.discard(scope)
            with trio.CancelScope(shield=True):
                await sink.release_claim()
                # Here, not after the transfer: a run cancelled by the last close may be the
                # one that committed the last block.
                if not entry.complete and entry.ranges.total == entry.ref.size:
                    await self._complete(entry)
            for b in blocks:
                event = entry.pending.pop(b, None)
                if event is not None:
                    event.set()
            entry.runs -= 1
            self._maybe_close(entry)

    async def _transfer(
        self, entry: LiveEntry, sink: _BlockSink, start: int, end: int, tid: int | None
    ) -> None:
        """One transfer record per run: INITIALIZING → QUEUED → TRANSFERRING → DONE | FAILED."""
        ref = entry.ref
        sync = self.index.sync
        if tid is None:
            tid = await self._new_transfer(ref, start, end - start)
        sink.transfer_id = tid
        attempts = 1
        status, error = TransferStatus.DONE, None
        try:
            provider = self.providers.get(ref.source)
            await self.index.run(
                sync.transfer_update, tid, status=int(TransferStatus.QUEUED), size=end - start
            )
            async with self._slots:
                await self.index.run(
                    sync.transfer_update,
                    tid,
                    status=int(TransferStatus.TRANSFERRING),
                    start_time=time.time(),
                    attempts=1,
                )

                def on_retry(attempt: int, exc: WtfsError, delay: float) -> None:
                    nonlocal attempts
                    attempts = attempt + 1
                    log.warning(
                        "%s: %s (attempt %d, retrying in %.1fs)",
                        ref.path,
                        exc.cause,
                        attempt,
                        delay,
                    )

                with contextlib.suppress(_StopRun):  # the rest is present or being fetched
                    await fetch_with_retry(
                        provider,
                        ref.source,
                        start,
                        end,
                        sink,
                        self.settings.retry,
                        on_retry=on_retry,
                    )
        except WtfsError as exc:
            status, error = TransferStatus.FAILED, exc
            log.error("%s: transfer failed: %s", ref.path, exc.cause)
            self._fail_blocks(entry, sink, exc)
            if isinstance(exc, PERMANENT):  # asking again cannot help while the file is open
                entry.failure = exc
        finally:
            with trio.CancelScope(shield=True):
                fields: dict[str, Any] = {
                    "status": int(status),
                    "end_time": time.time(),
                    "transferred": sink.transferred,
                    "attempts": attempts,
                }
                if status == TransferStatus.DONE and sink.transferred < end - start:
                    fields["size"] = sink.transferred  # stopped early: record what it moved
                if error is not None:
                    fields["error"] = error.cause
                await self.index.run(sync.transfer_update, tid, **fields)

    async def _new_transfer(self, ref: FileRef, start: int, size: int) -> int:
        """A transfer record (INITIALIZING) for `size` bytes of `ref` from `start`."""
        return await self.index.run(
            self.index.sync.transfer_create,
            key=ref.key,
            item_id=ref.item_id,
            path=ref.path,
            session_id=self.session_id,
            owner_id=self.owner.owner_id,
            source=redact_url(ref.source.url),
            size=size,
            start_offset=start,
        )

    def _fail_blocks(self, entry: LiveEntry, sink: _BlockSink, error: WtfsError) -> None:
        for block in list(entry.pending):
            if sink.owns_block(block):
                entry.block_errors[block] = error

    async def _complete(self, entry: LiveEntry) -> None:
        """All bytes are here: verify the checksum when known, then mark complete atomically."""
        checksum = entry.ref.source.checksum
        if checksum:
            algo, _, expected = checksum.partition(":")
            actual = await trio.to_thread.run_sync(_hash_fd, entry.fd, algo, entry.ref.size)
            if actual is not None and actual != expected.lower():
                cause = (
                    f"{entry.ref.path}: {algo} mismatch "
                    f"(expected {expected[:16]}…, got {actual[:16]}…)"
                )
                entry.failure = ChecksumMismatch(cause)
                log.error("%s", cause)
                evicted = await self.index.run(
                    self.index.sync.delete_entry,
                    entry.ref.key,
                    "checksum mismatch",
                    self.owner.owner_id,
                )
                await self.index.run(
                    self.index.sync.record_failure,
                    "checksum",
                    entry.ref.key,
                    cause,
                    self.owner.owner_id,
                )
                if evicted is not None:
                    self.store.unlink(evicted.file_name)
                return
        await self.index.run(self.index.sync.mark_complete, entry.ref.key)
        entry.complete = True

    async def _fail_unfetchable(self, ref: FileRef) -> NoReturn:
        """An item that can never be fetched (e.g. phys_path without size): open() gets EIO.

        The first attempt per file and process is recorded as a FAILED transfer with the cause.
        """
        assert ref.error is not None
        if ref.key not in self._unfetchable:
            self._unfetchable.add(ref.key)
            sync = self.index.sync
            tid = await self._new_transfer(ref, 0, ref.size)
            await self.index.run(
                sync.transfer_update,
                tid,
                status=int(TransferStatus.FAILED),
                error=ref.error,
                end_time=time.time(),
            )
            log.error("%s", ref.error)
        raise TransferFailed(ref.error)

    # -- retries ------------------------------------------------------------------------------

    async def refetch(self, ref: FileRef, transfer_id: int, start: int, end: int) -> None:
        """Run a re-queued transfer again (`wtfs retry`), in its own record."""
        if ref.error is not None:
            await self.index.run(
                self.index.sync.transfer_update,
                transfer_id,
                status=int(TransferStatus.FAILED),
                error=ref.error,
                end_time=time.time(),
            )
            return
        handle = await self.open(ref)
        try:
            entry = handle.entry
            entry.failure = None  # a user asked to try again
            bs = self.settings.block_size
            first = next(
                (
                    b
                    for b in range(start // bs, (end - 1) // bs + 1)
                    if not self._has_block(entry, b)
                ),
                None,
            )
            # Nothing missing, or another run is fetching it already: this record is moot.
            blocks = (
                [] if first is None else self._start_run(entry, first, (end - 1) // bs, transfer_id)
            )
            if not blocks:
                await self.index.run(
                    self.index.sync.transfer_update,
                    transfer_id,
                    status=int(TransferStatus.DONE),
                    end_time=time.time(),
                )
            for block in blocks:
                event = entry.pending.get(block)
                if event is not None:
                    await event.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.release(handle)

    # -- space --------------------------------------------------------------------------------

    async def reserve(self, entry: LiveEntry, start: int, end: int) -> int | None:
        """Claim [start, end) for writing. None when the bytes are already present.

        Raises _StopRun when another process is fetching them, NoSpace when no room can be made.
        """
        sync = self.index.sync
        for attempt in range(3):
            res = await self.index.run(
                sync.reserve,
                entry.ref.key,
                start,
                end,
                self.owner,
                self.settings.capacity,
                file_name=entry.file_name,
            )
            if res.stale:
                raise TransferFailed(
                    f"{entry.ref.path}: the file changed size in Girder while open; reopen it"
                )
            assert res.ranges is not None
            entry.ranges = res.ranges
            if res.claim_id is not None:
                return res.claim_id
            if res.busy:
                entry.busy_until[start // self.settings.block_size] = time.monotonic() + BUSY_POLL
                raise _StopRun
            if not res.no_room:
                return None
            needed = (end - start) - res.ranges.overlap(start, end)
            freed = await self.make_room(needed) if self.make_room else 0
            if freed == 0 and attempt > 0:
                freed = await self._shrink_window(entry)
            if freed == 0 and attempt > 0:
                break
        if start // self.settings.block_size not in entry.wanted:
            raise _StopRun  # read-ahead gives up quietly: no reader needs these bytes yet
        usage = await self.index.run(sync.usage)
        cause = (
            f"{entry.ref.path}: private store full: {usage} of {self.settings.capacity} bytes "
            f"used and nothing unlocked left to evict"
        )
        await self.index.run(
            sync.record_failure, "nospace", entry.ref.key, cause, self.owner.owner_id
        )
        log.error("%s", cause)
        raise NoSpace(cause)

    async def _shrink_window(self, entry: LiveEntry) -> int:
        """Free this entry's own blocks behind its slowest reader (a file larger than the store).

        Only when no other process has the item open: they could be reading those bytes.
        """
        position = entry.low_water()
        local_locks = entry.opens
        if await self.index.run(self.index.sync.lock_count, entry.ref.item_id) > local_locks:
            return 0
        bs = self.settings.block_size
        behind = (position // bs - 1) * bs  # keep the block just behind the reader
        if behind <= 0:
            return 0
        freed = entry.ranges.overlap(0, behind)
        if freed == 0:
            return 0
        # Forget the bytes before punching them out: a read served while the punch runs must
        # see them missing (and fetch), never read the hole's zeros.
        entry.ranges.remove(0, behind)
        entry.complete = False
        entry.ranges = await self.index.run(self.index.sync.drop_ranges, entry.ref.key, 0, behind)
        await trio.to_thread.run_sync(self.store.punch_hole, entry.fd, 0, behind)
        log.info(
            "%s: dropped %d bytes behind the reader to stay under capacity", entry.ref.path, freed
        )
        return freed


class _BlockSink(Sink):
    """Writes a run's bytes into the store file, reserving and committing block by block."""

    def __init__(self, manager: CacheManager, entry: LiveEntry, start: int, end: int) -> None:
        self.manager = manager
        self.entry = entry
        self.start, self.end = start, end
        self.block_size = manager.settings.block_size
        self.transfer_id: int | None = None
        self.transferred = 0
        self._block = -1
        self._claim: int | None = None
        self._skip = False
        # The claimed span of the current block, and how far its bytes are written: bytes on
        # disk are always either committed (counted as present) or under a claim (counted).
        self._span_start = 0
        self._written_to = 0

    def owns_block(self, block: int) -> bool:
        return self.start // self.block_size <= block <= (self.end - 1) // self.block_size

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            block = offset // self.block_size
            if block != self._block:
                await self._begin(block)
            block_end = min(self.entry.ref.size, (block + 1) * self.block_size)
            take = min(len(view), block_end - offset)
            if not self._skip:
                os.pwrite(self.entry.fd, view[:take], offset)
                self._written_to = offset + take
                self.transferred += take
                self.manager.stats.fetched(take)
            offset += take
            view = view[take:]
            if offset == block_end:
                await self._finish(block, offset)

    async def _begin(self, block: int) -> None:
        self._block = block
        start = max(self.start, block * self.block_size)
        end = min(self.end, (block + 1) * self.block_size)
        if self.entry.ranges.present(start, end):
            raise _StopRun
        self._claim = await self.manager.reserve(self.entry, start, end)
        self._span_start = self._written_to = start
        self._skip = self._claim is None
        if self._skip:
            raise _StopRun

    async def _finish(self, block: int, block_end: int) -> None:
        with trio.CancelScope(shield=True):  # written bytes must not outlive their claim uncounted
            await self._commit(block_end)
        event = self.entry.pending.pop(block, None)
        if event is not None:
            event.set()

    async def _commit(self, end: int) -> None:
        """Record [span start, end) as present and free the claim."""
        if self._claim is None:
            return
        transfer = (self.transfer_id, self.transferred) if self.transfer_id else None
        self.entry.ranges = await self.manager.index.run(
            self.manager.index.sync.commit_range,
            self._claim,
            self.entry.ref.key,
            self._span_start,
            end,
            transfer,
            file_name=self.entry.file_name,
        )
        self._claim = None

    async def release_claim(self) -> None:
        """At the end of a run: keep what a cut-short block wrote (it is valid data), free the
        rest of its claim."""
        if self._claim is not None and self._written_to > self._span_start:
            await self._commit(self._written_to)
        elif self._claim is not None:
            await self.manager.index.run(self.manager.index.sync.release_claim, self._claim)
            self._claim = None


def _hash_fd(fd: int, algo: str, size: int) -> str | None:
    try:
        digest = hashlib.new(algo.lower())
    except ValueError:
        log.warning("unknown checksum algorithm %r: not verified", algo)
        return None
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(8 * 1024**2, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
