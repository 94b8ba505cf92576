"""Windows: room made inside entries that only readers hold, by dropping what no reader needs
now (outside every pin and every claim), farthest from the readers first."""

from __future__ import annotations

import pytest
from wtfs_index import Index, LockKind, Owner, Punch, Ranges
from wtfs_index.base import droppable

from tests.index.conftest import claim, fetched, filled, new_entry

# -- droppable(): which spans go, in which order -----------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "keep", "align", "wanted", "dropped"),
    [
        # nothing kept: oldest bytes first, the last span cut short
        ([(0, 100), (200, 300)], [], 1, 150, [(0, 100), (200, 250)]),
        # behind the slowest reader first, from the start of the file
        ([(0, 1000)], [(400, 600)], 100, 300, [(0, 300)]),
        # then beyond every reader, farthest first, cut on the far side
        ([(0, 1000)], [(400, 600)], 100, 500, [(0, 400), (900, 1000)]),
        ([(0, 1000)], [(0, 200)], 100, 300, [(700, 1000)]),
        ([(0, 100), (300, 500), (700, 900)], [(0, 100)], 100, 300, [(700, 900), (400, 500)]),
        # the gaps between readers last
        ([(0, 1000)], [(0, 100), (900, 1000)], 100, 200, [(100, 300)]),
        ([(0, 1000)], [(200, 300), (600, 700)], 1, 1000, [(0, 200), (700, 1000), (300, 600)]),
        # the amount is rounded up to `align`, never past the span itself
        ([(0, 1000)], [(800, 900)], 100, 150, [(0, 200)]),
        ([(0, 50), (500, 600)], [(400, 500)], 100, 10, [(0, 50)]),
        # kept spans may cover bytes not present (a claim being fetched)
        ([(500, 1000)], [(0, 600)], 100, 100, [(900, 1000)]),
        # nothing to drop, or nothing wanted
        ([(0, 1000)], [(0, 1000)], 100, 100, []),
        ([], [(0, 100)], 100, 100, []),
        ([(0, 1000)], [(400, 600)], 100, 0, []),
    ],
)
def test_droppable_spans(
    ranges: list[tuple[int, int]],
    keep: list[tuple[int, int]],
    align: int,
    wanted: int,
    dropped: list[tuple[int, int]],
) -> None:
    spans = droppable(Ranges(ranges), Ranges(keep), align, wanted)
    assert spans == dropped
    for start, end in spans:  # never a kept byte, never a byte that is not there
        assert Ranges(keep).overlap(start, end) == 0
        assert Ranges(ranges).present(start, end)


# -- window() through the index -------------------------------------------------------------------


def read_lock(index: Index, owner: Owner, key: str) -> int:
    return index.acquire_lock("item", "s", owner, entry_key=key, kind=LockKind.READ)


def test_a_window_marks_read_locked_entries_and_asks_their_readers_to_pin(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    mine = read_lock(index, me, entry.key)
    theirs = read_lock(index, other_live_owner, entry.key)
    result = index.window(300, me.owner_id, align=100)
    assert result.eviction.punches == [] and result.eviction.unlink_id is None
    assert result.to_pin == [(mine, entry.key)]  # my own readers pin first
    assert result.awaiting == 1000  # the bytes of an entry waiting for other owners' readers
    assert index.get_entry(entry.key).windowed  # type: ignore[union-attr]
    assert index.get_entry(entry.key).present == 1000  # type: ignore[union-attr]
    # The other owner learns it at its heartbeat; mine have nothing to pin there any more
    # once pinned.
    assert index.heartbeat(other_live_owner, {}, {}).to_pin == [(theirs, entry.key)]
    assert index.heartbeat(me, {}, {}).to_pin == [(mine, entry.key)]
    index.set_pins(entry.key, [(mine, 0, 200)])
    assert index.heartbeat(me, {}, {}).to_pin == []


def test_an_entry_waiting_only_for_my_own_readers_is_not_awaiting_others(
    index: Index, me: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    mine = read_lock(index, me, entry.key)
    result = index.window(300, me.owner_id, align=100)
    assert result.to_pin == [(mine, entry.key)]
    assert result.awaiting == 0  # nobody else to wait for: pin, and ask again


def test_once_every_reader_pinned_only_bytes_outside_every_pin_go_behind_the_slowest_first(
    index: Index, second_index: Index, me: Owner, other_live_owner: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    slow = read_lock(index, me, entry.key)
    fast = read_lock(second_index, other_live_owner, entry.key)
    index.window(1, me.owner_id, align=100)
    state = index.set_pins(entry.key, [(slow, 400, 500)])
    assert (state.file_name, state.ranges, state.windowed) == (
        entry.file_name,
        Ranges([(0, 1000)]),
        True,
    )
    second_index.set_pins(entry.key, [(fast, 600, 700)])
    result = index.window(450, me.owner_id, align=100)
    # 400 bytes behind the slowest reader, then the farthest ahead, rounded up to 100.
    assert result.eviction.punches == [
        Punch(entry.file_name, 0, 400, entry.key),
        Punch(entry.file_name, 900, 1000, entry.key),
    ]
    assert result.eviction.freed == 500 and result.to_pin == [] and result.awaiting == 0
    after = index.get_entry(entry.key)
    assert after is not None
    assert after.ranges == Ranges([(400, 900)]) and after.present == 500
    assert not after.complete and after.windowed
    # The dropped bytes are counted until the spans are punched out.
    assert index.usage() == 1000
    assert result.eviction.unlink_id is not None
    [batch] = index.unlink_batches()
    assert (batch.id, batch.owner_id, batch.files, batch.punches) == (
        result.eviction.unlink_id, me.owner_id, [], result.eviction.punches
    )  # fmt: skip
    index.finish_unlink(result.eviction.unlink_id)
    assert index.usage() == 500
    [record] = index.evictions(10)
    assert (record.key, record.reason, record.bytes) == (entry.key, "window", 500)
    # A reader learns of the drop when it pins again.
    assert second_index.set_pins(entry.key, [(fast, 700, 800)]).ranges == Ranges([(400, 900)])


def test_dropped_bytes_cannot_be_fetched_again_until_they_are_punched(
    index: Index, second_index: Index, me: Owner, other_live_owner: Owner
) -> None:
    """Between a drop and its punch the bytes are missing from the index: a fetch of them then
    would be punched out by the late punch, and the index would vouch for a hole."""
    entry = filled(index, "big", 1000, me)
    lock = read_lock(index, me, entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(lock, 900, 1000)])
    result = index.window(300, me.owner_id, align=100)
    assert [(p.start, p.end) for p in result.eviction.punches] == [(0, 300)]
    for who, owner in ((index, me), (second_index, other_live_owner)):  # anyone, even us
        answer = who.reserve(entry.key, 100, 200, owner, capacity=10_000)
        assert answer.busy and answer.claim_id is None
    assert second_index.reserve(entry.key, 300, 400, other_live_owner, 10_000).busy is False
    assert result.eviction.unlink_id is not None
    index.finish_unlink(result.eviction.unlink_id)  # punched: fetch away
    assert index.reserve(entry.key, 100, 200, me, capacity=10_000).claim_id is not None


def test_a_batch_is_punched_by_one_process_only_never_after_it_is_finished(
    index: Index, second_index: Index, me: Owner, other_live_owner: Owner
) -> None:
    """The windowed soak's block of zeros: a GC pass of the process that had just dropped a
    span took that process's own batch as left over, and punched the span a second time, late:
    after the drop was finished and the span fetched and committed again. The index then
    vouched for a hole. A batch is handed out only when nobody carries it out, and once."""
    entry = filled(index, "big", 1000, me)
    lock = read_lock(index, me, entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(lock, 900, 1000)])
    result = index.window(300, me.owner_id, align=100)
    batch = result.eviction.unlink_id
    assert batch is not None and [(p.start, p.end) for p in result.eviction.punches] == [(0, 300)]
    # Its maker is carrying it out: no GC pass of anyone's takes it, not even the maker's own.
    assert index.orphan_unlinks(me) == []
    assert second_index.orphan_unlinks(other_live_owner) == []
    # Finished by its maker, then fetched again: nothing is left to punch them twice.
    index.finish_unlink(batch)
    fetched(index, entry.key, 0, 300, me)
    assert index.orphan_unlinks(me, [batch]) == []
    assert second_index.orphan_unlinks(other_live_owner) == []
    # A batch its maker gave up on goes to the maker's next GC pass (it names it), once.
    again = index.window(300, me.owner_id, align=100).eviction
    assert again.unlink_id is not None
    assert second_index.orphan_unlinks(other_live_owner) == []
    [(taken, files, punches)] = index.orphan_unlinks(me, [again.unlink_id])
    assert (taken, files, punches) == (again.unlink_id, [], again.punches)
    assert index.orphan_unlinks(me) == []  # ours now: we carry it out
    assert second_index.orphan_unlinks(other_live_owner) == []


def test_a_reader_without_a_pin_keeps_every_byte(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    pinned = read_lock(index, me, entry.key)
    read_lock(index, other_live_owner, entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(pinned, 0, 100)])
    result = index.window(500, me.owner_id, align=100)
    assert result.eviction.punches == [] and result.awaiting == 1000
    # A pin taken back ((None, None): every byte again) keeps every byte too.
    index.set_pins(entry.key, [(pinned, None, None)])
    assert index.window(500, me.owner_id, align=100).to_pin == [(pinned, entry.key)]
    assert index.get_entry(entry.key).present == 1000  # type: ignore[union-attr]


def test_claims_keep_their_bytes_in_a_window(index: Index, me: Owner) -> None:
    entry = new_entry(index, "big", 1000)
    fetched(index, entry.key, 100, 1000, me)
    claim(index, entry.key, 0, 200, me, 10_000)  # fetching [0, 100), [100, 200) is in it
    lock = read_lock(index, me, entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(lock, 900, 1000)])
    result = index.window(300, me.owner_id, align=100)
    assert [(p.start, p.end) for p in result.eviction.punches] == [(200, 500)]
    assert index.get_entry(entry.key).ranges == Ranges([(100, 200), (500, 1000)])  # type: ignore[union-attr]


def test_hold_locks_and_item_locks_keep_every_byte_and_are_never_windowed(
    index: Index, me: Owner
) -> None:
    held = filled(index, "held", 1000, me)
    item_locked = filled(index, "item-locked", 1000, me, item_id="pinned-item")
    for entry in (held, item_locked):
        read_lock(index, me, entry.key)
    index.acquire_lock("i", "s", me, entry_key=held.key, kind=LockKind.HOLD)
    index.acquire_lock("pinned-item", "s", me, kind=LockKind.HOLD)
    result = index.window(500, me.owner_id, align=100)
    assert (result.eviction.punches, result.to_pin, result.awaiting) == ([], [], 0)
    for entry in (held, item_locked):
        row = index.get_entry(entry.key)
        assert row is not None and not row.windowed and row.present == 1000


def test_windows_drop_from_the_least_recently_used_entries_first(index: Index, me: Owner) -> None:
    older = filled(index, "older", 1000, me)
    newer = filled(index, "newer", 1000, me)
    locks = {e.key: read_lock(index, me, e.key) for e in (older, newer)}
    first = index.window(100, me.owner_id, align=100)
    assert first.to_pin[0] == (locks[older.key], older.key)
    for key, lock in locks.items():
        index.set_pins(key, [(lock, 900, 1000)])
    result = index.window(100, me.owner_id, align=100)
    assert [(p.file_name, p.start, p.end) for p in result.eviction.punches] == [
        (older.file_name, 0, 100)
    ]
    assert index.get_entry(newer.key).present == 1000  # type: ignore[union-attr]


def test_a_windowed_entry_is_whole_again_once_its_last_read_lock_goes(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    mine = read_lock(index, me, entry.key)
    theirs = read_lock(index, other_live_owner, entry.key)
    index.window(1, me.owner_id, align=100)
    assert index.reserve(entry.key, 0, 10, me, 10_000).windowed
    index.release_lock(mine)
    assert index.get_entry(entry.key).windowed  # type: ignore[union-attr]
    index.release_lock(theirs)
    row = index.get_entry(entry.key)
    assert row is not None and not row.windowed
    assert not index.reserve(entry.key, 0, 10, me, 10_000).windowed
    # Whole again: evictable like any other entry.
    assert [e.key for e in index.evict_lru(0, me.owner_id, "gc")] == [entry.key]


def test_a_windowed_entry_is_whole_again_when_its_readers_owner_goes(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    entry = filled(index, "big", 1000, me)
    read_lock(index, dead_owner, entry.key)
    index.window(1, me.owner_id, align=100)
    assert index.get_entry(entry.key).windowed  # type: ignore[union-attr]
    index.reclaim_dead(me)
    assert not index.get_entry(entry.key).windowed  # type: ignore[union-attr]


def test_pins_of_an_entry_that_is_gone_say_so(index: Index, me: Owner) -> None:
    entry = filled(index, "big", 100, me)
    lock = read_lock(index, me, entry.key)
    index.delete_entry(entry.key, "checksum", me.owner_id)
    state = index.set_pins(entry.key, [(lock, 0, 100)])
    assert (state.file_name, state.ranges, state.windowed, state.complete) == (
        None,
        Ranges(),
        False,
        False,
    )
