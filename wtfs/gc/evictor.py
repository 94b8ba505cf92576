"""The eviction policy: LRU among unlocked, unclaimed entries, between two water marks.

A pass reclaims dead owners' locks first (so a crashed mount never pins files forever), then,
when usage ≥ start mark (or room is needed now), evicts least recently used entries until usage
≤ end mark (or the room asked for is free). The index commit comes before the unlinks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from wtfs_index.index import Evicted, Index

from wtfs.cache.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcPolicy:
    capacity: int
    start_fraction: float
    end_fraction: float

    @property
    def start_bytes(self) -> int:
        return int(self.capacity * self.start_fraction)

    @property
    def end_bytes(self) -> int:
        return int(self.capacity * self.end_fraction)


@dataclass(frozen=True)
class GcReport:
    usage_before: int
    usage_after: int
    evicted: list[Evicted] = field(default_factory=list)
    reclaimed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.evicted)


def collect(
    index: Index,
    store: Store,
    policy: GcPolicy,
    owner_id: str,
    *,
    needed: int = 0,
    force: bool = False,
) -> GcReport:
    """One pass. `needed` > 0: a fetch is waiting for that many bytes (pressure)."""
    started = time.perf_counter()
    reclaimed = index.reclaim_dead()
    store.finish_dead_unlinks(index)
    usage = index.usage()
    if needed > 0:
        target = min(policy.end_bytes, policy.capacity - needed)
        reason = "pressure"
    elif force or usage >= policy.start_bytes:
        target = policy.end_bytes
        reason = "gc"
    else:
        return GcReport(usage, usage, [], reclaimed, time.perf_counter() - started)
    evicted = index.evict_lru(max(0, target), owner_id, reason)
    store.unlink_many([entry.file_name for entry in evicted])
    if evicted.unlink_id is not None:
        index.finish_unlink(evicted.unlink_id)
    after = index.usage()
    report = GcReport(usage, after, evicted, reclaimed, time.perf_counter() - started)
    if evicted:
        log.info(
            "gc (%s): evicted %d entries, %d bytes; usage %d → %d of %d",
            reason,
            len(evicted),
            report.freed,
            usage,
            after,
            policy.capacity,
        )
    return report
