"""The eviction policy: LRU among unlocked, unclaimed entries, between two water marks.

A pass reclaims dead owners' locks first (so a crashed mount never pins files forever), then,
when usage ≥ start mark (or room is needed now), evicts least recently used entries until usage
≤ end mark (or the room asked for is free). The index commit comes before the unlinks.

The marks are fractions of the store's effective capacity (`wtfs.cache.space.Capacity`): the
configured one, or what the filesystem under the store can hold when that is less. Sized on a
configured capacity the disk cannot hold, a pass would never evict, and every fetch would meet
a full disk instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from wtfs_index import Evicted, Eviction, Index, Owner

from wtfs.cache.space import auto_reserve, free_space, measure
from wtfs.cache.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcPolicy:
    capacity: int
    start_fraction: float
    end_fraction: float
    #: bytes of the store's filesystem kept free (None: `wtfs.cache.space.auto_reserve`)
    disk_reserve: int | None = None

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
    #: the capacity the pass sized its marks on (the effective one: see the module docstring)
    capacity: int = 0
    reason: str = ""
    #: seconds the index's half took (`seconds`: what other index calls may wait for), and
    #: the unlinks after it (no index held)
    unlink_seconds: float = 0.0

    @property
    def unlink_id(self) -> int | None:
        """The batch of the pass's evictions (None: nothing evicted)."""
        return self.evicted.unlink_id if isinstance(self.evicted, Eviction) else None

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.evicted)


class PassOptions(TypedDict, total=False):
    """`needed` > 0: a fetch is waiting for that many bytes (pressure); `force`: evict down to
    the end mark even below the start mark (`wtfs gc`)."""

    needed: int
    force: bool


def collect(
    index: Index, store: Store, policy: GcPolicy, me: Owner, **options: Unpack[PassOptions]
) -> GcReport:
    """One whole pass, blocking: `evict`, then `finish` (the unlinks and their bytes)."""
    return finish(index, store, evict(index, store, policy, me, **options))


def evict(
    index: Index,
    store: Store,
    policy: GcPolicy,
    me: Owner,
    *,
    needed: int = 0,
    force: bool = False,
) -> GcReport:
    """The index's half of a pass: reclaim, choose and delete the evicted entries. Their files
    are still on disk and their bytes still counted (`finish` unlinks them): a daemon runs the
    unlinks without holding the index, so that its readers' index calls go on meanwhile."""
    started = time.perf_counter()
    reclaimed = index.reclaim_dead(me)
    store.finish_orphan_unlinks(index, me)
    usage = index.usage()
    policy = _within_disk(index, store, policy, usage)
    if needed > 0:
        target = min(policy.end_bytes, policy.capacity - needed)
        reason = "pressure"
    elif force or usage >= policy.start_bytes:
        target = policy.end_bytes
        reason = "gc"
    else:
        return GcReport(usage, usage, [], reclaimed, time.perf_counter() - started, policy.capacity)
    evicted = index.evict_lru(max(0, target), me.owner_id, reason)
    seconds = time.perf_counter() - started
    return GcReport(usage, usage, evicted, reclaimed, seconds, policy.capacity, reason)


def unlink(store: Store, report: GcReport) -> None:
    """The files of a pass's evicted entries (blocking: the daemon runs it in a thread)."""
    if isinstance(report.evicted, Eviction):
        store.apply(report.evicted)


def finish(index: Index, store: Store, report: GcReport, *, unlinked: bool = False) -> GcReport:
    """Unlink the pass's files (unless done already) and stop counting their bytes."""
    if not report.evicted:
        return report
    started = time.perf_counter()
    if not unlinked:
        unlink(store, report)
    if report.unlink_id is not None:
        index.finish_unlink(report.unlink_id)
    after = index.usage()
    done = dataclasses.replace(
        report,
        usage_after=after,
        unlink_seconds=report.unlink_seconds or time.perf_counter() - started,
    )
    log.info(
        "gc (%s): evicted %d entries, %d bytes; usage %d → %d of %d",
        report.reason,
        len(report.evicted),
        done.freed,
        report.usage_before,
        after,
        report.capacity,
    )
    return done


def _within_disk(index: Index, store: Store, policy: GcPolicy, usage: int) -> GcPolicy:
    """The policy on the store's effective capacity. The exact figure needs the index's summary
    (which counts complete entries, a scan of the table), asked only when the disk may be what
    bounds the store: usage plus free space, less the reserve, short of the capacity."""
    reserve = auto_reserve(store) if policy.disk_reserve is None else policy.disk_reserve
    free = free_space(store)
    if free is None or usage + free - reserve >= policy.capacity:
        return policy
    capacity = measure(store, policy.capacity, reserve, index.summary())
    if not capacity.limited:
        return policy
    return dataclasses.replace(policy, capacity=capacity.effective)
