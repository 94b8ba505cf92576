"""Entries: one per version of a source, each with its own store file; a new version supersedes
the older ones, which go once nothing holds them; removals keep their bytes counted until the
files are gone."""

from __future__ import annotations

from wtfs_index import Index, Owner, Ranges

from tests.index.conftest import claim, fetched, filled, new_entry


def test_ensure_entry_returns_the_same_entry_for_the_same_version(index: Index) -> None:
    first = new_entry(index, "k", 100)
    again = new_entry(index, "k", 100)
    assert again.file_name == first.file_name
    assert (first.key, first.source_key, first.version) == ("girder:k@v1", "girder:k", "v1")
    assert first.size == 100 and first.present == 0 and first.ranges == Ranges()
    assert not first.superseded and not first.windowed and not first.complete
    assert first.unlink is None and again.unlink is None
    assert index.get_entry(first.key) == first


def test_every_entry_gets_a_distinct_file_name(index: Index) -> None:
    names = {new_entry(index, f"k{i}", 10).file_name for i in range(50)}
    assert len(names) == 50
    assert index.file_names() == names
    assert [e.key for e in index.entries()] == sorted(f"girder:k{i}@v1" for i in range(50))


def test_a_new_version_supersedes_the_old_and_an_unlocked_old_one_is_dropped_at_once(
    index: Index, me: Owner
) -> None:
    # Was "a changed size gets a fresh file name and no ranges": entries are now versioned, so
    # a new version is a new entry, and the old one, if nothing holds it, is dropped at once.
    old = filled(index, "k", 100, me)
    fresh = new_entry(index, "k", 200, version="v2", by_owner=me.owner_id)
    assert fresh.file_name != old.file_name
    assert (fresh.size, fresh.present, fresh.ranges) == (200, 0, Ranges())
    assert index.get_entry(old.key) is None
    assert old.file_name not in index.file_names()
    # The result names the old file for the caller to unlink; its bytes count until then.
    assert fresh.unlink is not None and fresh.unlink.unlink_id is not None
    assert [(e.key, e.file_name, e.bytes) for e in fresh.unlink] == [(old.key, old.file_name, 100)]
    assert index.usage() == 100
    index.finish_unlink(fresh.unlink.unlink_id)
    assert index.usage() == 0
    [eviction] = index.evictions(10)
    assert (eviction.key, eviction.reason, eviction.bytes, eviction.by_owner) == (
        old.key,
        "replaced",
        100,
        me.owner_id,
    )


def test_a_locked_old_version_stays_until_its_last_lock_goes(index: Index, me: Owner) -> None:
    old = filled(index, "k", 100, me)
    first = index.acquire_lock(old.item_id, "s", me, entry_key=old.key)
    second = index.acquire_lock(old.item_id, "s", me, entry_key=old.key)
    fresh = new_entry(index, "k", 100, version="v2")
    assert fresh.unlink is None  # nothing could be dropped yet
    kept = index.get_entry(old.key)
    assert kept is not None and kept.superseded and kept.present == 100
    assert not index.get_entry(fresh.key).superseded  # type: ignore[union-attr]
    assert index.release_lock(first) == []
    assert index.get_entry(old.key) is not None
    gone = index.release_lock(second)
    assert [(e.key, e.file_name, e.bytes) for e in gone] == [(old.key, old.file_name, 100)]
    assert gone.unlink_id is not None
    assert index.get_entry(old.key) is None
    assert index.usage() == 100  # until its file is unlinked
    index.finish_unlink(gone.unlink_id)
    assert index.usage() == 0


def test_a_late_commit_into_the_old_file_does_not_mark_the_new_version_present(
    index: Index, second_index: Index, me: Owner
) -> None:
    # Daemon A is fetching [0, 50) of version 1 into its file...
    old = new_entry(index, "k", 100)
    claim_id = claim(index, old.key, 0, 50, me, 1000)
    # ...when daemon B learns the source changed and makes version 2.
    fresh = new_entry(second_index, "k", 100, version="v2")
    assert fresh.file_name != old.file_name
    assert index.get_entry(old.key).superseded  # type: ignore[union-attr]  # claimed: kept
    # A's bytes went to the OLD file; its commit must not vouch for the NEW file's bytes.
    index.commit_range(claim_id, old.key, 0, 50, file_name=old.file_name)
    entry = index.get_entry(fresh.key)
    assert entry is not None and entry.file_name == fresh.file_name
    assert entry.ranges == Ranges() and entry.present == 0
    # A commit naming the old file under the new key counts for nothing either.
    assert index.commit_range(claim_id, fresh.key, 0, 50, file_name=old.file_name) == Ranges()
    assert index.get_entry(fresh.key).present == 0  # type: ignore[union-attr]


def test_deleting_an_entry_records_an_eviction_and_keeps_its_bytes_until_unlinked(
    index: Index, me: Owner
) -> None:
    k = new_entry(index, "k", 100).key
    fetched(index, k, 0, 70, me)
    claim(index, k, 70, 100, me, 1000)
    evicted = index.delete_entry(k, "checksum", me.owner_id)
    assert [(e.key, e.bytes) for e in evicted] == [(k, 70)]
    assert evicted.unlink_id is not None
    assert index.get_entry(k) is None
    assert index.claims() == []  # its fetches in flight have nothing to land in
    assert index.usage() == 70
    index.finish_unlink(evicted.unlink_id)
    assert index.usage() == 0
    assert index.delete_entry(k, "checksum", me.owner_id) == []
    [row] = index.evictions(10)
    assert (row.reason, row.bytes) == ("checksum", 70)


def test_fewer_ranges_replace_the_entrys_and_clear_complete(index: Index, me: Owner) -> None:
    # Was "dropping a range forgets it and clears complete" (drop_ranges): fsck now replaces an
    # entry's ranges with what the file really holds.
    k = filled(index, "k", 100, me).key
    assert index.mark_complete(k)
    index.set_ranges(k, Ranges([(0, 20), (40, 100)]), "damaged: short file", me.owner_id)
    entry = index.get_entry(k)
    assert entry is not None
    assert entry.ranges == Ranges([(0, 20), (40, 100)])
    assert entry.present == 80 and not entry.complete
    assert index.usage() == 80
    [row] = index.evictions(10)
    assert (row.key, row.reason, row.bytes) == (k, "damaged: short file", 20)


def test_only_entries_with_bytes_are_stored_and_missing_files_are_forgotten(
    index: Index, me: Owner
) -> None:
    lost = filled(index, "lost", 10, me)
    kept = filled(index, "kept", 10, me)
    empty = new_entry(index, "empty", 10)
    assert {e.key for e in index.stored_entries()} == {lost.key, kept.key}
    assert index.forget_missing([lost.file_name, "zz/never-existed"]) == 1
    assert index.forget_missing([]) == 0
    assert {e.key for e in index.entries()} == {kept.key, empty.key}
    assert index.usage() == 10


def test_a_content_hash_learnt_later_is_kept(index: Index) -> None:
    k = new_entry(index, "k", 10).key
    index.set_content_hash(k, "sha512:abc")
    assert index.get_entry(k).content_hash == "sha512:abc"  # type: ignore[union-attr]


def test_a_superseded_version_goes_when_its_last_lock_goes_however_it_goes(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    """Released one by one, by session, with its owner's clean exit, or reclaimed from a dead
    owner: in each case the old version is dropped then, its bytes counted until unlinked."""
    reader = Owner.current("reader")
    index.register_owner(reader, "mount")
    by_lock = filled(index, "by-lock", 10, me)
    by_session = filled(index, "by-session", 10, me)
    by_exit = filled(index, "by-exit", 10, me)
    by_death = filled(index, "by-death", 10, me)
    lock = index.acquire_lock("i", "s1", me, entry_key=by_lock.key)
    index.acquire_lock("i", "s2", me, entry_key=by_session.key)
    index.acquire_lock("i", "s3", reader, entry_key=by_exit.key)
    index.acquire_lock("i", "s4", dead_owner, entry_key=by_death.key)
    for old in (by_lock, by_session, by_exit, by_death):
        assert new_entry(index, old.source_key.split(":")[1], 10, version="v2").unlink is None
    released = index.release_lock(lock)  # its caller unlinks the file: not handed out
    assert [e.file_name for e in released] == [by_lock.file_name]
    assert index.release_locks(session_id="s2") == 1
    index.unregister_owner(reader.owner_id)
    assert index.reclaim_dead(me)["locks"] == 1
    left = {e.key for e in index.entries() if e.superseded}
    assert left == set()
    # Their bytes stay counted until someone unlinks their files: the batches nobody carries
    # out are handed out to `me`, once.
    assert index.summary().unlinking == 40
    batches = index.orphan_unlinks(me)
    assert sorted(f for _, files, _ in batches for f in files) == sorted(
        e.file_name for e in (by_session, by_exit, by_death)
    )
    assert index.orphan_unlinks(me) == []
    assert index.orphan_unlinks(me, [released.unlink_id or 0]) == [
        (released.unlink_id, [by_lock.file_name], [])
    ]


def test_unlinking_batches_are_listed_whoever_owns_them_until_finished(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    """`wtfs fsck` reads every batch to judge which were left behind, adopting none."""
    a = filled(index, "a", 10, me)
    b = filled(index, "b", 20, me)
    by_me = index.delete_entry(a.key, "test", me.owner_id)
    by_dead = index.delete_entry(b.key, "test", dead_owner.owner_id)
    batches = index.unlink_batches()
    assert [(x.id, x.owner_id, x.bytes, x.files) for x in batches] == [
        (by_me.unlink_id, me.owner_id, 10, [a.file_name]),
        (by_dead.unlink_id, dead_owner.owner_id, 20, [b.file_name]),
    ]
    assert all(x.punches == [] and x.time > 0 for x in batches)
    # Reading them adopted none (reclaim_dead would give the dead owner's to me):
    assert [x.owner_id for x in index.unlink_batches()] == [me.owner_id, dead_owner.owner_id]
    assert by_me.unlink_id is not None
    index.finish_unlink(by_me.unlink_id)
    assert [x.id for x in index.unlink_batches()] == [by_dead.unlink_id]


def test_a_sound_index_has_no_integrity_problems(index: Index, me: Owner) -> None:
    filled(index, "a", 10, me)
    assert index.integrity_problems() == []
