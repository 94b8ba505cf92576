"""The shared SQLite index: capacity, claims, locks, dead owners, LRU eviction, history."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from wtfs_index.index import CLAIM_LEASE, Index, TransferStatus
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges

from wtfs.cache.store import Store

FillEntry = Callable[..., None]  # the `fill_entry` fixture


def new_entry(index: Index, key: str, size: int, item_id: str | None = None) -> str:
    return index.ensure_entry(key, item_id or f"item-{key}", size, None, "girder:x", key).file_name


def claim(index: Index, key: str, start: int, end: int, owner: Owner, capacity: int) -> int:
    reservation = index.reserve(key, start, end, owner, capacity)
    assert reservation.claim_id is not None, reservation
    return reservation.claim_id


def claim_rows(index: Index) -> list[tuple[str, int, int, int, str]]:
    return [
        (r["key"], r["start"], r["end"], r["bytes"], r["owner_id"])
        for r in index.query("SELECT * FROM claims ORDER BY id")
    ]


def test_transfer_status_codes_are_seed_001s() -> None:
    assert {s.name: int(s) for s in TransferStatus} == {
        "INITIALIZING": 0,
        "QUEUED": 1,
        "TRANSFERRING": 2,
        "DONE": 3,
        "FAILED": 4,
    }


# -- reserve / commit -----------------------------------------------------------------------------


def test_a_reservation_claims_the_missing_bytes(index: Index, me: Owner) -> None:
    new_entry(index, "k", 1000)
    reservation = index.reserve("k", 0, 400, me, capacity=1000)
    assert reservation.claim_id is not None
    assert not reservation.busy and not reservation.no_room
    assert reservation.usage == 400
    assert index.usage() == 400
    assert claim_rows(index) == [("k", 0, 400, 400, me.owner_id)]


def test_reserving_an_unknown_key_answers_stale(index: Index, me: Owner) -> None:
    reservation = index.reserve("nope", 0, 10, me, capacity=100)
    assert reservation.stale and reservation.claim_id is None


def test_reserving_for_a_replaced_file_answers_stale(index: Index, me: Owner) -> None:
    old = new_entry(index, "k", 100)
    index.ensure_entry("k", "item-k", 200, None, "girder:x", "k")
    reservation = index.reserve("k", 0, 10, me, capacity=1000, file_name=old)
    assert reservation.stale and reservation.claim_id is None


def test_commit_merges_the_range_and_frees_the_claim(index: Index, me: Owner) -> None:
    new_entry(index, "k", 1000)
    first = claim(index, "k", 0, 100, me, 1000)
    assert index.commit_range(first, "k", 0, 100) == Ranges([(0, 100)])
    second = claim(index, "k", 100, 300, me, 1000)
    ranges = index.commit_range(second, "k", 100, 300)
    assert ranges == Ranges([(0, 300)])
    entry = index.get_entry("k")
    assert entry is not None
    assert entry.ranges == Ranges([(0, 300)])
    assert entry.present == 300
    assert claim_rows(index) == []
    assert index.usage() == 300


def test_committing_writes_the_transfer_progress_in_the_same_step(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    transfer = index.transfer_create(
        key="k",
        item_id="i",
        path="/k",
        session_id="s",
        owner_id=me.owner_id,
        source="girder:x",
        size=100,
        start_offset=0,
    )
    claim_id = claim(index, "k", 0, 60, me, 100)
    index.commit_range(claim_id, "k", 0, 60, transfer=(transfer, 60))
    [row] = index.query("SELECT transferred FROM transfers WHERE id = ?", [transfer])
    assert row["transferred"] == 60


def test_only_missing_bytes_are_reserved(index: Index, me: Owner) -> None:
    new_entry(index, "k", 1000)
    index.commit_range(claim(index, "k", 100, 200, me, 1000), "k", 100, 200)
    reservation = index.reserve("k", 0, 300, me, capacity=1000)
    assert reservation.claim_id is not None
    assert reservation.ranges == Ranges([(100, 200)])
    assert claim_rows(index)[0][3] == 200  # bytes: 0..100 and 200..300
    assert index.usage() == 100 + 200


def test_a_fully_present_span_needs_no_claim(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    index.commit_range(claim(index, "k", 0, 100, me, 100), "k", 0, 100)
    reservation = index.reserve("k", 10, 90, me, capacity=100)
    assert reservation.claim_id is None
    assert not reservation.busy and not reservation.no_room
    assert reservation.ranges == Ranges([(0, 100)])
    assert claim_rows(index) == []


def test_reserve_refuses_past_capacity(index: Index, me: Owner) -> None:
    new_entry(index, "a", 600)
    new_entry(index, "b", 600)
    index.commit_range(claim(index, "a", 0, 600, me, 1000), "a", 0, 600)
    refused = index.reserve("b", 0, 401, me, capacity=1000)
    assert refused.no_room
    assert refused.claim_id is None
    assert refused.usage == 600
    accepted = index.reserve("b", 0, 400, me, capacity=1000)
    assert accepted.claim_id is not None
    assert index.usage() == 1000


def test_claims_count_as_usage_for_capacity(index: Index, me: Owner) -> None:
    new_entry(index, "a", 1000)
    new_entry(index, "b", 1000)
    claim(index, "a", 0, 700, me, 1000)  # in flight, nothing committed yet
    assert index.usage() == 700
    refused = index.reserve("b", 0, 301, me, capacity=1000)
    assert refused.no_room
    assert refused.usage == 700


def test_an_overlapping_claim_of_another_live_owner_is_busy(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    new_entry(index, "k", 1000)
    claim(index, "k", 0, 500, other_live_owner, 10_000)
    busy = index.reserve("k", 400, 600, me, capacity=10_000)
    assert busy.busy
    assert busy.claim_id is None
    assert len(claim_rows(index)) == 1
    # A disjoint span of the same key is free to claim.
    assert index.reserve("k", 500, 600, me, capacity=10_000).claim_id is not None


def test_an_owners_own_overlapping_claim_is_not_busy(index: Index, me: Owner) -> None:
    new_entry(index, "k", 1000)
    claim(index, "k", 0, 500, me, 10_000)
    again = index.reserve("k", 100, 200, me, capacity=10_000)
    assert not again.busy
    assert again.claim_id is not None


def test_a_dead_owners_overlapping_claim_is_deleted_not_busy(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    new_entry(index, "k", 1000)
    claim(index, "k", 0, 1000, dead_owner, 1000)
    assert index.usage() == 1000
    # Its bytes no longer count: the whole file fits again.
    reservation = index.reserve("k", 0, 1000, me, capacity=1000)
    assert not reservation.busy and not reservation.no_room
    assert reservation.claim_id is not None
    assert claim_rows(index) == [("k", 0, 1000, 1000, me.owner_id)]


def test_an_expired_claim_of_a_live_owner_is_not_busy(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    new_entry(index, "k", 100)
    stale = claim(index, "k", 0, 100, other_live_owner, 1000)
    index.query("UPDATE claims SET expires = ? WHERE id = ?", [time.time() - 1, stale])
    reservation = index.reserve("k", 0, 100, me, capacity=100)
    assert reservation.claim_id is not None
    assert [r[4] for r in claim_rows(index)] == [me.owner_id]


def test_a_released_claim_frees_its_bytes(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    claim_id = claim(index, "k", 0, 100, me, 100)
    index.release_claim(claim_id)
    assert index.usage() == 0
    assert index.get_entry("k") is not None
    assert index.get_entry("k").present == 0  # type: ignore[union-attr]


def test_a_second_connection_sees_each_commit(
    index: Index, second_index: Index, me: Owner, other_live_owner: Owner
) -> None:
    new_entry(index, "k", 1000)
    assert second_index.get_entry("k") is not None
    claim_id = claim(index, "k", 0, 300, me, 1000)
    assert second_index.usage() == 300
    assert second_index.reserve("k", 200, 400, other_live_owner, 1000).busy
    index.commit_range(claim_id, "k", 0, 300)
    entry = second_index.get_entry("k")
    assert entry is not None and entry.ranges == Ranges([(0, 300)])
    # ... and the other way round.
    second_index.reserve("k", 300, 1000, other_live_owner, capacity=1000)
    assert index.reserve("k", 300, 1000, me, capacity=1000).busy
    assert index.usage() == 1000


def test_mark_complete_only_when_every_byte_is_present(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    index.commit_range(claim(index, "k", 0, 50, me, 100), "k", 0, 50)
    index.mark_complete("k")
    assert not index.get_entry("k").complete  # type: ignore[union-attr]
    index.commit_range(claim(index, "k", 50, 100, me, 100), "k", 50, 100)
    index.mark_complete("k")
    assert index.get_entry("k").complete  # type: ignore[union-attr]


def test_dropping_a_range_forgets_it_and_clears_complete(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    index.commit_range(claim(index, "k", 0, 100, me, 100), "k", 0, 100)
    index.mark_complete("k")
    assert index.drop_ranges("k", 20, 40) == Ranges([(0, 20), (40, 100)])
    entry = index.get_entry("k")
    assert entry is not None
    assert entry.present == 80 and not entry.complete


# -- entries --------------------------------------------------------------------------------------


def test_ensure_entry_returns_the_same_entry_for_the_same_size(index: Index) -> None:
    first = index.ensure_entry("k", "item", 100, "sha", "girder:x", "/a")
    again = index.ensure_entry("k", "item", 100, "sha", "girder:x", "/a")
    assert again.file_name == first.file_name
    assert first.size == 100 and first.present == 0 and first.ranges == Ranges()


def test_a_changed_size_gets_a_fresh_file_name_and_no_ranges(index: Index, me: Owner) -> None:
    old = new_entry(index, "k", 100)
    index.commit_range(claim(index, "k", 0, 100, me, 1000), "k", 0, 100)
    fresh = index.ensure_entry("k", "item-k", 200, None, "girder:x", "k")
    assert fresh.file_name != old
    assert fresh.size == 200
    assert fresh.present == 0 and fresh.ranges == Ranges()
    assert old not in index.file_names()


def test_a_late_commit_for_a_replaced_entry_does_not_mark_the_new_file_present(
    index: Index, second_index: Index, me: Owner
) -> None:
    # Daemon A is fetching [0, 50) of the 100-byte version into the old file...
    old = new_entry(index, "k", 100)
    claim_id = claim(index, "k", 0, 50, me, 1000)
    # ...when daemon B learns the source is now 200 bytes and replaces the entry.
    fresh = second_index.ensure_entry("k", "item-k", 200, None, "girder:x", "k")
    assert fresh.file_name != old
    assert fresh.replaced_file == old
    # A's bytes went to the OLD file; its commit must not vouch for the NEW file's bytes.
    index.commit_range(claim_id, "k", 0, 50, file_name=old)
    entry = index.get_entry("k")
    assert entry is not None and entry.file_name == fresh.file_name
    assert entry.ranges == Ranges()
    assert entry.present == 0


def test_every_entry_gets_a_distinct_file_name(index: Index) -> None:
    names = {new_entry(index, f"k{i}", 10) for i in range(50)}
    assert len(names) == 50
    assert index.file_names() == names


def test_deleting_an_entry_records_an_eviction(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    index.commit_range(claim(index, "k", 0, 70, me, 1000), "k", 0, 70)
    evicted = index.delete_entry("k", "checksum", me.owner_id)
    assert evicted is not None and evicted.bytes == 70 and evicted.key == "k"
    assert index.get_entry("k") is None
    assert index.delete_entry("k", "checksum", me.owner_id) is None
    [row] = index.query("SELECT reason, bytes FROM evictions")
    assert (row["reason"], row["bytes"]) == ("checksum", 70)


# -- locks ----------------------------------------------------------------------------------------


def test_locks_are_counted_per_item_and_released_by_id(index: Index, me: Owner) -> None:
    a = index.acquire_lock("item-1", "s", me, path="/a")
    b = index.acquire_lock("item-1", "s", me, path="/a")
    index.acquire_lock("item-2", "s", me)
    assert a != b
    assert index.lock_count("item-1") == 2
    assert index.lock_count("item-2") == 1
    index.release_lock(a)
    assert index.lock_count("item-1") == 1
    index.release_lock(b)
    assert index.lock_count("item-1") == 0
    assert index.lock_count("never-locked") == 0


# -- dead owners ----------------------------------------------------------------------------------


def test_reclaim_dead_removes_only_dead_owners_locks_and_claims(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    index.register_owner(me, "mount")
    index.register_owner(dead_owner, "mount")
    new_entry(index, "k", 1000)
    index.acquire_lock("item-k", "s", dead_owner)
    live_lock = index.acquire_lock("item-k", "s", me)
    claim(index, "k", 0, 100, dead_owner, 10_000)
    claim(index, "k", 500, 600, me, 10_000)
    counts = index.reclaim_dead()
    assert counts["locks"] == 1
    assert counts["claims"] == 1
    assert counts["owners"] == 1
    assert index.lock_count("item-k") == 1
    assert [r["id"] for r in index.query("SELECT id FROM locks")] == [live_lock]
    assert [r[4] for r in claim_rows(index)] == [me.owner_id]
    assert [r["owner_id"] for r in index.query("SELECT owner_id FROM owners")] == [me.owner_id]
    assert index.usage() == 100


def test_reclaim_dead_fails_a_dead_owners_unfinished_transfers(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    index.register_owner(me, "mount")
    index.register_owner(dead_owner, "mount")

    def transfer(owner: Owner, status: TransferStatus) -> int:
        tid = index.transfer_create(
            key="k",
            item_id="i",
            path="/k",
            session_id="s",
            owner_id=owner.owner_id,
            source="girder:x",
            size=10,
            start_offset=0,
        )
        index.transfer_update(tid, status=int(status), start_time=time.time())
        return tid

    stuck = transfer(dead_owner, TransferStatus.TRANSFERRING)
    queued = transfer(dead_owner, TransferStatus.QUEUED)
    done = transfer(dead_owner, TransferStatus.DONE)
    mine = transfer(me, TransferStatus.TRANSFERRING)
    counts = index.reclaim_dead()
    assert counts["transfers"] == 2
    rows = {r["id"]: r for r in index.query("SELECT * FROM transfers")}
    for tid in (stuck, queued):
        assert rows[tid]["status"] == TransferStatus.FAILED
        assert rows[tid]["error"]  # a cause a human can read
        assert "died" in rows[tid]["error"]
        assert rows[tid]["end_time"] is not None
    assert rows[done]["status"] == TransferStatus.DONE
    assert rows[done]["error"] is None
    assert rows[mine]["status"] == TransferStatus.TRANSFERRING


def test_reclaim_dead_drops_expired_claims(index: Index, me: Owner) -> None:
    new_entry(index, "k", 100)
    claim_id = claim(index, "k", 0, 100, me, 1000)
    index.query("UPDATE claims SET expires = ? WHERE id = ?", [time.time() - 1, claim_id])
    assert index.reclaim_dead()["claims"] == 1
    assert index.usage() == 0


def test_a_heartbeat_renews_claims(index: Index, me: Owner) -> None:
    index.register_owner(me, "mount")
    new_entry(index, "k", 100)
    claim_id = claim(index, "k", 0, 100, me, 1000)
    index.query("UPDATE claims SET expires = ? WHERE id = ?", [time.time() + 1, claim_id])
    index.heartbeat(me, {"hits": 3}, {})
    [row] = index.query("SELECT expires FROM claims")
    assert row["expires"] > time.time() + CLAIM_LEASE - 5
    [owner] = index.query("SELECT stats FROM owners")
    assert json.loads(owner["stats"]) == {"hits": 3}


def test_unregister_folds_the_owners_stats_into_the_totals(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    index.register_owner(me, "mount")
    index.register_owner(other_live_owner, "mount")
    index.heartbeat(me, {"hits": 3, "misses": 1}, {})
    index.heartbeat(other_live_owner, {"hits": 4, "bytes_from_network": 10}, {})
    new_entry(index, "k", 100)
    index.acquire_lock("item-k", "s", me)
    claim(index, "k", 0, 50, me, 1000)
    index.unregister_owner(me.owner_id)
    index.unregister_owner(other_live_owner.owner_id)
    [row] = index.query("SELECT v FROM meta WHERE k = 'totals'")
    assert json.loads(row["v"]) == {"hits": 7, "misses": 1, "bytes_from_network": 10}
    assert index.query("SELECT * FROM owners") == []
    assert index.lock_count("item-k") == 0
    assert index.usage() == 0


# -- LRU eviction ---------------------------------------------------------------------------------


def order_by_atime(index: Index, me: Owner, keys: list[str]) -> None:
    """keys[0] becomes the least recently used."""
    base = time.time() + 100
    index.heartbeat(me, {}, {key: base + n for n, key in enumerate(keys)})


def test_eviction_takes_the_least_recently_used_first_and_stops_at_the_target(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(6)]
    for key in keys:
        fill_entry(key, 100)
    order_by_atime(index, me, ["k3", "k1", "k5", "k0", "k2", "k4"])
    evicted = index.evict_lru(350, me.owner_id, "gc")
    assert [e.key for e in evicted] == ["k3", "k1", "k5"]
    assert sum(e.bytes for e in evicted) == 300
    assert index.usage() == 600  # still on disk until their files are unlinked
    assert evicted.unlink_id is not None
    index.finish_unlink(evicted.unlink_id)
    assert index.usage() == 300
    assert {k for k in keys if index.get_entry(k) is not None} == {"k0", "k2", "k4"}
    rows = index.query("SELECT key, reason, by_owner FROM evictions ORDER BY id")
    assert [(r["key"], r["reason"], r["by_owner"]) for r in rows] == [
        ("k3", "gc", me.owner_id),
        ("k1", "gc", me.owner_id),
        ("k5", "gc", me.owner_id),
    ]


def test_eviction_below_the_target_does_nothing(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 100)
    assert index.evict_lru(100, me.owner_id, "gc") == []
    assert index.get_entry("a") is not None


def test_eviction_never_takes_a_locked_item(index: Index, me: Owner, fill_entry: FillEntry) -> None:
    fill_entry("old", 100, item_id="locked-item")
    fill_entry("new", 100)
    order_by_atime(index, me, ["old", "new"])
    index.acquire_lock("locked-item", "s", me)
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == ["new"]
    assert index.get_entry("old") is not None


def test_eviction_never_takes_an_entry_with_a_claim(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("old", 100)
    fill_entry("new", 100)
    order_by_atime(index, me, ["old", "new"])
    index.drop_ranges("old", 50, 100)
    claim(index, "old", 50, 100, me, 10_000)  # refetching the dropped half
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == ["new"]
    assert index.get_entry("old") is not None


def test_eviction_breaks_atime_ties_by_key_and_skips_empty_entries(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    for key in ("b", "a", "c"):
        fill_entry(key, 100)
    new_entry(index, "empty", 100)  # opened, never read: nothing to free
    same = time.time() + 100
    index.heartbeat(me, {}, {"b": same, "a": same, "c": same, "empty": same - 50})
    evicted = index.evict_lru(100, me.owner_id, "gc")
    assert [e.key for e in evicted] == ["a", "b"]
    assert index.get_entry("empty") is not None


def test_a_large_eviction_is_complete_exact_and_in_lru_order(index: Index, me: Owner) -> None:
    # More entries than one read of the LRU walk fetches; inserted directly to stay fast.
    n = 10_000
    with index.transaction() as db:
        db.executemany(
            "INSERT INTO entries (key, item_id, file_name, size, source, present, atime, created)"
            " VALUES (?, ?, ?, 10, 'x', 10, ?, 0)",
            [(f"k{i:05d}", f"item-{i}", f"f/{i}", float(n - i)) for i in range(n)],
        )
    index.acquire_lock("item-9990", "s", me)  # the least recently used one is locked
    evicted = index.evict_lru(10 * (n - 9001), me.owner_id, "gc")
    expected = [f"k{i:05d}" for i in range(n - 1, -1, -1) if i != 9990][:9001]
    assert [e.key for e in evicted] == expected
    assert [e.file_name for e in evicted][:2] == ["f/9999", "f/9998"]
    rows = index.query("SELECT key, bytes FROM evictions ORDER BY id")
    assert [(r["key"], r["bytes"]) for r in rows] == [(k, 10) for k in expected]
    assert index.query("SELECT COUNT(*) FROM entries")[0][0] == n - 9001
    assert index.get_entry("k09990") is not None
    [batch] = index.query("SELECT bytes, files FROM unlinking")
    assert batch["bytes"] == 10 * 9001
    assert json.loads(batch["files"]) == [e.file_name for e in evicted]


def test_an_eviction_leaves_the_page_cache_size_as_it_found_it(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 100)
    [before] = index.query("PRAGMA cache_size")
    assert len(index.evict_lru(0, me.owner_id, "gc")) == 1
    assert index.query("PRAGMA cache_size") == [before]


def test_an_index_from_an_earlier_version_gets_the_lru_index_and_sheds_unused_ones(
    store: Store,
) -> None:
    Index(store.index_path).close()
    db = sqlite3.connect(store.index_path)  # as earlier versions left it
    db.execute("DROP INDEX entries_atime_key_present")
    db.execute("CREATE INDEX entries_atime ON entries(atime)")
    db.execute("CREATE INDEX entries_lru ON entries(atime, key)")
    db.execute("CREATE INDEX entries_item ON entries(item_id)")
    db.commit()
    db.close()
    index = Index(store.index_path)
    names = {r[0] for r in index.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    usage_plan = index.query("EXPLAIN QUERY PLAN SELECT SUM(present) FROM entries")
    lru_plan = index.query("EXPLAIN QUERY PLAN SELECT key FROM entries ORDER BY atime, key")
    index.close()
    assert "entries_atime_key_present" in names
    assert not names & {"entries_atime", "entries_lru", "entries_item"}  # superseded or unused
    for plan in (usage_plan, lru_plan):
        assert [r["detail"] for r in plan] == [
            "SCAN entries USING COVERING INDEX entries_atime_key_present"
        ]


def test_heartbeat_atimes_never_move_backwards(
    index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 10)
    index.heartbeat(me, {}, {"a": time.time() + 500})
    index.heartbeat(me, {}, {"a": 1.0})
    assert index.get_entry("a").atime > time.time() + 400  # type: ignore[union-attr]


# -- history --------------------------------------------------------------------------------------


def test_prune_history_keeps_at_most_the_newest_n_finished_transfers(
    index: Index, me: Owner
) -> None:
    ids = []
    for n in range(10):
        tid = index.transfer_create(
            key=f"k{n}",
            item_id="i",
            path="/p",
            session_id="s",
            owner_id=me.owner_id,
            source="girder:x",
            size=1,
            start_offset=0,
        )
        index.transfer_update(tid, status=int(TransferStatus.DONE), end_time=time.time())
        ids.append(tid)
    for n in range(7):
        index.record_failure("fetch", f"k{n}", "boom", me.owner_id)
    index.prune_history(max_count=4, max_age_days=30)
    kept = [r["id"] for r in index.query("SELECT id FROM transfers ORDER BY id")]
    assert kept == ids[-4:]
    assert len(index.query("SELECT id FROM failures")) == 4


def test_prune_history_keeps_unfinished_transfers(index: Index, me: Owner) -> None:
    running = index.transfer_create(
        key="k",
        item_id="i",
        path="/p",
        session_id="s",
        owner_id=me.owner_id,
        source="girder:x",
        size=1,
        start_offset=0,
    )
    index.transfer_update(running, status=int(TransferStatus.TRANSFERRING))
    for _ in range(3):
        tid = index.transfer_create(
            key="k",
            item_id="i",
            path="/p",
            session_id="s",
            owner_id=me.owner_id,
            source="girder:x",
            size=1,
            start_offset=0,
        )
        index.transfer_update(tid, status=int(TransferStatus.FAILED))
    index.prune_history(max_count=1, max_age_days=30)
    statuses = [r["status"] for r in index.query("SELECT status FROM transfers ORDER BY id")]
    assert statuses == [TransferStatus.TRANSFERRING, TransferStatus.FAILED]


def test_prune_history_drops_finished_transfers_older_than_the_age_limit(
    index: Index, me: Owner
) -> None:
    old = index.transfer_create(
        key="k",
        item_id="i",
        path="/p",
        session_id="s",
        owner_id=me.owner_id,
        source="girder:x",
        size=1,
        start_offset=0,
    )
    index.transfer_update(old, status=int(TransferStatus.DONE))
    index.query("UPDATE transfers SET created = ? WHERE id = ?", [time.time() - 3 * 86400, old])
    new = index.transfer_create(
        key="k",
        item_id="i",
        path="/p",
        session_id="s",
        owner_id=me.owner_id,
        source="girder:x",
        size=1,
        start_offset=0,
    )
    index.transfer_update(new, status=int(TransferStatus.DONE))
    removed = index.prune_history(max_count=100, max_age_days=1)
    assert removed == 1
    assert [r["id"] for r in index.query("SELECT id FROM transfers")] == [new]
