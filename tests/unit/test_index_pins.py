"""Pins (`Index.hold_item`) and an item's current entries (`Index.current_entries`), on both
backends: what the Girder plugin's `POST /dm/lock` and `/dm/lock/{id}/download` rely on.

A pin is a hold lock on a whole item with a lease of its own: none of the item's bytes may be
evicted or windowed while it lasts, and it is reclaimed like any lease once it runs out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wtfs_index import Index, LockKind, NewEntry, Owner, open_index

from tests.index.conftest import past_server_grace

CAPACITY = 1 << 40


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    idx = open_index(url, tmp_path, lease=2.0)  # a short grace after PostgreSQL's start
    yield idx
    idx.close()


@pytest.fixture
def me(index: Index) -> Owner:
    owner = Owner.current("me")
    index.register_owner(owner, "mount", mountpoint="/mnt", session_id="s1")
    return owner


def filled(index: Index, me: Owner, key: str, item_id: str, size: int, version: str = "1") -> str:
    """An entry of `item_id` (source `girder:<key>`) with every byte present; its key."""
    entry_key = f"girder:{key}@{version}"
    new = NewEntry(entry_key, f"girder:{key}", version, item_id, size, "girder:x", f"/{key}")
    index.ensure_entry(new, by_owner=me.owner_id)
    reservation = index.reserve(entry_key, 0, size, me, CAPACITY)
    assert reservation.claim_id is not None
    index.commit_range(reservation.claim_id, entry_key, 0, size)
    assert index.mark_complete(entry_key)
    return entry_key


def oldest_first(index: Index, me: Owner, keys: list[str]) -> None:
    index.heartbeat(me, {}, {key: 1000.0 + n for n, key in enumerate(keys)})


def test_a_second_pin_of_the_same_owner_renews_the_first(index: Index) -> None:
    pinner = Owner.lease_only("session-1")
    first, renewed = index.hold_item("item", "session-1", pinner, expires_in=60)
    assert not renewed
    before = index.get_lock(first, pinner)
    assert before is not None and before.expires is not None
    assert before.kind == LockKind.HOLD and before.entry_key is None and before.alive
    again, renewed = index.hold_item("item", "session-1", pinner, expires_in=3600)
    after = index.get_lock(first, pinner)
    assert (again, renewed) == (first, True)
    assert after is not None and after.expires is not None
    assert after.expires > before.expires + 3000
    # another owner, another session or another item is another pin
    others = {
        index.hold_item("item", "session-1", Owner.lease_only("someone"), expires_in=60)[0],
        index.hold_item("item", "session-2", pinner, expires_in=60)[0],
        index.hold_item("other", "session-1", pinner, expires_in=60)[0],
    }
    assert len(others | {first}) == 4
    assert index.lock_total() == 4


def test_a_pinned_item_is_never_evicted_whatever_its_age(index: Index, me: Owner) -> None:
    pinned = filled(index, me, "p", "item-pinned", 100)
    other = filled(index, me, "q", "item-other", 100)
    oldest_first(index, me, [pinned, other])  # LRU would take the pinned item first
    index.hold_item("item-pinned", "s", Owner.lease_only("s"), expires_in=60)
    evicted = index.evict_lru(0, me.owner_id, "gc")
    assert [e.key for e in evicted] == [other]
    entry = index.get_entry(pinned)
    assert entry is not None and entry.complete and entry.present == 100


def test_a_pinned_item_is_never_windowed_even_when_only_readers_would_hold_it(
    index: Index, me: Owner
) -> None:
    key = filled(index, me, "p", "item-p", 4096)
    lock = index.acquire_lock("item-p", "s1", me, entry_key=key)
    index.set_pins(key, [(lock, 0, 1024)])  # the reader needs only its first KiB now
    pin, _ = index.hold_item("item-p", "s", Owner.lease_only("s"), expires_in=60)
    assert index.window(4096, me.owner_id, align=1024).eviction.freed == 0
    entry = index.get_entry(key)
    assert entry is not None and entry.complete and not entry.windowed
    # without the pin, the same call drops what the reader does not need
    index.release_lock(pin)
    assert index.window(4096, me.owner_id, align=1024).eviction.freed == 3072


def test_an_expired_pin_is_reclaimed_and_its_item_evictable_again(index: Index, me: Owner) -> None:
    key = filled(index, me, "p", "item-p", 100)
    pin, _ = index.hold_item("item-p", "s", Owner.lease_only("s"), expires_in=0.5)
    assert index.evict_lru(0, me.owner_id, "gc") == []
    time.sleep(0.7)
    past_server_grace(index)  # PostgreSQL's grace after its own start covers pins too
    assert index.get_lock(pin, me) is not None  # until someone reclaims it
    assert index.reclaim_dead(me)["locks"] == 1
    assert index.get_lock(pin, me) is None
    assert [e.key for e in index.evict_lru(0, me.owner_id, "gc")] == [key]


def test_current_entries_are_an_items_current_versions(index: Index, me: Owner) -> None:
    old = filled(index, me, "f1", "item", 10, version="1")
    index.acquire_lock("item", "s1", me, entry_key=old)  # keeps the old version while open
    new = filled(index, me, "f1", "item", 12, version="2")
    second_file = filled(index, me, "f2", "item", 5)
    filled(index, me, "g", "another-item", 5)
    assert {e.key for e in index.entries() if e.item_id == "item"} == {old, new, second_file}
    assert [e.key for e in index.current_entries("item")] == [new, second_file]
    assert index.current_entries("no-such-item") == []
