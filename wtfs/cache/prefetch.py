"""Prefetch: fetch files into the store ahead of use (`wtfs prefetch`), behind live reads.

A prefetch is one record in the index (`prefetches`, with a row per file in `prefetch_files`),
run by a mount's daemon (asked through the index) or by the `wtfs prefetch` command itself
over the store, registered as an owner of its own kind. Either way it goes through a
`CacheManager`, so it takes the same locks and claims, and the same room, as any reader:

- **live reads first**: one file and one stream at a time (a sequential reader's runs of
  `STREAM_BLOCKS` blocks, one provider request each, without read-ahead beside them), and
  before each run it waits while a live read waits for bytes or a fetch waits for a slot
  (`CacheManager.yield_to_live_reads`);
- **it never evicts**: before each run it checks that the store's usage plus all that run may
  bring stays under the GC's start mark (`gc_collect_start_fraction` of the effective
  capacity), and stops there with that cause rather than make the GC evict other cached files
  for it (a run's blocks past its first never evict either: they stop when there is no room);
- **resumable**: bytes already in the store are not fetched again (only missing blocks are),
  so running it again after a Ctrl-C or a failure picks up where it stopped; a file whose
  contents are already in the store under another entry is shared (`wtfs.cache.dedup`);
- **cancellable**: the cancel flag in its record (`Index.prefetch_cancel`) is read with every
  progress update; it stops between blocks, every claim released or committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio
from wtfs_index import PrefetchState, Ranges

from wtfs.cache.entry import FileRef
from wtfs.cache.manager import STREAM_BLOCKS, CacheManager
from wtfs.cache.space import measure
from wtfs.config import format_size
from wtfs.errors import NoSpace, WtfsError

log = logging.getLogger(__name__)

#: seconds between progress writes to the index (and looks at the cancel flag)
PROGRESS_EVERY = 0.25


class StartMarkReached(NoSpace):
    """The store reached the GC's start mark: a prefetch stops rather than make it evict."""


@dataclass
class Outcome:
    state: str
    #: per failed file: its path and cause
    failures: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


class Prefetcher:
    def __init__(
        self,
        manager: CacheManager,
        prefetch_id: int,
        *,
        start_fraction: float,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.manager = manager
        self.index = manager.index
        self.prefetch_id = prefetch_id
        self.start_fraction = start_fraction
        #: set by the runner's own Ctrl-C (the index's flag is read with each progress write)
        self._cancelled_here = cancelled
        self._cancel = False
        self._done = 0
        self._fetched = 0
        self._written_at = -1.0

    async def run(
        self, files: Sequence[FileRef], errors: Sequence[tuple[str, str]] = ()
    ) -> Outcome:
        """Fetch `files` (`errors`: paths asked for that are no files of the session, with
        why), record the outcome and return it."""
        # What is recorded if the run is cancelled from outside (its mount unmounted).
        outcome = Outcome(PrefetchState.FAILED, error="interrupted: its wtfs process stopped")
        try:
            outcome = await self._run(files, errors)
        except WtfsError as exc:
            outcome = Outcome(PrefetchState.FAILED, error=exc.cause)
        finally:
            if outcome.error is None and outcome.failures:
                total = len(files) + len(errors)
                outcome.error = f"{len(outcome.failures)} of {total} files failed"
            with trio.CancelScope(shield=True):
                try:
                    await self.index.run(
                        self.index.sync.prefetch_finish, self.prefetch_id, outcome.state,
                        outcome.error,
                    )  # fmt: skip
                except WtfsError as exc:
                    log.warning("prefetch %d: its end not recorded: %s", self.prefetch_id,
                                exc.cause)  # fmt: skip
        return outcome

    async def _run(self, files: Sequence[FileRef], errors: Sequence[tuple[str, str]]) -> Outcome:
        index = self.index
        present = []
        for ref in files:
            row = await index.run(index.sync.get_entry, ref.key)
            present.append(row.size if row is not None and row.complete else 0)
        plan = [(ref.path, ref.size, have) for ref, have in zip(files, present, strict=True)]
        plan += [(path, 0, -1) for path, _ in errors]  # no bytes: failed below
        await index.run(index.sync.prefetch_plan, self.prefetch_id, plan)
        self._done = sum(present)
        outcome = Outcome(PrefetchState.DONE)
        for path, cause in errors:
            await index.run(index.sync.prefetch_file_done, self.prefetch_id, path, 0, cause)
            outcome.failures.append((path, cause))
        for ref, have in zip(files, present, strict=True):
            if have >= ref.size:
                continue
            if await self._should_stop():
                outcome.state = PrefetchState.CANCELLED
                return outcome
            try:
                fetched = await self._file(ref)
            except StartMarkReached as exc:
                await index.run(
                    index.sync.prefetch_file_done, self.prefetch_id, ref.path, 0, exc.cause
                )
                outcome.failures.append((ref.path, exc.cause))
                outcome.state, outcome.error = PrefetchState.FAILED, exc.cause
                return outcome
            except _Cancelled:
                outcome.state = PrefetchState.CANCELLED
                return outcome
            except WtfsError as exc:
                log.warning("prefetch %d: %s", self.prefetch_id, exc.cause)
                await index.run(
                    index.sync.prefetch_file_done, self.prefetch_id, ref.path, 0, exc.cause
                )
                outcome.failures.append((ref.path, exc.cause))
                continue
            await index.run(index.sync.prefetch_file_done, self.prefetch_id, ref.path, fetched)
        if await self._should_stop():
            outcome.state = PrefetchState.CANCELLED
        elif outcome.failures:
            outcome.state = PrefetchState.FAILED
        await self._progress(None, force=True)
        return outcome

    async def _file(self, ref: FileRef) -> int:
        """Bring one file into the store; the bytes it fetched."""
        manager = self.manager
        handle = await manager.open(ref)
        fetched = 0
        try:
            bs = manager.settings.block_size
            last = handle.entry.ranges.total
            self._done += last  # bytes of a file a former run left half fetched
            for block in range(0, (ref.size + bs - 1) // bs):
                start, end = block * bs, min(ref.size, (block + 1) * bs)
                entry = handle.entry
                if entry.complete or not entry.ranges.find_missing(start, end):
                    continue
                await self._progress(ref.path)
                if self._cancel:
                    raise _Cancelled
                if not any(run.will_reach(start) for run in entry.runs):
                    # A new run (one request) starts here: live reads first, and room for all
                    # it may bring (up to STREAM_BLOCKS blocks) under the GC start mark.
                    await manager.yield_to_live_reads()
                    ahead = min(ref.size, start + STREAM_BLOCKS * bs)
                    await self._check_mark(ref, _missing(entry.ranges, start, ahead))
                await manager.prefetch_block(handle, start, end)
                now = handle.entry.ranges.total
                self._done += max(0, now - last)
                fetched += max(0, now - last)
                self._fetched += max(0, now - last)
                last = now
            if not await manager.settle_complete(handle):
                raise WtfsError(f"{ref.path}: not complete in the store after its prefetch")
            rest = ref.size - last  # committed after its block returned (`settle_complete`)
            self._done += rest
            fetched += rest
            self._fetched += rest
            await self._progress(ref.path, force=True)
        finally:
            with trio.CancelScope(shield=True):
                await manager.release(handle)
        return fetched

    async def _check_mark(self, ref: FileRef, needed: int) -> None:
        manager = self.manager
        summary = await self.index.run(self.index.sync.summary)
        settings = manager.settings
        capacity = await trio.to_thread.run_sync(
            measure, manager.store, settings.capacity, settings.disk_reserve, summary
        )
        mark = int(capacity.effective * self.start_fraction)
        if summary.usage + needed > mark:
            raise StartMarkReached(
                f"{ref.path}: stopped at the GC start mark: the store holds "
                f"{format_size(summary.usage)} of {format_size(capacity.effective)}, and the GC "
                f"starts at {format_size(mark)} (gc_collect_start_fraction "
                f"{self.start_fraction:g}); a prefetch evicts no other cached files"
            )

    async def _should_stop(self) -> bool:
        await self._progress(None, force=True)
        return self._cancel

    async def _progress(self, current: str | None, *, force: bool = False) -> None:
        now = trio.current_time()
        if not force and now - self._written_at < PROGRESS_EVERY:
            return
        self._written_at = now
        asked = await self.index.run(
            self.index.sync.prefetch_progress, self.prefetch_id, bytes_done=self._done,
            bytes_fetched=self._fetched, current=current,
        )  # fmt: skip
        self._cancel = self._cancel or asked or self._cancelled_here()


class _Cancelled(Exception):
    pass


def _missing(ranges: Ranges, start: int, end: int) -> int:
    return sum(e - s for s, e in ranges.find_missing(start, end))
