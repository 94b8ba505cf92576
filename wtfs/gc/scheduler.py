"""Runs the GC every `gc_run_interval` seconds, and at once when a fetch needs room."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import trio
from wtfs_index import Owner

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.memory import trim_memory
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.errors import WtfsError
from wtfs.gc.evictor import GcPolicy, GcReport, evict, finish, unlink

log = logging.getLogger(__name__)


class GcScheduler:
    def __init__(
        self,
        index: AsyncIndex,
        store: Store,
        policy: GcPolicy,
        me: Owner,
        interval: float,
        stats: Stats | None = None,
        history: tuple[int, float] = (10_000, 7.0),
    ) -> None:
        self.index = index
        self.store = store
        self.policy = policy
        self.me = me
        self.interval = interval
        self.stats = stats or Stats()
        self.history = history
        self._lock = trio.Lock()
        self.passes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.collect()
                if self.passes % 60 == 1:
                    await self.index.run(self.index.sync.prune_history, *self.history)
            except WtfsError as exc:
                log.warning("gc pass failed: %s", exc.cause)
            except Exception:
                log.exception("gc pass failed")

    async def collect(self, needed: int = 0) -> GcReport:
        """A pass in three steps: the index's (choose, delete), the unlinks in a thread of
        their own (the daemon's other index calls go on meanwhile), the index's again (stop
        counting the bytes)."""
        async with self._lock:
            fn = functools.partial(
                evict, self.index.sync, self.store, self.policy, self.me, needed=needed
            )
            report = await self.index.run_direct(fn)
            if report.evicted:
                with self.store.carrying_out(report.unlink_id):
                    started = time.perf_counter()
                    await trio.to_thread.run_sync(unlink, self.store, report)
                    unlinked = time.perf_counter() - started
                    report = dataclasses.replace(report, unlink_seconds=unlinked)
                    report = await self.index.run_direct(
                        functools.partial(
                            finish, self.index.sync, self.store, report, unlinked=True
                        )
                    )
            self.passes += 1
            if report.evicted:
                await trio.to_thread.run_sync(trim_memory)  # a big pass leaves freed heap behind
            self.stats.evictions += len(report.evicted)
            self.stats.evicted_bytes += report.freed
            return report

    async def make_room(self, needed: int) -> int:
        """Called by the cache manager when a reservation does not fit: evict now."""
        report = await self.collect(needed)
        return report.freed
