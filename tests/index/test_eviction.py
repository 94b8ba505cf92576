"""LRU eviction: unlocked, unclaimed entries, least recently used first, down to a target; the
bytes stay counted until the files are unlinked."""

from __future__ import annotations

import time

import pytest
from wtfs_index import Index, Owner, Ranges

from tests.index.conftest import claim, filled, new_entry


def order_by_atime(index: Index, me: Owner, keys: list[str]) -> None:
    """keys[0] becomes the least recently used."""
    base = time.time() + 100
    index.heartbeat(me, {}, {key: base + n for n, key in enumerate(keys)})


def fill_all(index: Index, me: Owner, names: list[str], size: int = 100) -> list[str]:
    return [filled(index, name, size, me).key for name in names]


def test_eviction_takes_the_least_recently_used_first_and_stops_at_the_target(
    index: Index, me: Owner
) -> None:
    k = fill_all(index, me, [f"k{i}" for i in range(6)])
    order_by_atime(index, me, [k[3], k[1], k[5], k[0], k[2], k[4]])
    evicted = index.evict_lru(350, me.owner_id, "gc")
    assert [e.key for e in evicted] == [k[3], k[1], k[5]]
    assert evicted.freed == 300
    assert index.usage() == 600  # still on disk until their files are unlinked
    assert index.summary().unlinking == 300
    assert evicted.unlink_id is not None
    index.finish_unlink(evicted.unlink_id)
    assert index.usage() == 300
    assert {e.key for e in index.entries()} == {k[0], k[2], k[4]}
    rows = reversed(index.evictions(10))
    assert [(r.key, r.reason, r.by_owner, r.bytes) for r in rows] == [
        (k[3], "gc", me.owner_id, 100),
        (k[1], "gc", me.owner_id, 100),
        (k[5], "gc", me.owner_id, 100),
    ]
    assert index.eviction_count() == 3


def test_eviction_below_the_target_does_nothing(index: Index, me: Owner) -> None:
    [a] = fill_all(index, me, ["a"])
    evicted = index.evict_lru(100, me.owner_id, "gc")
    assert evicted == [] and evicted.unlink_id is None
    assert index.get_entry(a) is not None


def test_eviction_never_takes_a_locked_item_or_entry(index: Index, me: Owner) -> None:
    item_locked = filled(index, "item-locked", 100, me, item_id="locked-item").key
    entry_locked = filled(index, "entry-locked", 100, me).key
    held = filled(index, "held", 100, me).key
    free = filled(index, "free", 100, me).key
    order_by_atime(index, me, [item_locked, entry_locked, held, free])
    index.acquire_lock("locked-item", "s", me)  # every entry of the item
    index.acquire_lock("i", "s", me, entry_key=entry_locked)
    index.acquire_lock("i", "s", me, entry_key=held, kind="hold")
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == [free]
    assert {e.key for e in index.entries()} == {item_locked, entry_locked, held}


def test_eviction_never_takes_an_entry_with_a_claim(index: Index, me: Owner) -> None:
    old, new = fill_all(index, me, ["old", "new"])
    order_by_atime(index, me, [old, new])
    index.set_ranges(old, Ranges([(0, 50)]), "damaged: short file", me.owner_id)
    claim(index, old, 50, 100, me, 10_000)  # refetching the lost half
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == [new]
    assert index.get_entry(old) is not None


def test_eviction_breaks_atime_ties_by_key_and_skips_empty_entries(index: Index, me: Owner) -> None:
    b, a, c = fill_all(index, me, ["b", "a", "c"])
    empty = new_entry(index, "empty", 100).key  # opened, never read: nothing to free
    same = time.time() + 100
    index.heartbeat(me, {}, {b: same, a: same, c: same, empty: same - 50})
    evicted = index.evict_lru(100, me.owner_id, "gc")
    assert [e.key for e in evicted] == [a, b]
    assert index.get_entry(empty) is not None


def test_heartbeat_atimes_never_move_backwards(index: Index, me: Owner) -> None:
    [a] = fill_all(index, me, ["a"], 10)
    index.heartbeat(me, {}, {a: time.time() + 500})
    index.heartbeat(me, {}, {a: 1.0})
    assert index.get_entry(a).atime > time.time() + 400  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_large_eviction_is_complete_exact_and_in_lru_order(index: Index, me: Owner) -> None:
    # More entries than one read of the LRU walk fetches (4096): each fetched in turn, so the
    # first made is the least recently used.
    n = 4_200
    keys = [filled(index, f"k{i:05d}", 10, me, item_id=f"item-{i}").key for i in range(n)]
    index.acquire_lock("item-1", "s", me)  # one of the least recently used is locked
    evicted = index.evict_lru(10 * 200, me.owner_id, "gc")
    expected = [k for i, k in enumerate(keys) if i != 1][: n - 200]
    assert [e.key for e in evicted] == expected
    assert evicted.freed == 10 * (n - 200)
    assert [e.bytes for e in evicted] == [10] * (n - 200)
    assert len(index.entries()) == 200
    assert index.get_entry(keys[1]) is not None
    assert index.eviction_count() == n - 200
    assert [r.key for r in reversed(index.evictions(n))] == expected
    [batch] = index.unlink_batches()
    assert batch.id == evicted.unlink_id and batch.punches == []
    assert batch.files == [e.file_name for e in evicted]
    assert index.summary().unlinking == 10 * (n - 200)
