"""The cache manager: opens (locks), reads (served from the store, fetched on demand), closes.

The read path:
- bytes present are read inline with `os.pread` on the store file: no index write, no thread
  hop (the hot path);
- missing bytes are fetched by *runs* (`runs.py`): one provider request streaming a span into
  the sparse store file, each block-sized piece reserved in the index before it is written and
  committed once written; a waiting reader wakes as soon as its own bytes are written;
- a sequential reader keeps a run ahead of itself (read-ahead); a random reader's run starts
  at the page it asked for, so its first bytes take one round trip;
- every reader of an entry in this process shares its runs; another process fetching the same
  block is seen through its claim in the index, and we wait for its range to appear;
- an entry windowed under pressure (see `wtfs_index.base`) is read through pins: each reader
  names the blocks it needs now in its lock, learning then of bytes other processes dropped.

Every wait is bounded by `read_deadline`; a reader waiting for bytes always has a run of ours
or another process's claim bringing them, and fails with the cause when they cannot come.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import trio
from wtfs_index import EntryRow, LockKind, NewEntry, Owner, Ranges

from wtfs.cache import dedup
from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.entry import FileRef, Handle, LiveEntry
from wtfs.cache.quick import Quick
from wtfs.cache.runs import Run, StopRun, execute
from wtfs.cache.space import Space, is_disk_full
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.cache.transfers import Transfer, TransferLog
from wtfs.cache.verify import verify
from wtfs.config import Config
from wtfs.errors import (
    AccessDenied,
    DiskFull,
    IndexUnavailable,
    NoSpace,
    NotFound,
    SizeMismatch,
    Timeout,
    TransferFailed,
    WtfsError,
)
from wtfs.providers.registry import ProviderRegistry
from wtfs.providers.retry import RetryPolicy, retry_policy
from wtfs.providers.urls import redact_url

log = logging.getLogger(__name__)

# Failures that stick to an open file: retrying them cannot succeed until something changes.
PERMANENT = (AccessDenied, NotFound, SizeMismatch)
# A sequential reader's runs: long enough that Girder's per-request cost (~3 ms) vanishes, short
# enough that a reader who stops early did not make us fetch much more than it read.
STREAM_BLOCKS = 16
# A random read's run starts at the page it needs, not at its block's start.
PAGE = 4096
# ...and fetches this much (or the read, if longer), not the rest of its block: a random 4 KiB
# read cost a 4 MiB download, whose tail the next random read's request queued behind at the
# server (or which its close cut, losing the kept-alive connection). A reader that goes on
# reading turns sequential at its next request and streams from there.
RANDOM_SPAN = 256 * 1024
BUSY_POLL = 0.05
HEARTBEAT = 1.0
# A heartbeat that keeps failing (the index unreachable, its disk full) is logged once, then
# once every this many beats, not every second.
HEARTBEAT_LOG_EVERY = 30
# Blocks a reader of a windowed entry pins: the one it reads and the next.
PIN_BLOCKS = 2
# Seconds a run's failure answers new reads of its blocks: the kernel asks again at once after
# a failed read (its read-ahead, then the read itself), and must get the cause, not a new wait.
FAILURE_MEMORY = 2.0
# A run's transfer record waits for the run's first bytes, or this long (a server slow to
# answer still shows in `wtfs status` at once, to a person's eye).
RECORD_DELAY = 0.05
# Complete entries this process remembers (key → store file), to open them while the index
# cannot be reached.
KNOWN_COMPLETE = 4096


@dataclass(frozen=True)
class CacheSettings:
    capacity: int
    block_size: int
    readahead_blocks: int
    max_concurrent_transfers: int
    read_deadline: float
    retry: RetryPolicy
    lease: float
    disk_reserve: int | None

    @classmethod
    def from_config(cls, config: Config) -> CacheSettings:
        net = config.network
        return cls(
            capacity=config.private_storage_capacity,
            block_size=config.block_size,
            readahead_blocks=config.readahead_blocks,
            max_concurrent_transfers=config.max_concurrent_transfers,
            read_deadline=net.read_deadline,
            retry=retry_policy(config),
            lease=config.lease,
            disk_reserve=config.disk_reserve,
        )


class CacheManager:
    def __init__(
        self,
        store: Store,
        index: AsyncIndex,
        owner: Owner,
        providers: ProviderRegistry,
        settings: CacheSettings,
        *,
        session_id: str,
        mountpoint: str | None = None,
        make_room: Callable[[int], Awaitable[int]] | None = None,
        stats: Stats | None = None,
        registration: dict[str, str | None] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.owner = owner
        self.providers = providers
        self.settings = settings
        self.session_id = session_id
        self.mountpoint = mountpoint
        self.stats = stats or Stats()
        self.transfers = TransferLog(index, session_id, owner.owner_id)
        self.space = Space(
            index,
            store,
            owner,
            capacity=settings.capacity,
            block_size=settings.block_size,
            disk_reserve=settings.disk_reserve,
            lease=settings.lease,
            make_room=make_room,
            pin_own=self.pin_locks,
        )
        index.on_full = self._make_room_on_disk
        #: how to register this owner again after its lease ran out (kind and its columns)
        self._registration = registration or {"kind": "mount", "mountpoint": mountpoint}
        self._entries: dict[str, LiveEntry] = {}
        self._handles_by_lock: dict[int, Handle] = {}
        self._slots = trio.CapacityLimiter(settings.max_concurrent_transfers)
        self._nursery: trio.Nursery | None = None
        self._store_calls = Quick()
        self._atimes: dict[str, float] = {}
        self._load_lock = trio.Lock()
        self._lease_lock = trio.Lock()
        self._unfetchable: set[str] = set()
        #: entries seen complete, most recent last: what may still be opened without the index
        self._complete_files: OrderedDict[str, str] = OrderedDict()
        #: lock ids of handles opened while the index could not be reached (negative: none
        #: taken yet; `_lock_unlocked` takes them once it answers)
        self._unlocked_ids = itertools.count(-1, -1)
        #: ids of locks whose release the index could not take (its disk full): the heartbeat
        #: releases them, or they would keep their entries from eviction until unmount
        self._unreleased: set[int] = set()
        self._closing = False
        #: live reads waiting for bytes now: a prefetch (`prefetch_block`) waits while any does
        self._live_waiting = 0
        #: trio clock time when the lease was last renewed (taken before the renewal started)
        self._renewed_at = trio.current_time()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery fetch runs live in; renew the lease and flush counters every second.

        Nothing a run or a heartbeat does can close this nursery: runs keep their failures to
        themselves (runs.execute) and a failed heartbeat is logged and tried again.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._renewed_at = trio.current_time()
            task_status.started()
            failures = 0
            try:
                while True:
                    await trio.sleep(HEARTBEAT)
                    try:
                        await self.flush()
                    except WtfsError as exc:
                        failures += 1
                        if failures == 1 or failures % HEARTBEAT_LOG_EVERY == 0:
                            log.warning("heartbeat failed (%d in a row): %s", failures, exc.cause)
                    else:
                        if failures:
                            log.info("heartbeat works again after %d failures", failures)
                        failures = 0
            finally:
                self._closing = True
                nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        """Unmounting: stop every fetch and fail the reads waiting for one.

        A read stuck on a stalled network would otherwise hold the unmount until its deadline.
        """
        self._closing = True
        for entry in self._entries.values():
            if entry.failure is None:
                entry.failure = TransferFailed(f"{entry.ref.path}: the mount is being unmounted")
            for run in entry.runs:
                run.cancel_scope.cancel()

    async def flush(self) -> None:
        """The heartbeat: renew the lease, save counters and access times, pin where asked."""
        async with self._lease_lock:
            atimes, self._atimes = self._atimes, {}
            started = trio.current_time()
            with trio.CancelScope(shield=True):
                beat = await self.index.run(
                    self.index.sync.heartbeat, self.owner, self.stats.snapshot(), atimes
                )
                if not beat.registered:
                    await self._register_again()
                await self._lock_unlocked()
                self._renewed_at = started
                if beat.to_pin:
                    await self.pin_locks(beat.to_pin)
                for lock_id in sorted(self._unreleased):
                    self._unreleased.discard(lock_id)
                    await self._unlock(lock_id)

    async def _make_room_on_disk(self) -> bool:
        """The index met a full disk: one GC pass to free a block's worth (`AsyncIndex.run`)."""
        return await self.space.disk_full(self.settings.block_size)

    def _lease_in_doubt(self) -> bool:
        """Whether our rows may be gone: the lease was not renewed for half its length (the
        process was stopped, or the index was unreachable)."""
        return trio.current_time() - self._renewed_at > self.settings.lease / 2

    async def _revalidate(self) -> bool:
        """Renew the lease before trusting what we know. False when the index cannot be
        reached or written (its server down, its disk full): then only bytes the store file
        still holds may be served (`_pread`)."""
        try:
            await self.flush()
        except WtfsError as exc:
            log.debug("lease not renewed before a read: %s", exc.cause)
            return False
        return True

    async def _register_again(self) -> None:
        """Our owner row was gone (the lease ran out while we could not renew it): our locks,
        claims and pins went with it, and meanwhile any of our entries may have been evicted,
        windowed or fetched again. Register, take the locks of every open handle again, then
        re-read each entry before serving from it."""
        log.warning("this process's lease had run out: registering again, re-taking its locks")
        reg = self._registration
        await self.index.run(
            self.index.sync.register_owner,
            self.owner,
            reg.get("kind") or "mount",
            mountpoint=reg.get("mountpoint"),
            session_id=self.session_id,
            session_origin=reg.get("session_origin"),
        )
        for entry in list(self._entries.values()) + self._retired_with_handles():
            for handle in list(entry.handles):
                self._handles_by_lock.pop(handle.lock_id, None)
                handle.lock_id = await self._lock(entry.ref)
                handle.pin = None
                self._handles_by_lock[handle.lock_id] = handle
            row = await self.index.run(self.index.sync.get_entry, entry.ref.key)
            if row is None or row.file_name != entry.file_name:
                await self._replace_entry(entry)
            else:
                entry.know(row)

    def _retired_with_handles(self) -> list[LiveEntry]:
        seen = set(map(id, self._entries.values()))
        return [h.entry for h in self._handles_by_lock.values() if id(h.entry) not in seen]

    async def _replace_entry(self, old: LiveEntry) -> None:
        """Move the handles of an entry that is gone from the index to a fresh one."""
        self._retire(old)
        for run in old.runs:
            run.cancel_scope.cancel()
        fresh = await self._entry_for(old.ref, None)
        for handle in list(old.handles):
            old.handles.discard(handle)
            fresh.handles.add(handle)
            fresh.retain()
            handle.entry = fresh
            self._release_ref(old)
        self._release_ref(fresh)  # _entry_for's own reference

    # -- open / close -------------------------------------------------------------------------

    async def open(self, ref: FileRef) -> Handle:
        if self._closing:
            raise TransferFailed(f"{ref.path}: the mount is being unmounted")
        if ref.error is not None:
            await self._fail_unfetchable(ref)
        if self._lease_in_doubt():
            await self._revalidate()
        entry = self._entries.get(ref.key)
        if entry is not None:
            entry.retain()  # from here on its descriptor cannot close under us
        try:
            lock_id, row = await self._open_entry(ref)
        except IndexUnavailable as exc:
            if entry is not None:
                self._release_ref(entry)
            unlocked = await self._open_unlocked(ref)
            if unlocked is not None:
                return unlocked
            lock_id, row = await self._open_waiting(ref, exc)
            entry = self._entries.get(ref.key)  # taken again: no await since
            if entry is not None:
                entry.retain()
        except BaseException:
            if entry is not None:
                self._release_ref(entry)
            raise
        try:
            if row.unlink is not None:
                await self.space.settle(row.unlink)
            entry = await self._entry_for(ref, entry, row)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._unlock(lock_id)
            raise
        handle = Handle(entry, lock_id)
        entry.handles.add(handle)
        self._handles_by_lock[lock_id] = handle
        try:
            if not entry.complete and entry.ranges.total == entry.ref.size:
                await self._complete(entry)  # e.g. a crash came between last commit and marking
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release(handle)
            raise
        return handle

    async def _lock(self, ref: FileRef) -> int:
        return await self.index.run(
            self.index.sync.acquire_lock,
            ref.item_id,
            self.session_id,
            self.owner,
            entry_key=ref.key,
            kind=LockKind.READ,
            mountpoint=self.mountpoint,
            path=ref.path,
        )

    async def _unlock(self, lock_id: int) -> None:
        """Release a lock; one the index cannot release now is released by a later heartbeat.

        The file is closed either way: a close never fails for the index's sake.
        """
        if lock_id < 0:  # opened while the index could not be reached: no lock was taken
            return
        try:
            eviction = await self.index.run(
                self.index.sync.release_lock, lock_id, self.owner.owner_id
            )
        except WtfsError as exc:
            log.warning("lock %d not released yet, tried again later: %s", lock_id, exc.cause)
            self._unreleased.add(lock_id)
            return
        try:
            await self.space.settle(eviction)
        except WtfsError as exc:  # the batch stays for the GC (`finish_orphan_unlinks`)
            log.warning("the old version's file is left for the GC to unlink: %s", exc.cause)

    async def _open_entry(self, ref: FileRef, *, retrying: bool = False) -> tuple[int, EntryRow]:
        """A read lock on `ref`'s entry, and the entry (created if missing), in one
        transaction."""
        run = self.index.run_retrying if retrying else self.index.run
        return await run(self.index.sync.open_entry, _new_entry(ref), session_id=self.session_id,
                         owner=self.owner, mountpoint=self.mountpoint)  # fmt: skip

    async def _open_waiting(self, ref: FileRef, first: IndexUnavailable) -> tuple[int, EntryRow]:
        """The index cannot be reached and the file is not complete here: wait for the index
        (with backoff) up to the read deadline, then fail with its cause."""
        with trio.move_on_after(self.settings.read_deadline):
            return await self._open_entry(ref, retrying=True)
        raise IndexUnavailable(
            f"{ref.path}: cannot be opened: {self.index.unreachable or first.cause} "
            f"(for {self.settings.read_deadline:g}s)"
        )

    async def _open_unlocked(self, ref: FileRef) -> Handle | None:
        """The index cannot be reached: open a file this process knows to be complete in the
        store, without a lock. Its reads are served only from bytes the store file still holds
        (`_pread`, untrusted); its lock is taken once the index answers (`_lock_unlocked`).
        None when the file is not known complete here."""
        entry = self._entries.get(ref.key)
        if entry is not None:
            if entry.retired or not entry.complete or entry.windowed:
                return None
            entry.retain()
        else:
            file_name = self._complete_files.get(ref.key)
            if file_name is None:
                return None
            fd = await trio.to_thread.run_sync(self.store.open_existing, file_name, ref.size)
            if fd is None:
                self._complete_files.pop(ref.key, None)
                return None
            entry = LiveEntry(ref, file_name, fd, Ranges([(0, ref.size)]), complete=True)
            entry.retain()
            self._entries[ref.key] = entry
        handle = Handle(entry, next(self._unlocked_ids))
        entry.handles.add(handle)
        self._handles_by_lock[handle.lock_id] = handle
        log.warning(
            "%s: the index cannot be reached: opened from the store without a lock (%s)",
            ref.path, self.index.unreachable,
        )  # fmt: skip
        return handle

    async def _lock_unlocked(self) -> None:
        """The index answers again: take the locks of the handles opened without one, and
        move each to a fresh entry if its file went meanwhile."""
        for handle in [h for lock_id, h in self._handles_by_lock.items() if lock_id < 0]:
            entry = handle.entry
            lock_id = await self._lock(entry.ref)
            self._handles_by_lock.pop(handle.lock_id, None)
            handle.lock_id = lock_id
            self._handles_by_lock[lock_id] = handle
            row = await self.index.run(self.index.sync.get_entry, entry.ref.key)
            if (row is None or row.file_name != entry.file_name) and not entry.retired:
                await self._replace_entry(entry)
            elif row is not None:
                # Without a lock, others may have windowed the file and punched bytes of it.
                entry.know(row)

    def _remember_complete(self, entry: LiveEntry) -> None:
        self._complete_files[entry.ref.key] = entry.file_name
        self._complete_files.move_to_end(entry.ref.key)
        while len(self._complete_files) > KNOWN_COMPLETE:
            self._complete_files.popitem(last=False)

    async def _entry_for(
        self, ref: FileRef, entry: LiveEntry | None, row: EntryRow | None = None
    ) -> LiveEntry:
        """The live entry of `ref`, retained for the caller: `entry` (already retained), or the
        one this process has loaded meanwhile, when it still stands for the index's entry `row`
        (read after the caller's lock; None: read it now), else one loaded afresh.

        An entry that no handle of ours holds is checked against the index however we came to
        it: while nothing of ours locked the file, another process may have evicted it, or
        dropped and punched bytes of it that we still take for present (the windowed soak's
        block of zeros: an open waiting for its lock found the entry another open had loaded,
        read and closed meanwhile).
        """
        while True:
            if entry is None:
                async with self._load_lock:  # concurrent first opens must share one LiveEntry
                    entry = self._entries.get(ref.key)
                    if entry is None:
                        return await self._load_entry(ref, row)
                    entry.retain()
            if entry.handles and not entry.retired:
                return entry  # our locks kept it: what we know of it holds
            if row is None:
                try:
                    row = await self.index.run(self.index.sync.get_entry, ref.key)
                except BaseException:
                    self._release_ref(entry)
                    raise
            if row is not None and row.file_name == entry.file_name and not entry.retired:
                entry.know(row)
                return entry
            self._retire(entry)
            self._release_ref(entry)
            entry = None
            if row is not None and self._entries.get(ref.key) is not None:
                row = None  # loaded by another open since our row was read: ask again

    async def _load_entry(self, ref: FileRef, row: EntryRow | None) -> LiveEntry:
        if row is None:
            row = await self.index.run(
                self.index.sync.ensure_entry, _new_entry(ref), by_owner=self.owner.owner_id
            )
            if row.unlink is not None:
                await self.space.settle(row.unlink)
        if ref.content_hash is not None and not row.complete and not row.present:
            row = await dedup.adopt(self.index, self.store, row, self.owner.owner_id) or row
        # In line once it proved quick (a local disk): a thread's hop cost a random read's
        # open 0.3 ms, ten times the syscalls.
        fd = await self._store_calls.run(
            "open_file", functools.partial(self.store.open_file, row.file_name, ref.size)
        )
        entry = LiveEntry(ref, row.file_name, fd, row.ranges, row.complete, row.windowed)
        entry.retain()
        self._entries[ref.key] = entry
        if row.complete:
            self._remember_complete(entry)
        self._replace_versions(entry)
        return entry

    def _replace_versions(self, current: LiveEntry) -> None:
        """Older versions of `current`'s source still open here keep serving the bytes the
        store holds for them, but must fetch no more: Girder now serves the new contents for
        the same file, which would fill an old version's holes with new bytes. Their runs stop;
        their readers of missing bytes get EIO with the cause (`_ensure`)."""
        for other in list(self._entries.values()) + self._retired_with_handles():
            ref = other.ref
            if ref.source_key == current.ref.source_key and ref.version != current.ref.version:
                if not other.replaced:
                    log.info(
                        "%s: version %s replaced by %s: its files open here read only the "
                        "bytes the store holds", ref.path, ref.version, current.ref.version,
                    )  # fmt: skip
                other.replaced = True
                for run in other.runs:
                    run.cancel_scope.cancel()

    def _retire(self, entry: LiveEntry) -> None:
        entry.retired = True
        if self._entries.get(entry.ref.key) is entry:
            del self._entries[entry.ref.key]

    def _release_ref(self, entry: LiveEntry) -> None:
        if entry.release():
            self._retire(entry)

    async def release(self, handle: Handle) -> None:
        entry = handle.entry
        entry.handles.discard(handle)
        self._handles_by_lock.pop(handle.lock_id, None)
        if not entry.handles:
            # Nobody here reads it any more: stop its fetches (they free their claims), before
            # the unlock: once it commits another process may evict the entry, and a run's next
            # reservation would find it gone ("replaced in the store while open", a FAILED
            # transfer nobody asked for; seen in the windowed soak).
            for run in entry.runs:
                run.cancel_scope.cancel()
        try:
            with trio.CancelScope(shield=True):
                await self._unlock(handle.lock_id)
        finally:
            self._release_ref(entry)

    # -- pins (windowed entries) --------------------------------------------------------------

    def _pin_for(self, entry: LiveEntry, offset: int) -> tuple[int, int]:
        bs = self.settings.block_size
        start = (offset // bs) * bs
        return start, min(entry.ref.size, start + PIN_BLOCKS * bs)

    async def pin_locks(self, locks: list[tuple[int, str]]) -> None:
        """Pin the given locks of ours (their entries were windowed): each handle names the
        blocks it needs now, and its entry's ranges are read again in the same transaction."""
        by_key: dict[str, list[Handle]] = {}
        for lock_id, key in locks:
            handle = self._handles_by_lock.get(lock_id)
            if handle is not None:
                by_key.setdefault(key, []).append(handle)
        for handles in by_key.values():
            entry = handles[0].entry
            await self._set_pins(entry, [(h, self._pin_for(entry, h.next_offset)) for h in handles])

    async def _set_pins(self, entry: LiveEntry, pins: list[tuple[Handle, tuple[int, int]]]) -> None:
        """Move the pins of some handles of `entry` in the index, and learn its ranges.

        One change at a time per entry: concurrent reads of one handle wait for each other's
        pin, then find themselves covered. While the change is on its way, a handle trusts only
        the bytes both its old and its new pin cover: once the transaction commits, other
        processes may drop everything outside the new pin, and before it, outside the old one.
        """
        entry.windowed = True  # from now on every read of this entry goes through its pins
        async with entry.pin_lock:
            pins = [(h, span) for h, span in pins if h.pin != span]
            if not pins:
                return
            for handle, span in pins:
                handle.pin = _overlap(handle.pin, span)
            try:
                state = await self.index.run_retrying(
                    self.index.sync.set_pins,
                    entry.ref.key,
                    [(h.lock_id, span[0], span[1]) for h, span in pins],
                )
            except BaseException:
                for handle, _ in pins:
                    handle.pin = None  # the index may or may not hold the new pins: trust none
                raise
            if state.file_name != entry.file_name:
                return  # gone: the next read of each handle finds out (_register_again / reload)
            for handle, span in pins:
                handle.pin = span
            entry.complete = state.complete
            entry.learn(state.ranges)

    async def _pin(self, handle: Handle, start: int, end: int) -> None:
        """Before serving [start, end) of a windowed entry: pin it (if not pinned yet).

        The kernel reads ahead with several requests at once on one handle: the pin covers every
        read of the handle in flight, or each would pin its own span away from the others.
        """
        async with handle.entry.pin_lock:
            if handle.pinned(start, end):
                return  # a concurrent read of this handle pinned for both of us
        starts = [start, *(s for s, _ in handle.reading)]
        ends = [end, *(e for _, e in handle.reading)]
        span = self._pin_for(handle.entry, min(starts))
        span = (span[0], max(span[1], min(handle.entry.ref.size, max(ends))))
        await self._set_pins(handle.entry, [(handle, span)])

    # -- reads --------------------------------------------------------------------------------

    async def read(
        self, handle: Handle, offset: int, length: int, into: bytearray | None = None
    ) -> bytes | memoryview:
        """The bytes [offset, offset + length) of the file (fewer at its end).

        With `into`, they are read into that buffer and a view of it is returned, valid until
        the buffer is used again: the FUSE layer replies with it at once, and no 1 MiB object
        is made per request.
        """
        entry = handle.entry
        if entry.failure is not None:
            raise entry.failure
        end = min(offset + length, entry.ref.size)
        if offset >= end:
            return b""
        sequential = offset == handle.next_offset
        handle.next_offset = end
        trusted = True
        if self._lease_in_doubt():
            trusted = await self._revalidate()
            entry = handle.entry  # re-registering may have moved the handle to a fresh entry
        if handle.lock_id < 0:
            trusted = False  # opened while the index was unreachable, and still is
        if entry.complete and not entry.windowed:
            self.stats.hit(end - offset)
            self._atimes[entry.ref.key] = time.time()
            return self._pread(entry, offset, end, trusted, into)
        if not entry.windowed and entry.ranges.present(offset, end):
            if sequential:
                self._read_ahead(handle, offset)
            self.stats.hit(end - offset)
            self._atimes[entry.ref.key] = time.time()
            return self._pread(entry, offset, end, trusted, into)
        handle.reading[(offset, end)] += 1
        self._live_waiting += 1
        try:
            with trio.move_on_after(self.settings.read_deadline) as deadline:
                hit = await self._ensure(handle, offset, end, sequential)
                while trusted and self._lease_in_doubt():
                    # The wait outlasted half a lease (a stopped process, a stalled index):
                    # another host may have taken our locks and pins meanwhile, and dropped
                    # the bytes we just found. Renew first; after a re-registration, look again.
                    trusted = await self._revalidate()
                    if trusted:
                        hit = await self._ensure(handle, offset, end, sequential)
        finally:
            self._live_waiting -= 1
            handle.reading[(offset, end)] -= 1
            if not handle.reading[(offset, end)]:
                del handle.reading[(offset, end)]
        if deadline.cancelled_caught:
            cause = (
                f"{entry.ref.path}: no bytes at offset {offset} after "
                f"{self.settings.read_deadline:g}s"
            )
            if self.index.unreachable is not None:
                cause = f"{cause}: {self.index.unreachable}"
            raise Timeout(cause)
        (self.stats.hit if hit else self.stats.miss)(end - offset)
        entry = handle.entry
        self._atimes[entry.ref.key] = time.time()
        return self._pread(entry, offset, end, trusted, into)

    # -- prefetch (wtfs prefetch) --------------------------------------------------------------

    async def yield_to_live_reads(self) -> None:
        """Until no live read waits for bytes and no fetch waits for a slot: a prefetch takes
        its next block only then, so live reads come first (`wtfs.cache.prefetch`)."""
        # Polled: the counts change on every read, an event per change would cost the hot path.
        while self._live_waiting or self._slots.statistics().tasks_waiting:  # noqa: ASYNC110
            await trio.sleep(BUSY_POLL)

    async def prefetch_block(self, handle: Handle, start: int, end: int) -> None:
        """Bring [start, end) of `handle`'s file into the store without serving it, within the
        read deadline; raises the run's failure. A sequential reader's runs (one request for
        `STREAM_BLOCKS` blocks, which later blocks wait for) without its read-ahead: one stream
        at a time, never a second run beside the first."""
        entry = handle.entry
        if entry.failure is not None:
            raise entry.failure
        handle.next_offset = end
        with trio.move_on_after(self.settings.read_deadline) as deadline:
            await self._ensure(handle, start, end, sequential=True, read_ahead=False)
        if deadline.cancelled_caught:
            raise Timeout(
                f"{entry.ref.path}: no bytes at offset {start} after "
                f"{self.settings.read_deadline:g}s"
            )

    async def settle_complete(self, handle: Handle) -> bool:
        """Whether `handle`'s file is complete in the store, marking it so (after its checksum)
        when every byte is there: the run that brought the last bytes may not have yet."""
        entry = handle.entry
        for run in list(entry.runs):  # a reader wakes once its bytes are written: the commit
            await run.wait()  # comes after, at the end of the piece or of the run
        if not entry.complete and entry.ranges.total == entry.ref.size:
            await self._complete(entry)
        return entry.complete

    def _pread(
        self, entry: LiveEntry, start: int, end: int, trusted: bool, into: bytearray | None
    ) -> bytes | memoryview:
        if into is not None and len(into) >= end - start:
            view = memoryview(into)[: end - start]
            data: bytes | memoryview = view[: os.preadv(entry.fd, [view], start)]
        else:
            data = os.pread(entry.fd, end - start, start)
        if not trusted:
            # Our lease is in doubt and the index cannot be reached: serve only bytes the file
            # still holds. A span dropped meanwhile reads as a hole, never as good zeros.
            hole = os.lseek(entry.fd, start, os.SEEK_HOLE)
            if hole < min(end, entry.ref.size):
                raise TransferFailed(
                    f"{entry.ref.path}: the index cannot be reached to confirm these bytes, "
                    "and the store no longer holds them"
                )
        return data

    async def _ensure(
        self, handle: Handle, start: int, end: int, sequential: bool, *, read_ahead: bool = True
    ) -> bool:
        """Until [start, end) can be read from the store file. True when it was there at once.

        Each turn of the loop waits for something that makes progress (a run of ours bringing
        the bytes, or another process's claim on them), or fails with the cause.
        """
        first_turn = True
        while True:
            entry = handle.entry
            if self._closing:
                raise TransferFailed(f"{entry.ref.path}: the mount is being unmounted")
            if entry.failure is not None:
                raise entry.failure
            if entry.replaced and entry.unwritten(start, end):
                raise TransferFailed(
                    f"{entry.ref.path}: Girder has a new version of this file; the old one open "
                    "here can serve only the bytes the store holds: reopen it to read the new one"
                )
            if entry.windowed and not handle.pinned(start, end):
                await self._pin(handle, start, end)
                continue
            if sequential and first_turn and read_ahead:
                self._read_ahead(handle, start)
            unwritten = entry.unwritten(start, end)
            if not unwritten:
                return first_turn
            first_turn = False
            missing = unwritten[0][0]
            run = next((r for r in entry.runs if r.will_reach(missing)), None)
            if run is None:
                bs = self.settings.block_size
                failed = entry.block_errors.get(missing // bs)
                if failed is not None and trio.current_time() - failed[1] < FAILURE_MEMORY:
                    raise failed[0]
                if entry.busy_until.get(missing // bs, 0) > trio.current_time():
                    # Another process is fetching it: wait for its range to show up.
                    await trio.sleep(BUSY_POLL)
                    await self._refresh_ranges(entry)
                    continue
                if sequential:
                    run = self._start_run(
                        entry, missing, last_block=missing // bs + STREAM_BLOCKS - 1
                    )
                else:
                    run_start = missing - missing % PAGE
                    run = self._start_run(
                        entry, run_start, last_block=missing // bs,
                        stop=max(end, run_start + RANDOM_SPAN), claim_beside=True,
                    )  # fmt: skip
                if run is None:
                    await trio.sleep(BUSY_POLL)  # overlapped by a run just ending: look again
                    continue
            await run.wait_for(min(end, run.end))
            if run.error is not None and entry.unwritten(start, min(end, run.end)):
                raise run.error

    def _read_ahead(self, handle: Handle, position: int) -> None:
        """Keep a run going ahead of a sequential reader.

        The frontier is the first block at or after the reader that is neither present nor
        being fetched. When the reader comes within `readahead_blocks` of it, a new run of
        `STREAM_BLOCKS` starts there, so two runs overlap and the stream never stalls. A
        windowed entry reads ahead only inside the reader's pin (more would be dropped again).
        """
        entry = handle.entry
        if self._closing or entry.failure is not None or entry.replaced:
            return
        bs = self.settings.block_size
        current = position // bs
        last_block = (entry.ref.size - 1) // bs
        limit = min(last_block, current + self.settings.readahead_blocks)
        if entry.windowed:
            if handle.pin is None:
                return
            limit = min(limit, (handle.pin[1] - 1) // bs)
        frontier = current
        while frontier <= limit and self._block_covered(entry, frontier):
            frontier += 1
        if frontier > limit or entry.busy_until.get(frontier, 0) > trio.current_time():
            return
        self._start_run(entry, frontier * bs, last_block=frontier + STREAM_BLOCKS - 1, ahead=True)

    def _block_covered(self, entry: LiveEntry, block: int) -> bool:
        """Whether a block is present, or a run of ours has it or is on its way to it."""
        bs = self.settings.block_size
        start, end = block * bs, min(entry.ref.size, (block + 1) * bs)
        missing = entry.unwritten(start, end)
        return not missing or any(r.will_reach(missing[0][0]) for r in entry.runs)

    def _start_run(
        self,
        entry: LiveEntry,
        start: int,
        *,
        last_block: int,
        transfer: Transfer | None = None,
        ahead: bool = False,
        stop: int | None = None,
        claim_beside: bool = False,
    ) -> Run | None:
        """Fetch the missing bytes from `start` up to the end of `last_block` (or `stop`, if
        before), stopping before bytes that are present or that a run of ours is on its way
        to; `claim_beside`: its request goes out while its first piece is claimed (a random
        read's, `wtfs.cache.runs`). None: nothing to do."""
        if self._closing or self._nursery is None:
            raise TransferFailed(f"{entry.ref.path}: the mount is being unmounted")
        bs = self.settings.block_size
        limit = min(entry.ref.size, (last_block + 1) * bs)
        if stop is not None:
            limit = min(limit, stop)
        missing = entry.unwritten(start, limit)
        if not missing:
            return None
        start, end = missing[0]
        for run in entry.runs:  # a run only goes forward: what lies behind it is not its own
            if run.finished or run.end <= start or run.claimed_from >= end:
                continue
            if run.position <= start:
                return None  # that run is on its way to `start`
            end = min(end, run.claimed_from)  # stop where that run's own bytes begin
        run = Run(start, end, bs, claim_beside=claim_beside)
        entry.runs.add(run)
        entry.retain()
        self._nursery.start_soon(self._run, entry, run, transfer, ahead)
        return run

    async def _refresh_ranges(self, entry: LiveEntry) -> None:
        row = await self.index.run(self.index.sync.get_entry, entry.ref.key)
        if row is not None and row.file_name == entry.file_name:
            entry.learn(row.ranges)
            entry.complete = entry.complete or row.complete

    # -- fetch runs ---------------------------------------------------------------------------

    async def _run(
        self, entry: LiveEntry, run: Run, transfer: Transfer | None, ahead: bool
    ) -> None:
        target = _EntryTarget(self, entry, wanted=not ahead)
        ref = entry.ref
        slot = False
        record: _Record | None = None
        try:
            try:
                self._slots.acquire_nowait()  # a free slot: the record starts TRANSFERRING
                slot = True
            except trio.WouldBlock:
                pass
            begin = functools.partial(
                self.transfers.begin, key=ref.key, item_id=ref.item_id, path=ref.path,
                source=ref.source.url, start=run.start, size=run.end - run.start,
                wait=self.settings.read_deadline, transferring=slot,
            )  # fmt: skip
            if transfer is None and slot:
                # The record is made beside the fetch, once its first bytes are in: no index
                # transaction on the way to a random read's first byte. Commits add their
                # progress to it once it exists; its end waits for it.
                record = _Record(begin, target, run)
                self._nursery.start_soon(record.make)  # type: ignore[union-attr]
            elif transfer is None:
                transfer = await begin()
            elif slot:
                await transfer.transferring()  # a record `wtfs retry` re-queued
            target.transfer = transfer
            provider = self.providers.get(ref.source)  # no provider: a FAILED record says so
            if not slot:
                assert transfer is not None
                await transfer.queued()
                await self._slots.acquire()
                slot = True
                await transfer.transferring()

            def on_retry(attempt: int, exc: WtfsError, delay: float) -> None:
                run.attempts = attempt + 1
                if target.transfer is not None:
                    target.transfer.retried(attempt)
                log.warning(
                    "%s: %s (attempt %d, retrying in %.1fs)", ref.path, exc.cause, attempt, delay
                )

            await execute(run, target, provider, ref.source, ref.size, self.settings.retry,
                          on_retry=on_retry)  # fmt: skip
        except WtfsError as exc:  # before the fetch began: no provider, no record
            run.finish(exc)
        except Exception as exc:
            log.exception("%s: fetch run failed unexpectedly", ref.path)
            run.finish(TransferFailed(f"{ref.path}: fetch failed: {exc!r}"))
        finally:
            if slot:
                self._slots.release()
            with trio.CancelScope(shield=True):
                run.finish()
                entry.runs.discard(run)
                error = run.error
                if error is not None:
                    bs = self.settings.block_size
                    now = trio.current_time()
                    for block in range(run.position // bs, (run.end - 1) // bs + 1):
                        entry.block_errors[block] = (error, now)
                    log.error("%s: transfer failed: %s", ref.path, error.cause)
                    if isinstance(error, PERMANENT):  # asking again cannot help while open
                        entry.failure = error
                if record is not None:
                    transfer = await record.made()
                if transfer is not None:
                    transfer.attempts = max(transfer.attempts, run.attempts)
                    await transfer.finish(run.transferred, error)
                # Here, not after the transfer: a run cancelled by the last close may be the
                # one that committed the last byte.
                try:
                    if not entry.complete and entry.ranges.total == entry.ref.size:
                        await self._complete(entry)
                except WtfsError as exc:
                    log.error("%s: %s", ref.path, exc.cause)
                self._release_ref(entry)

    async def _complete(self, entry: LiveEntry) -> None:
        """All bytes are here: verify the checksum when known, then mark complete atomically.
        Once per entry at a time: a second caller (a run ending beside a prefetch) waits for
        the first rather than read the whole file again."""
        if entry.completing is not None:
            await entry.completing.wait()
            return
        entry.completing = trio.Event()
        try:
            await self._verify_and_mark(entry)
        finally:
            entry.completing.set()
            entry.completing = None

    async def _verify_and_mark(self, entry: LiveEntry) -> None:
        error = await verify(entry.fd, entry.ref)
        if error is not None:
            entry.failure = error
            log.error("%s", error.cause)
            self._complete_files.pop(entry.ref.key, None)
            eviction = await self.index.run(
                self.index.sync.delete_entry, entry.ref.key, "checksum mismatch",
                self.owner.owner_id,
            )  # fmt: skip
            await self.index.run(
                self.index.sync.record_failure, "checksum", entry.ref.key, error.cause,
                self.owner.owner_id,
            )  # fmt: skip
            self._retire(entry)
            await self.space.settle(eviction)
            return
        if await self.index.run(self.index.sync.mark_complete, entry.ref.key):
            entry.complete = True
            self._remember_complete(entry)

    async def _fail_unfetchable(self, ref: FileRef) -> NoReturn:
        """An item that can never be fetched (e.g. phys_path without size): open() gets EIO."""
        assert ref.error is not None
        error = TransferFailed(ref.error)
        await self.refused(ref, error)
        raise error

    async def refused(self, ref: FileRef, error: WtfsError) -> None:
        """An open refused before any fetch (an item that can never be fetched, a file deleted
        in Girder): the first one per file and process is recorded as a FAILED transfer with
        the cause, for `wtfs status`, and logged."""
        if ref.key in self._unfetchable:
            return
        self._unfetchable.add(ref.key)
        log.error("%s", error.cause)
        try:
            await self.transfers.failed_at_once(
                key=ref.key, item_id=ref.item_id, path=ref.path, source=ref.source.url,
                size=ref.size, cause=error.cause,
            )  # fmt: skip
        except WtfsError as exc:
            log.warning("could not record the failure in the index: %s", exc.cause)

    # -- retries ------------------------------------------------------------------------------

    async def refetch(self, ref: FileRef, transfer_id: int, start: int, end: int) -> None:
        """Run a re-queued transfer again (`wtfs retry`), in its own record."""
        if ref.error is not None:
            await self.transfers.fail(transfer_id, ref.error)
            return
        handle = await self.open(ref)
        try:
            entry = handle.entry
            entry.failure = None  # a user asked to try again
            missing = entry.ranges.find_missing(start, end)
            run = None
            if missing:
                bs = self.settings.block_size
                run = self._start_run(
                    entry, missing[0][0], last_block=(end - 1) // bs,
                    transfer=self.transfers.resume(transfer_id, end - missing[0][0]),
                )  # fmt: skip
            if run is None:  # nothing missing, or another run is fetching it: the record is moot
                await self.transfers.done(transfer_id)
            else:
                await run.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.release(handle)


class _Record:
    """A run's transfer record, made by a task of its own while the run already fetches."""

    def __init__(
        self, begin: Callable[[], Awaitable[Transfer]], target: _EntryTarget, run: Run
    ) -> None:
        self._begin = begin
        self._target = target
        self._run = run
        self._done = trio.Event()
        self._transfer: Transfer | None = None

    async def make(self) -> None:
        """After the run's first bytes (the reader they woke replies first: a turn of the
        loop later) or `RECORD_DELAY`. Made before the claim and the request, its transaction
        held back both, 0.1-0.2 ms of a 4 ms random read (bench `random`, traced)."""
        try:
            with trio.move_on_after(RECORD_DELAY):
                await self._run.wait_started()
                await trio.lowlevel.checkpoint()
            self._transfer = self._target.transfer = await self._begin()
        except WtfsError as exc:
            log.warning("%s: no transfer record: %s", self._target.entry.ref.path, exc.cause)
        finally:
            self._done.set()

    async def made(self) -> Transfer | None:
        await self._done.wait()
        return self._transfer


def _overlap(a: tuple[int, int] | None, b: tuple[int, int]) -> tuple[int, int] | None:
    if a is None or a[1] <= b[0] or b[1] <= a[0]:
        return None
    return max(a[0], b[0]), min(a[1], b[1])


class _EntryTarget:
    """What a run sees of its entry (runs.RunTarget): reserve, write, commit."""

    def __init__(self, manager: CacheManager, entry: LiveEntry, *, wanted: bool) -> None:
        self.manager = manager
        self.entry = entry
        self.wanted = wanted
        self.transfer: Transfer | None = None

    async def reserve(self, run: Run, start: int, end: int) -> int:
        entry = self.entry
        bs = self.manager.settings.block_size
        if not self._may_claim(run, start, end):
            raise StopRun  # present, or a run of ours has these bytes or will: not twice
        # A reader waits for the first block of a run it started; the rest is read-ahead,
        # which gives up quietly when there is no room rather than squeeze other readers.
        wanted = self.wanted and start // bs == run.start // bs
        try:
            res = await self.manager.space.reserve(
                entry.ref.key, start, end, entry.file_name, wanted=wanted, path=entry.ref.path
            )
        except NoSpace:
            if not wanted:
                raise StopRun from None
            raise
        if res.stale:
            raise TransferFailed(
                f"{entry.ref.path}: the file was replaced in the store while open; reopen it"
            )
        assert res.ranges is not None
        entry.learn(res.ranges)
        entry.windowed = entry.windowed or res.windowed
        if res.claim_id is not None:
            return res.claim_id
        if res.busy:
            entry.busy_until[start // bs] = trio.current_time() + BUSY_POLL
        raise StopRun  # present, busy, or read-ahead without room

    async def write(self, offset: int, data: memoryview) -> None:
        entry = self.entry
        write_all = self.manager.store.write_all
        try:
            write_all(entry.fd, data, offset)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # The disk filled before the capacity did: make room, try once more.
            space = self.manager.space
            if not await space.disk_full(len(data)):
                raise await space.refused(entry.ref.key, DiskFull(
                    f"{entry.ref.path}: private store full: the disk under the store is full "
                    "and nothing could be evicted"
                )) from None  # fmt: skip
            try:
                write_all(entry.fd, data, offset)  # again from the start: the same bytes
            except OSError as again:
                if is_disk_full(again):
                    raise await space.refused(entry.ref.key, DiskFull(
                        f"{entry.ref.path}: private store full: the disk under the store is "
                        "still full after the GC"
                    )) from None  # fmt: skip
                raise
        self.manager.stats.fetched(len(data))

    async def commit(
        self, run: Run, claim_id: int, start: int, end: int, *, next_end: int | None = None
    ) -> int | None:
        entry = self.entry
        transfer = (self.transfer.id, run.transferred) if self.transfer else None
        if next_end is not None and not self._may_claim(run, end, next_end):
            next_end = None
        if next_end is None:
            ranges = await self.manager.index.run_retrying(
                self.manager.index.sync.commit_range, claim_id, entry.ref.key, start, end,
                transfer, file_name=entry.file_name,
            )  # fmt: skip
            res = None
        else:
            ranges, res = await self.manager.space.commit_and_reserve(
                claim_id, entry.ref.key, start, end, transfer, next_end, entry.file_name
            )
        if ranges or not entry.ranges:  # empty: the entry was replaced (stale file)
            entry.learn(ranges)
        if entry.block_errors:
            bs = self.manager.settings.block_size
            for block in range(start // bs, (end - 1) // bs + 1):
                entry.block_errors.pop(block, None)
        if res is None or res.claim_id is None:
            return None  # no next claim: `reserve` it, which says why (busy, present, no room)
        entry.windowed = entry.windowed or res.windowed
        return res.claim_id

    def _may_claim(self, run: Run, start: int, end: int) -> bool:
        """Whether `reserve` would ask the index for [start, end) at all (see `reserve`)."""
        entry = self.entry
        for other in entry.runs:
            if other is not run and not other.finished and other.claimed_from <= start < other.end:
                return False
        return entry.windowed or not entry.ranges.present(start, end)

    async def release(self, claim_id: int) -> None:
        await self.manager.index.run_retrying(self.manager.index.sync.release_claim, claim_id)


__all__ = ["CacheManager", "CacheSettings", "FileRef", "Handle", "LiveEntry", "Ranges"]


def _new_entry(ref: FileRef) -> NewEntry:
    """The index's view of the entry `ref` reads (its source shown without credentials)."""
    return NewEntry(ref.key, ref.source_key, ref.version, ref.item_id, ref.size,
                    redact_url(ref.source.url), ref.path, ref.source.checksum,
                    ref.content_hash)  # fmt: skip
