"""Prefetch records (`wtfs prefetch`) and content dedup, on both backends: a request asked of a
mount is handed to one daemon; progress, per-file outcomes, cancel and the end are recorded;
a runner that dies leaves its run FAILED; an entry adopts the file of a complete entry with the
same contents only while that is safe."""

from __future__ import annotations

import dataclasses

from wtfs_index import EntryRow, Index, LockKind, NewEntry, Owner, PrefetchState, Ranges, entry_key

from tests.index.conftest import claim, fetched, filled


def test_a_request_of_a_mount_is_handed_to_its_daemon_once(index: Index, me: Owner) -> None:
    asked = index.prefetch_create(session_id="s", paths=["/raw", "/a.csv"], mountpoint="/mnt")
    other = index.prefetch_create(session_id="s", paths=[], mountpoint="/elsewhere")
    row = index.get_prefetch(asked)
    assert row is not None
    assert (row.state, row.mountpoint, row.paths, row.owner_id) == (
        PrefetchState.REQUESTED, "/mnt", ["/raw", "/a.csv"], None,
    )  # fmt: skip
    [claimed] = index.prefetch_claim("/mnt", me.owner_id)
    assert (claimed.id, claimed.state, claimed.owner_id) == (asked, "running", me.owner_id)
    assert claimed.started is not None
    assert index.prefetch_claim("/mnt", me.owner_id) == []
    other_row = index.get_prefetch(other)
    assert other_row is not None and other_row.state == PrefetchState.REQUESTED


def test_progress_files_and_the_end_are_recorded(index: Index, me: Owner) -> None:
    run = index.prefetch_create(session_id="s", paths=["/"], owner_id=me.owner_id)
    index.prefetch_plan(run, [("/a", 100, 0), ("/b", 50, 50), ("/c", 10, 0), ("/d", 0, -1)])
    row = index.get_prefetch(run)
    assert row is not None and row.state == PrefetchState.RUNNING
    assert (row.files_total, row.files_done, row.bytes_total, row.bytes_done) == (4, 1, 160, 50)
    assert index.prefetch_progress(run, bytes_done=90, bytes_fetched=40, current="/a") is False
    index.prefetch_file_done(run, "/a", 100)
    index.prefetch_file_done(run, "/a", 100)  # once only
    index.prefetch_file_done(run, "/c", 0, "c: 404")
    index.prefetch_finish(run, PrefetchState.FAILED, "1 of 4 files failed")
    row = index.get_prefetch(run)
    assert row is not None
    assert (row.files_done, row.files_failed, row.bytes_done, row.bytes_fetched) == (2, 1, 90, 40)
    assert (row.state, row.error, row.current) == ("failed", "1 of 4 files failed", None)
    assert row.ended is not None
    files = {f.path: (f.state, f.fetched, f.error) for f in index.prefetch_files(run)}
    assert files == {
        "/a": ("done", 100, None),
        "/b": ("done", 0, None),
        "/c": ("failed", 0, "c: 404"),
        "/d": ("pending", 0, None),
    }


def test_a_cancel_reaches_the_runner_and_ends_a_request_not_taken_up(
    index: Index, second_index: Index, me: Owner
) -> None:
    running = index.prefetch_create(session_id="s", paths=["/"], owner_id=me.owner_id)
    waiting = index.prefetch_create(session_id="s", paths=["/"], mountpoint="/mnt")
    assert second_index.prefetch_cancel(running)
    assert index.prefetch_progress(running, bytes_done=0, bytes_fetched=0, current=None)
    second_index.prefetch_cancel(waiting)
    row = index.get_prefetch(waiting)
    assert row is not None and row.state == PrefetchState.CANCELLED
    assert index.prefetch_claim("/mnt", me.owner_id) == []
    index.prefetch_finish(running, PrefetchState.CANCELLED)
    assert not second_index.prefetch_cancel(running)


def test_status_lists_runs_not_ended_and_recent_ones(index: Index, me: Owner) -> None:
    ended = index.prefetch_create(session_id="s", paths=["/"], owner_id=me.owner_id)
    index.prefetch_finish(ended, PrefetchState.DONE)
    live = index.prefetch_create(session_id="t", paths=["/"], owner_id=me.owner_id)
    row = index.get_prefetch(ended)
    assert row is not None and row.ended is not None
    assert [r.id for r in index.prefetches()] == [ended, live]
    assert [r.id for r in index.prefetches(ended_after=row.ended + 1)] == [live]
    assert [r.id for r in index.prefetches(session_id="s")] == [ended]


def test_a_run_whose_runner_died_is_failed_by_the_next_reclaim(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    run = index.prefetch_create(session_id="s", paths=["/"], owner_id=dead_owner.owner_id)
    mine = index.prefetch_create(session_id="s", paths=["/"], owner_id=me.owner_id)
    index.reclaim_dead(me)
    row, still = index.get_prefetch(run), index.get_prefetch(mine)
    assert row is not None and still is not None
    assert row.state == PrefetchState.FAILED and row.error is not None and "died" in row.error
    assert still.state == PrefetchState.RUNNING


# -- content dedup --------------------------------------------------------------------------------


def hashed_entry(
    index: Index, name: str, size: int, content_hash: str | None = "sha512:ab"
) -> EntryRow:
    source_key = f"girder:{name}"
    new = NewEntry(entry_key(source_key, "v1"), source_key, "v1", f"item-{name}", size,
                   "girder:x", f"/{name}", checksum=content_hash,
                   content_hash=content_hash)  # fmt: skip
    return index.ensure_entry(new, by_owner="test")


def test_a_complete_entry_with_the_same_contents_is_found_and_adopted(
    index: Index, me: Owner
) -> None:
    donor = hashed_entry(index, "orig", 100)
    assert index.dedup_donor("sha512:ab", 100, "girder:copy@v1") is None  # not complete yet
    fetched(index, donor.key, 0, 100, me)
    assert index.mark_complete(donor.key)
    copy = hashed_entry(index, "copy", 100)
    assert index.dedup_donor("sha512:ab", 99, copy.key) is None  # another size
    assert index.dedup_donor("sha512:cd", 100, copy.key) is None  # another hash
    found = index.dedup_donor("sha512:ab", 100, copy.key)
    assert found is not None and found.key == donor.key
    adopted = index.adopt_complete(copy.key, donor.key, me.owner_id)
    assert adopted is not None
    assert (adopted.complete, adopted.present, adopted.ranges) == (True, 100, Ranges([(0, 100)]))
    assert adopted.file_name == copy.file_name  # its own name (a hard link), its own row
    assert adopted.ranges.gen > copy.ranges.gen
    assert index.summary().complete == 2
    assert index.adopt_complete(copy.key, donor.key, me.owner_id) is None  # once


def test_no_adoption_when_it_would_not_be_safe(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    donor = filled(index, "orig", 100, me)  # no content hash: never a donor
    assert index.dedup_donor("sha512:ab", 100, "x") is None
    donor = hashed_entry(index, "orig2", 100)
    fetched(index, donor.key, 0, 100, me)
    index.mark_complete(donor.key)
    # Another process holds the new entry open: it may have its own (empty) file open.
    held = hashed_entry(index, "held", 100)
    index.acquire_lock(held.item_id, "s", other_live_owner, entry_key=held.key,
                       kind=LockKind.READ)  # fmt: skip
    assert index.adopt_complete(held.key, donor.key, me.owner_id) is None
    # A fetch of the new entry is in flight.
    busy = hashed_entry(index, "busy", 100)
    claim(index, busy.key, 0, 10, me, 1 << 30)
    assert index.adopt_complete(busy.key, donor.key, me.owner_id) is None
    # The donor went meanwhile.
    fresh = hashed_entry(index, "fresh", 100)
    eviction = index.delete_entry(donor.key, "test", me.owner_id)
    assert eviction.unlink_id is not None
    assert index.adopt_complete(fresh.key, donor.key, me.owner_id) is None
    row = index.get_entry(fresh.key)
    assert row is not None and dataclasses.replace(row, atime=0) == dataclasses.replace(
        fresh, atime=0, unlink=None
    )
