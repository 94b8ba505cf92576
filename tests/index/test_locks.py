"""Locks: on one entry or on every entry of an item, for a reader (read) or with nobody reading
(hold), living as long as their owner or with a lease of their own."""

from __future__ import annotations

from wtfs_index import Index, LockKind, Owner

from tests.index.conftest import OpenIndex, backdate, past_server_grace
from tests.support import owners


def test_locks_are_counted_per_item_and_released_by_id(index: Index, me: Owner) -> None:
    a = index.acquire_lock("item-1", "s", me, entry_key="girder:a@v1", path="/a")
    b = index.acquire_lock("item-1", "s", me, entry_key="girder:a@v1", path="/a")
    index.acquire_lock("item-2", "s", me)
    assert a != b
    assert (index.lock_count("item-1"), index.lock_count("item-2"), index.lock_total()) == (2, 1, 3)
    index.release_lock(a)
    assert index.lock_count("item-1") == 1
    index.release_lock(b)
    assert index.lock_count("item-1") == 0
    assert index.lock_count("never-locked") == 0
    assert index.release_lock(a) == []  # twice: nothing more to do


def test_a_lock_is_on_one_entry_or_on_every_entry_of_an_item(index: Index, me: Owner) -> None:
    read = index.acquire_lock("item", "s", me, entry_key="girder:f@v1", mountpoint="/mnt",
                              path="/f")  # fmt: skip
    hold = index.acquire_lock("item", "s", me, kind=LockKind.HOLD)
    rows = {lock.id: lock for lock in index.locks(me)}
    assert (rows[read].entry_key, rows[read].kind) == ("girder:f@v1", "read")
    assert (rows[read].mountpoint, rows[read].path, rows[read].host) == ("/mnt", "/f", me.host)
    assert (rows[hold].entry_key, rows[hold].kind) == (None, "hold")
    for lock in rows.values():
        assert lock.alive and lock.expires is None and lock.owner_id == me.owner_id
        assert (lock.pin_start, lock.pin_end) == (None, None)


def test_locks_can_be_listed_by_session_item_and_owner(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    a = index.acquire_lock("item-1", "s1", me)
    b = index.acquire_lock("item-2", "s1", other_live_owner)
    c = index.acquire_lock("item-1", "s2", other_live_owner)
    assert [lock.id for lock in index.locks(me)] == [a, b, c]
    assert [lock.id for lock in index.locks(me, session_id="s1")] == [a, b]
    assert [lock.id for lock in index.locks(me, item_id="item-1")] == [a, c]
    assert [lock.id for lock in index.locks(me, owner_id=other_live_owner.owner_id)] == [b, c]
    assert [lock.id for lock in index.locks(me, session_id="s2", item_id="item-2")] == []


def test_get_lock_says_whether_its_owner_lives(index: Index, me: Owner, dead_owner: Owner) -> None:
    mine = index.acquire_lock("item", "s", me)
    theirs = index.acquire_lock("item", "s", dead_owner)
    orphan = index.acquire_lock("item", "s", owners.this_process("never-registered"))
    assert index.get_lock(mine, me).alive  # type: ignore[union-attr]
    assert not index.get_lock(theirs, me).alive  # type: ignore[union-attr]
    row = index.get_lock(orphan, me)
    assert row is not None and not row.alive and row.host is None  # no owner row behind it
    assert index.get_lock(orphan + 1000, me) is None


def test_releasing_a_session_releases_its_locks_only(index: Index, me: Owner) -> None:
    for item in ("a", "b"):
        index.acquire_lock(item, "deleted", me)
    kept = index.acquire_lock("a", "kept", me)
    assert index.release_locks(session_id="deleted") == 2
    assert [lock.id for lock in index.locks(me)] == [kept]
    assert index.release_locks(session_id="never") == 0


def test_a_lock_with_its_own_lease_outlives_its_owner_until_the_lease_runs_out(
    open_test_index: OpenIndex, me: Owner
) -> None:
    """A pin set through Girder: its owner is a request long gone; the lock lives by its own
    lease, renewed with renew_lock, and is reclaimed once that ran out."""
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    pin = Owner.lease_only("girder-request")  # never registered: no owner row at all
    lock = index.acquire_lock("item", "s", pin, kind=LockKind.HOLD, expires_in=60)
    index.acquire_lock("item", "s", owners.this_process("no-row"))
    assert index.get_lock(lock, me).alive  # type: ignore[union-attr]
    assert index.reclaim_dead(me)["locks"] == 1  # the owner-lived one, whose owner has no row
    assert [row.id for row in index.locks(me)] == [lock]
    # Renewing moves its expiry forward; a lock without a lease of its own cannot be renewed.
    backdate(index, "locks", "expires", 120, id=lock)  # ran out a minute ago...
    assert not index.get_lock(lock, me).alive  # type: ignore[union-attr]
    assert index.renew_lock(lock, 60)  # ...renewed in time, before anyone reclaimed it
    row = index.get_lock(lock, me)
    assert row is not None and row.alive and row.expires is not None
    mine = index.acquire_lock("item", "s", me)
    assert not index.renew_lock(mine, 60)
    assert index.get_lock(mine, me).expires is None  # type: ignore[union-attr]
    backdate(index, "locks", "expires", 120, id=lock)
    assert index.reclaim_dead(me)["locks"] == 1
    assert [row.id for row in index.locks(me)] == [mine]
    assert not index.renew_lock(lock, 60)  # gone


def test_a_clean_exit_keeps_the_locks_with_a_lease_of_their_own(index: Index, me: Owner) -> None:
    pinned = index.acquire_lock("item", "s", me, kind=LockKind.HOLD, expires_in=60)
    index.acquire_lock("item", "s", me)
    index.unregister_owner(me.owner_id)
    [row] = index.locks(me)
    assert row.id == pinned and row.alive
