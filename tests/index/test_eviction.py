"""LRU eviction: unlocked, unclaimed entries, least recently used first, down to a target; the
bytes stay counted until the files are unlinked."""

from __future__ import annotations

import time

import pytest
from wtfs_index import Index, Owner, Ranges

from tests.index.conftest import claim, filled, new_entry, raw


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


HOSTILE = ['quo"te', "com,ma", "br]ack[et", "new\nline", "tab\there", "back\\slash", "émoji 🎉"]


def test_a_pass_is_recorded_as_one_batch_read_back_newest_first(index: Index, me: Owner) -> None:
    names = [f"{n}-{h}" for n, h in enumerate(HOSTILE)]
    k = fill_all(index, me, names)
    order_by_atime(index, me, k)
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == k
    # one row for the pass, however many entries it took
    assert raw(index, "SELECT entries, bytes, reason FROM eviction_batches") == [
        (len(k), 100 * len(k), "gc")
    ]
    rows = index.evictions(100)
    assert [(r.key, r.path, r.item_id, r.bytes) for r in rows] == [
        (key, f"/{name}", f"item-{name}", 100)
        for key, name in reversed(list(zip(k, names, strict=True)))
    ]
    assert [r.key for r in index.evictions(2)] == [k[-1], k[-2]]  # the newest, decoded alone
    assert index.eviction_count() == len(k)


def test_evictions_read_batches_and_an_older_wtfs_rows_by_time(index: Index, me: Owner) -> None:
    a, b = fill_all(index, me, ["a", "b"])
    order_by_atime(index, me, [a, b])
    index.evict_lru(100, me.owner_id, "gc")  # a, in a batch
    raw(index, "UPDATE eviction_batches SET time = time - 10")
    # a row as a wtfs before batches writes one, made between the two passes
    raw(index, "INSERT INTO evictions (key, item_id, path, bytes, time, reason, by_owner)"
               " VALUES ('old', 'item-old', '/old', 7, ?, 'gc', 'older-wtfs')",
        (time.time() - 5,))  # fmt: skip
    index.evict_lru(0, me.owner_id, "gc")  # b
    assert [(r.key, r.by_owner) for r in index.evictions(10)] == [
        (b, me.owner_id),
        ("old", "older-wtfs"),
        (a, me.owner_id),
    ]
    assert [r.key for r in index.evictions(2)] == [b, "old"]
    assert index.eviction_count() == 3
