"""The capacity bound holds whoever reserves: several connections, several threads each."""

from __future__ import annotations

import random
import threading
import time

from wtfs_index import Index, Owner, Ranges

from tests.index.conftest import (
    OpenIndex,
    fetched,
    filled,
    forget_present_total,
    new_entry,
    present_sums,
)


def test_no_reservations_from_several_connections_exceed_capacity(
    open_test_index: OpenIndex, me: Owner, other_live_owner: Owner
) -> None:
    """Threads on two connections reserve, commit, release and evict at once for a couple of
    seconds; after every reservation, usage as either connection reads it is within capacity."""
    capacity = 10_000
    connections = [open_test_index(), open_test_index()]
    keys = [new_entry(connections[0], f"k{n}", 4_000).key for n in range(12)]
    failures: list[str] = []
    counts = {"granted": 0, "no_room": 0}
    deadline = time.monotonic() + 2.5

    def work(seed: int) -> None:
        rng = random.Random(seed)
        index = connections[seed % 2]
        owner = (me, other_live_owner)[seed % 2]
        try:
            while time.monotonic() < deadline and not failures:
                key = rng.choice(keys)
                start = rng.randrange(0, 4_000, 500)
                end = min(4_000, start + rng.choice((500, 1_000, 2_000)))
                reservation = index.reserve(key, start, end, owner, capacity)
                usage = index.usage()
                if reservation.usage > capacity or usage > capacity:
                    failures.append(f"{reservation} then usage() = {usage} > {capacity}")
                if reservation.claim_id is not None:
                    counts["granted"] += 1
                    if rng.random() < 0.8:
                        index.commit_range(reservation.claim_id, key, start, end)
                    else:
                        index.release_claim(reservation.claim_id)
                elif reservation.no_room:
                    counts["no_room"] += 1
                    eviction = index.evict_lru(capacity // 2, owner.owner_id, "gc")
                    if eviction.unlink_id is not None:
                        index.finish_unlink(eviction.unlink_id)
                    # Evicted entries come back empty, as a reopened file would.
                    for n, gone in enumerate(keys):
                        if index.get_entry(gone) is None:
                            new_entry(index, f"k{n}", 4_000)
        except Exception as exc:  # a thread's failure must fail the test
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert counts["granted"] > 20 and counts["no_room"] > 5  # the store did fill up, often
    for index in connections:
        assert index.usage() <= capacity
        summary = index.summary()
        assert summary.reserved == 0 and summary.unlinking == 0
        kept, summed = present_sums(index)
        assert kept == summed == summary.present


def test_the_present_total_follows_every_write_of_the_entries(index: Index, me: Owner) -> None:
    """`usage` reads the store's present bytes from one row kept by triggers, not from a sum of
    the entries: after each kind of write (a commit, a window's drop, an eviction, a deletion,
    a forgotten file, a version that replaces another) the row is the sum."""

    def check() -> int:
        kept, summed = present_sums(index)
        assert kept == summed
        return kept

    assert check() == 0
    a = filled(index, "a", 1000, me)
    b = filled(index, "b", 500, me)
    fetched(index, new_entry(index, "c", 800).key, 100, 300, me)
    assert check() == 1700 == index.usage()
    index.set_ranges(a.key, Ranges([(0, 600)]), "fsck", me.owner_id)
    assert check() == 1300
    gone = index.delete_entry(b.key, "checksum", me.owner_id)
    assert gone.unlink_id is not None
    index.finish_unlink(gone.unlink_id)
    assert check() == 800
    filled(index, "a", 1000, me, version="v2")  # replaces a's 600 bytes (unlocked: at once)
    assert check() == 1200
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert evicted.unlink_id is not None
    index.finish_unlink(evicted.unlink_id)
    assert check() == 0
    d = filled(index, "d", 300, me)
    assert index.forget_missing([d.file_name]) == 1
    assert check() == 0


def test_an_index_from_before_the_present_total_gets_it_summed_on_opening(
    index: Index, open_test_index: OpenIndex, me: Owner
) -> None:
    a = filled(index, "a", 1000, me)
    filled(index, "b", 500, me)
    forget_present_total(index)
    index.set_ranges(a.key, Ranges([(0, 400)]), "fsck", me.owner_id)  # no trigger to see it
    reopened = open_test_index()
    assert present_sums(reopened) == (900, 900)
    assert reopened.usage() == 900
    filled(reopened, "c", 200, me)
    assert present_sums(reopened) == (1100, 1100)
    open_test_index()  # a second opening sums nothing again, and makes no second trigger
    filled(reopened, "d", 100, me)
    assert present_sums(reopened) == (1200, 1200)
