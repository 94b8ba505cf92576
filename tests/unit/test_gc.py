"""The evictor: LRU among unlocked entries, between the start and end water marks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest
from wtfs_index.index import Index
from wtfs_index.owner import Owner

from wtfs.cache.store import Store
from wtfs.gc.evictor import GcPolicy, collect

FillEntry = Callable[..., None]  # the `fill_entry` fixture

POLICY = GcPolicy(capacity=1000, start_fraction=0.9, end_fraction=0.5)


def fill(index: Index, me: Owner, fill_entry: FillEntry, keys: list[str], size: int = 100) -> None:
    """Entries of `size` bytes; keys[0] is the least recently used."""
    for key in keys:
        fill_entry(key, size)
    base = time.time() + 100
    index.heartbeat(me, {}, {key: base + n for n, key in enumerate(keys)})


def remaining(index: Index, keys: list[str]) -> list[str]:
    return [k for k in keys if index.get_entry(k) is not None]


def files_left(store: Store) -> int:
    return sum(1 for p in store.data.rglob("*") if p.is_file())


def test_the_policy_marks_are_fractions_of_capacity() -> None:
    assert (POLICY.start_bytes, POLICY.end_bytes) == (900, 500)


def test_nothing_is_evicted_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)  # 800 < 900
    report = collect(index, store, POLICY, me.owner_id)
    assert report.evicted == []
    assert report.freed == 0
    assert (report.usage_before, report.usage_after) == (800, 800)
    assert remaining(index, keys) == keys
    assert files_left(store) == 8


def test_a_pass_past_the_start_mark_brings_usage_to_the_end_mark_lru_first(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)  # 1000 ≥ 900
    report = collect(index, store, POLICY, me.owner_id)
    assert [e.key for e in report.evicted] == keys[:5]
    assert report.usage_before == 1000
    assert report.usage_after == 500
    assert report.usage_after <= POLICY.end_bytes
    assert report.freed == 500
    assert remaining(index, keys) == keys[5:]
    assert files_left(store) == 5


def test_exactly_at_the_start_mark_a_pass_runs(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(9)]
    fill(index, me, fill_entry, keys)  # 900
    report = collect(index, store, POLICY, me.owner_id)
    assert report.usage_after == 500
    assert [e.key for e in report.evicted] == keys[:4]


def test_the_evicted_files_are_unlinked(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    paths = {k: store.path_of(index.get_entry(k).file_name) for k in keys}  # type: ignore[union-attr]
    collect(index, store, POLICY, me.owner_id)
    assert [k for k in keys if paths[k].exists()] == keys[5:]


def test_locked_items_are_kept_even_when_least_recently_used(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    index.acquire_lock("item-k0", "s", me)
    index.acquire_lock("item-k2", "s", me)
    report = collect(index, store, POLICY, me.owner_id)
    assert [e.key for e in report.evicted] == ["k1", "k3", "k4", "k5", "k6"]
    assert report.usage_after == 500
    assert "k0" in remaining(index, keys) and "k2" in remaining(index, keys)


def test_a_dead_owners_lock_does_not_pin_an_entry(
    index: Index, store: Store, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    index.acquire_lock("item-k0", "s", dead_owner)
    report = collect(index, store, POLICY, me.owner_id)
    assert report.reclaimed["locks"] == 1
    assert report.evicted[0].key == "k0"


def test_when_everything_is_locked_the_pass_stops_short(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    for key in keys[:8]:
        index.acquire_lock(f"item-{key}", "s", me)
    report = collect(index, store, POLICY, me.owner_id)
    assert [e.key for e in report.evicted] == ["k8", "k9"]
    assert report.usage_after == 800


def test_pressure_evicts_even_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)  # 800 < 900
    report = collect(index, store, POLICY, me.owner_id, needed=300)
    assert report.usage_after <= POLICY.capacity - 300
    assert report.usage_after <= POLICY.end_bytes
    assert [e.key for e in report.evicted] == keys[:3]
    assert report.freed == 300


def test_pressure_larger_than_the_end_mark_frees_what_is_needed(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)
    report = collect(index, store, POLICY, me.owner_id, needed=700)
    assert report.usage_after <= 300
    assert [e.key for e in report.evicted] == keys[:5]
    assert report.freed == 500


def test_force_runs_a_pass_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(7)]
    fill(index, me, fill_entry, keys)
    report = collect(index, store, POLICY, me.owner_id, force=True)
    assert [e.key for e in report.evicted] == keys[:2]
    assert report.usage_after == 500


def test_claims_count_toward_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(7)]
    fill(index, me, fill_entry, keys)  # 700 present
    index.ensure_entry("inflight", "item-inflight", 300, None, "girder:x", "/f")
    index.reserve("inflight", 0, 300, me, capacity=POLICY.capacity)  # + 300 claimed
    report = collect(index, store, POLICY, me.owner_id)
    assert report.usage_before == 1000
    assert report.usage_after == 500
    assert [e.key for e in report.evicted] == keys[:5]
    assert index.get_entry("inflight") is not None


def test_files_are_unlinked_only_after_the_index_commit(
    index: Index,
    second_index: Index,
    store: Store,
    me: Owner,
    fill_entry: FillEntry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    by_file = {index.get_entry(k).file_name: k for k in keys}  # type: ignore[union-attr]
    seen: list[tuple[str, bool]] = []
    real_unlink_many = store.unlink_many

    def checking_unlink_many(file_names: Iterable[str]) -> None:
        # Another connection (another process) must already see the entries gone.
        for file_name in file_names:
            seen.append((by_file[file_name], second_index.get_entry(by_file[file_name]) is None))
            real_unlink_many([file_name])

    monkeypatch.setattr(store, "unlink_many", checking_unlink_many)
    collect(index, store, POLICY, me.owner_id)
    assert seen == [(k, True) for k in keys[:5]]


def test_evictions_are_recorded_with_their_reason(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    fill(index, me, fill_entry, [f"k{i}" for i in range(10)])
    collect(index, store, POLICY, me.owner_id)
    collect(index, store, POLICY, me.owner_id, needed=900)  # room for 900: down to 100
    rows = index.query("SELECT reason, bytes, by_owner FROM evictions ORDER BY id")
    assert [r["reason"] for r in rows] == ["gc"] * 5 + ["pressure"] * 4
    assert {r["by_owner"] for r in rows} == {me.owner_id}
    assert sum(r["bytes"] for r in rows) == 900
