"""The capacity bound holds whoever reserves: several connections, several threads each."""

from __future__ import annotations

import random
import threading
import time

from wtfs_index import Owner

from tests.index.conftest import OpenIndex, new_entry


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
