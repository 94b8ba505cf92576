"""Runs the GC every `gc_run_interval` seconds, and at once when a fetch needs room."""

from __future__ import annotations

import functools
import logging

import trio

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.gc.evictor import GcPolicy, GcReport, collect

log = logging.getLogger(__name__)


class GcScheduler:
    def __init__(
        self,
        index: AsyncIndex,
        store: Store,
        policy: GcPolicy,
        owner_id: str,
        interval: float,
        stats: Stats | None = None,
        history: tuple[int, float] = (10_000, 7.0),
    ) -> None:
        self.index = index
        self.store = store
        self.policy = policy
        self.owner_id = owner_id
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
            except Exception:
                log.exception("gc pass failed")

    async def collect(self, needed: int = 0) -> GcReport:
        async with self._lock:
            fn = functools.partial(
                collect, self.index.sync, self.store, self.policy, self.owner_id, needed=needed
            )
            report = await self.index.run(fn)
            self.passes += 1
            self.stats.evictions += len(report.evicted)
            self.stats.evicted_bytes += report.freed
            return report

    async def make_room(self, needed: int) -> int:
        """Called by the cache manager when a reservation does not fit: evict now."""
        report = await self.collect(needed)
        return report.freed
