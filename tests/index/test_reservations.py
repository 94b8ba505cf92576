"""Reserving capacity for fetches (claims) and committing what was fetched."""

from __future__ import annotations

from wtfs_index import Index, Owner, Ranges
from wtfs_index.base import _look

from tests.index.conftest import (
    OpenIndex,
    backdate,
    claim,
    fetched,
    new_entry,
    new_transfer,
    past_server_grace,
)
from tests.support import owners


def claim_rows(index: Index) -> list[tuple[str, int, int, int, str]]:
    return [(c.key, c.start, c.end, c.bytes, c.owner_id) for c in index.claims()]


def test_a_reservation_claims_the_missing_bytes(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 1000).key
    reservation = index.reserve(k, 0, 400, me, capacity=1000)
    assert reservation.claim_id is not None
    assert not reservation.busy and not reservation.no_room and not reservation.stale
    assert reservation.usage == 400
    assert index.usage() == 400
    assert claim_rows(index) == [(k, 0, 400, 400, me.owner_id)]
    assert [c.id for c in index.claims(key=k)] == [reservation.claim_id]
    assert index.claims(key="girder:other@v1") == []


def test_reserving_an_unknown_key_answers_stale(index: Index, me: Owner) -> None:
    reservation = index.reserve("girder:nope@v1", 0, 10, me, capacity=100)
    assert reservation.stale and reservation.claim_id is None
    assert index.usage() == 0


def test_reserving_into_a_file_the_entry_no_longer_names_answers_stale(
    index: Index, me: Owner
) -> None:
    # Versioned entries: a new version is a new entry with its own file, and the old version
    # (unlocked) is dropped at once. A fetch still writing into the old file is told so.
    old = new_entry(index, "k", 100, version="v1")
    fresh = new_entry(index, "k", 200, version="v2")
    assert index.reserve(old.key, 0, 10, me, 1000, file_name=old.file_name).stale
    assert index.reserve(fresh.key, 0, 10, me, 1000, file_name=old.file_name).stale
    right = index.reserve(fresh.key, 0, 10, me, 1000, file_name=fresh.file_name)
    assert right.claim_id is not None and not right.stale


def test_commit_merges_the_range_and_frees_the_claim(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 1000).key
    first = claim(index, k, 0, 100, me, 1000)
    assert index.commit_range(first, k, 0, 100) == Ranges([(0, 100)])
    second = claim(index, k, 100, 300, me, 1000)
    assert index.commit_range(second, k, 100, 300) == Ranges([(0, 300)])
    entry = index.get_entry(k)
    assert entry is not None
    assert entry.ranges == Ranges([(0, 300)])
    assert entry.present == 300
    assert claim_rows(index) == []
    assert index.usage() == 300


def test_committing_writes_the_transfer_progress_in_the_same_step(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 100).key
    transfer = new_transfer(index, me, key=k)
    claim_id = claim(index, k, 0, 60, me, 100)
    index.commit_range(claim_id, k, 0, 60, transfer=(transfer, 60))
    [row] = index.transfers()
    assert (row.id, row.transferred) == (transfer, 60)


def test_only_missing_bytes_are_reserved(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 1000).key
    fetched(index, k, 100, 200, me)
    reservation = index.reserve(k, 0, 300, me, capacity=1000)
    assert reservation.claim_id is not None
    assert reservation.ranges == Ranges([(100, 200)])
    assert claim_rows(index) == [(k, 0, 300, 200, me.owner_id)]  # 0..100 and 200..300
    assert index.usage() == 100 + 200


def test_a_fully_present_span_needs_no_claim(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 100).key
    fetched(index, k, 0, 100, me)
    reservation = index.reserve(k, 10, 90, me, capacity=100)
    assert reservation.claim_id is None
    assert not reservation.busy and not reservation.no_room and not reservation.stale
    assert reservation.ranges == Ranges([(0, 100)])
    assert claim_rows(index) == []


def test_reserve_refuses_past_capacity(index: Index, me: Owner) -> None:
    a = new_entry(index, "a", 600).key
    b = new_entry(index, "b", 600).key
    index.commit_range(claim(index, a, 0, 600, me, 1000), a, 0, 600)
    refused = index.reserve(b, 0, 401, me, capacity=1000)
    assert refused.no_room
    assert refused.claim_id is None
    assert refused.usage == 600
    accepted = index.reserve(b, 0, 400, me, capacity=1000)
    assert accepted.claim_id is not None
    assert index.usage() == 1000


def test_claims_count_as_usage_for_capacity(index: Index, me: Owner) -> None:
    a = new_entry(index, "a", 1000).key
    b = new_entry(index, "b", 1000).key
    claim(index, a, 0, 700, me, 1000)  # in flight, nothing committed yet
    assert index.usage() == 700
    assert index.summary().reserved == 700
    refused = index.reserve(b, 0, 301, me, capacity=1000)
    assert refused.no_room
    assert refused.usage == 700


def test_an_overlapping_claim_of_another_live_owner_is_busy(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    claim(index, k, 0, 500, other_live_owner, 10_000)
    busy = index.reserve(k, 400, 600, me, capacity=10_000)
    assert busy.busy
    assert busy.claim_id is None
    assert len(claim_rows(index)) == 1
    # A disjoint span of the same key is free to claim.
    assert index.reserve(k, 500, 600, me, capacity=10_000).claim_id is not None


def test_an_owners_own_overlapping_claim_is_not_busy(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 1000).key
    claim(index, k, 0, 500, me, 10_000)
    again = index.reserve(k, 100, 200, me, capacity=10_000)
    assert not again.busy
    assert again.claim_id is not None


def test_a_dead_owners_overlapping_claim_is_deleted_not_busy(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    claim(index, k, 0, 1000, dead_owner, 1000)
    assert index.usage() == 1000
    # Its bytes no longer count: the whole file fits again.
    reservation = index.reserve(k, 0, 1000, me, capacity=1000)
    assert not reservation.busy and not reservation.no_room
    assert reservation.claim_id is not None
    assert claim_rows(index) == [(k, 0, 1000, 1000, me.owner_id)]


def test_a_claim_lives_as_long_as_its_owner_not_longer(
    open_test_index: OpenIndex, me: Owner
) -> None:
    # Claims no longer carry an expiry of their own (the old rule: "an expired claim of a live
    # owner is not busy"): a claim of an owner judged by lease is busy while that lease is
    # fresh, and is deleted, not busy, once the lease ran out.
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    other = owners.in_other_pidns("other-container")
    index.register_owner(other, "mount")
    k = new_entry(index, "k", 100).key
    claim(index, k, 0, 100, other, 1000)
    assert index.reserve(k, 0, 100, me, capacity=1000).busy
    backdate(index, "owners", "expires", 3600, owner_id=other.owner_id)
    reservation = index.reserve(k, 0, 100, me, capacity=100)
    assert reservation.claim_id is not None
    assert [c.owner_id for c in index.claims()] == [me.owner_id]


def test_a_claim_of_an_owner_without_a_row_is_not_busy(index: Index, me: Owner) -> None:
    # An owner that unregistered (or whose row was reclaimed) holds nothing any more.
    other = owners.this_process("gone")
    k = new_entry(index, "k", 100).key
    claim(index, k, 0, 100, other, 1000)
    reservation = index.reserve(k, 0, 100, me, capacity=100)
    assert reservation.claim_id is not None and not reservation.busy


def test_a_released_claim_frees_its_bytes(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 100).key
    claim_id = claim(index, k, 0, 100, me, 100)
    index.release_claim(claim_id)
    assert index.usage() == 0
    entry = index.get_entry(k)
    assert entry is not None and entry.present == 0


def test_a_second_connection_sees_each_commit(
    index: Index, second_index: Index, me: Owner, other_live_owner: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    assert second_index.get_entry(k) is not None
    claim_id = claim(index, k, 0, 300, me, 1000)
    assert second_index.usage() == 300
    assert second_index.reserve(k, 200, 400, other_live_owner, 1000).busy
    index.commit_range(claim_id, k, 0, 300)
    entry = second_index.get_entry(k)
    assert entry is not None and entry.ranges == Ranges([(0, 300)])
    # ... and the other way round.
    assert second_index.reserve(k, 300, 1000, other_live_owner, capacity=1000).claim_id
    assert index.reserve(k, 300, 1000, me, capacity=1000).busy
    assert index.usage() == 1000


def test_mark_complete_only_when_every_byte_is_present(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 100).key
    fetched(index, k, 0, 50, me)
    assert not index.mark_complete(k)
    assert not index.get_entry(k).complete  # type: ignore[union-attr]
    fetched(index, k, 50, 100, me)
    assert index.mark_complete(k)
    assert index.get_entry(k).complete  # type: ignore[union-attr]
    assert index.summary().complete == 1


def test_commit_and_reserve_commits_one_span_and_claims_the_next(index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 1000).key
    transfer = new_transfer(index, me, key=k)
    first = claim(index, k, 0, 400, me, 1000)
    ranges, following = index.commit_and_reserve(
        first, k, 0, 400, (transfer, 400), next_end=800, owner=me, capacity=1000
    )
    assert ranges == Ranges([(0, 400)])
    assert following.claim_id is not None and following.ranges == ranges
    assert following.usage == 800
    assert claim_rows(index) == [(k, 400, 800, 400, me.owner_id)]
    assert index.get_entry(k).present == 400  # type: ignore[union-attr]
    assert [t.transferred for t in index.transfers()] == [400]
    # The same two steps one at a time leave the same rows.
    ranges, last = index.commit_and_reserve(
        following.claim_id, k, 400, 800, None, next_end=1000, owner=me, capacity=1000
    )
    assert ranges == Ranges([(0, 800)]) and last.claim_id is not None
    assert index.commit_range(last.claim_id, k, 800, 1000) == Ranges([(0, 1000)])
    assert claim_rows(index) == [] and index.usage() == 1000


def test_commit_and_reserve_counts_usage_right_when_its_own_claim_is_gone(
    index: Index, me: Owner
) -> None:
    # The usage the next claim is judged by is read before the commit's writes and worked out
    # from what they do: a claim another process already deleted (it judged us dead) frees
    # no bytes, and the span's bytes count once, as present.
    k = new_entry(index, "k", 1000).key
    fetched(index, k, 800, 1000, me)
    first = claim(index, k, 0, 400, me, 1000)
    index.release_claim(first)
    ranges, following = index.commit_and_reserve(
        first, k, 0, 400, None, next_end=800, owner=me, capacity=1000
    )
    assert ranges == Ranges([(0, 400), (800, 1000)])
    assert following.claim_id is not None and following.usage == 1000 == index.usage()
    # The next span is present already: no claim, and nothing counted twice.
    whole, nothing_missing = index.commit_and_reserve(
        following.claim_id, k, 400, 800, None, next_end=1000, owner=me, capacity=999
    )
    assert whole == Ranges([(0, 1000)]) and nothing_missing.claim_id is None
    assert claim_rows(index) == [] and index.usage() == 1000


def test_commit_and_reserve_commits_even_when_the_next_span_is_refused(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    other = new_entry(index, "other", 1000).key
    first = claim(index, k, 0, 300, me, 1000)
    claim(index, k, 300, 600, other_live_owner, 10_000)
    ranges, busy = index.commit_and_reserve(first, k, 0, 300, None, next_end=600, owner=me,
                                            capacity=10_000)  # fmt: skip
    assert ranges == Ranges([(0, 300)]) and busy.busy and busy.claim_id is None
    second = claim(index, other, 0, 300, me, 10_000)
    ranges, full = index.commit_and_reserve(
        second, other, 0, 300, None, next_end=700, owner=me, capacity=900
    )
    # 300 + 300 present and 300 claimed by the other owner: 400 more do not fit in 900.
    assert ranges == Ranges([(0, 300)]) and full.no_room and full.usage == 900
    assert index.usage() == 900
    assert claim_rows(index) == [(k, 300, 600, 300, other_live_owner.owner_id)]


def test_commit_and_reserve_into_a_file_the_entry_does_not_name_answers_stale(
    index: Index, me: Owner
) -> None:
    # A fetch writing into a file its entry no longer names (replaced while the fetch ran)
    # commits nothing and claims nothing, and its own claim is gone all the same.
    entry = new_entry(index, "k", 100)
    first = claim(index, entry.key, 0, 50, me, 1000)
    ranges, reservation = index.commit_and_reserve(
        first, entry.key, 0, 50, None, next_end=100, owner=me, capacity=1000,
        file_name="00/not-its-file",
    )  # fmt: skip
    assert ranges == Ranges() and reservation.stale and reservation.claim_id is None
    assert claim_rows(index) == []
    assert index.get_entry(entry.key).present == 0  # type: ignore[union-attr]
    gone, reservation = index.commit_and_reserve(
        first, "girder:nope@v1", 0, 50, None, next_end=100, owner=me, capacity=1000
    )
    assert gone == Ranges() and reservation.stale


def test_a_dead_owners_claim_no_longer_counts_once_reserve_deleted_it(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    # The reservation reads the usage and the overlapping claims in one statement: the usage
    # it judges by and reports must not count the dead claim it deletes.
    k = new_entry(index, "k", 1000).key
    other = new_entry(index, "other", 1000).key
    claim(index, k, 800, 1000, dead_owner, 10_000)
    claim(index, other, 0, 200, dead_owner, 10_000)  # dead too, but not in the way: it stays
    first = claim(index, k, 600, 800, me, 10_000)
    # After the commit: 200 present + 200 + 200 dead = 600, the capacity; 800..1000 fits only
    # once its dead claim is deleted and its bytes no longer count.
    ranges, reservation = index.commit_and_reserve(
        first, k, 600, 800, None, next_end=1000, owner=me, capacity=600
    )
    assert ranges == Ranges([(600, 800)])
    assert not reservation.no_room and reservation.claim_id is not None
    assert reservation.usage == 600
    assert claim_rows(index) == [
        (other, 0, 200, 200, dead_owner.owner_id),
        (k, 800, 1000, 200, me.owner_id),
    ]


def test_a_write_that_fails_part_way_leaves_nothing_and_the_next_call_works(
    index: Index, me: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    try:
        with index._write() as tx:
            tx.execute("DELETE FROM claims")
            index._reserve(tx, _look(tx, k, 0, 100), k, Ranges(), False, 0, 100, me, 1000, 0)
            raise RuntimeError("our own bug, mid-transaction")
    except RuntimeError:
        pass
    assert claim_rows(index) == []
    assert index.reserve(k, 0, 100, me, capacity=1000).claim_id is not None
    assert len(claim_rows(index)) == 1
