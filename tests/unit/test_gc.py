"""The evictor: LRU among unlocked entries, between the start and end water marks."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from wtfs_index import Index, NewEntry
from wtfs_index.owner import Owner

from tests.unit.conftest import FillEntry, key_of, new_entry
from wtfs.cache.store import Store
from wtfs.gc.evictor import GcPolicy, GcReport, collect

POLICY = GcPolicy(capacity=1000, start_fraction=0.9, end_fraction=0.5)


def fill(index: Index, me: Owner, fill_entry: FillEntry, keys: list[str], size: int = 100) -> None:
    """Entries of `size` bytes named `keys`; keys[0] is the least recently used."""
    for key in keys:
        fill_entry(key, size)
    base = time.time() + 100
    index.heartbeat(me, {}, {key_of(key): base + n for n, key in enumerate(keys)})


def remaining(index: Index, keys: list[str]) -> list[str]:
    return [k for k in keys if index.get_entry(key_of(k)) is not None]


def evicted_names(report: GcReport) -> list[str]:
    return [e.key.removeprefix("girder:").removesuffix("@v1") for e in report.evicted]


def files_left(store: Store) -> int:
    return sum(1 for p in store.data.rglob("*") if p.is_file())


def test_the_policy_marks_are_fractions_of_capacity() -> None:
    assert (POLICY.start_bytes, POLICY.end_bytes) == (900, 500)


def test_nothing_is_evicted_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)  # 800 < 900
    report = collect(index, store, POLICY, me)
    assert report.evicted == []
    assert report.freed == 0
    assert (report.usage_before, report.usage_after) == (800, 800)
    assert remaining(index, keys) == keys
    assert files_left(store) == 8


def test_a_pass_past_the_start_mark_brings_usage_to_the_end_mark_lru_first(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)  # 1000 ≥ 900
    report = collect(index, store, POLICY, me)
    assert evicted_names(report) == keys[:5]
    assert report.usage_before == 1000
    assert report.usage_after == 500
    assert report.usage_after <= POLICY.end_bytes
    assert report.freed == 500
    assert remaining(index, keys) == keys[5:]
    assert files_left(store) == 5


def test_exactly_at_the_start_mark_a_pass_runs(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(9)]
    fill(index, me, fill_entry, keys)  # 900
    report = collect(index, store, POLICY, me)
    assert report.usage_after == 500
    assert evicted_names(report) == keys[:4]


def test_the_evicted_files_are_unlinked(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    paths = {k: store.path_of(index.get_entry(key_of(k)).file_name) for k in keys}  # type: ignore[union-attr]
    collect(index, store, POLICY, me)
    assert [k for k in keys if paths[k].exists()] == keys[5:]


def test_locked_items_are_kept_even_when_least_recently_used(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    index.acquire_lock("item-k0", "s", me)  # every entry of the item
    index.acquire_lock("item-k2", "s", me, entry_key=key_of("k2"))  # one entry
    report = collect(index, store, POLICY, me)
    assert evicted_names(report) == ["k1", "k3", "k4", "k5", "k6"]
    assert report.usage_after == 500
    assert "k0" in remaining(index, keys) and "k2" in remaining(index, keys)


def test_a_dead_owners_lock_does_not_pin_an_entry(
    index: Index, store: Store, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    index.acquire_lock("item-k0", "s", dead_owner, entry_key=key_of("k0"))
    report = collect(index, store, POLICY, me)
    assert report.reclaimed["locks"] == 1
    assert evicted_names(report)[0] == "k0"


def test_when_everything_is_locked_the_pass_stops_short(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    for key in keys[:8]:
        index.acquire_lock(f"item-{key}", "s", me)
    report = collect(index, store, POLICY, me)
    assert evicted_names(report) == ["k8", "k9"]
    assert report.usage_after == 800


def test_pressure_evicts_even_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)  # 800 < 900
    report = collect(index, store, POLICY, me, needed=300)
    assert report.usage_after <= POLICY.capacity - 300
    assert report.usage_after <= POLICY.end_bytes
    assert evicted_names(report) == keys[:3]
    assert report.freed == 300


def test_pressure_larger_than_the_end_mark_frees_what_is_needed(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(8)]
    fill(index, me, fill_entry, keys)
    report = collect(index, store, POLICY, me, needed=700)
    assert report.usage_after <= 300
    assert evicted_names(report) == keys[:5]
    assert report.freed == 500


def test_force_runs_a_pass_below_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(7)]
    fill(index, me, fill_entry, keys)
    report = collect(index, store, POLICY, me, force=True)
    assert evicted_names(report) == keys[:2]
    assert report.usage_after == 500


def test_claims_count_toward_the_start_mark(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    keys = [f"k{i}" for i in range(7)]
    fill(index, me, fill_entry, keys)  # 700 present
    inflight = new_entry(index, "inflight", 300)
    index.reserve(inflight.key, 0, 300, me, capacity=POLICY.capacity)  # + 300 claimed
    report = collect(index, store, POLICY, me)
    assert report.usage_before == 1000
    assert report.usage_after == 500
    assert evicted_names(report) == keys[:5]
    assert index.get_entry(inflight.key) is not None


def test_files_are_unlinked_only_after_the_index_commit(
    index: Index,
    second_index: Index,
    store: Store,
    me: Owner,
    fill_entry: FillEntry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"k{i}" for i in range(10)]
    fill(index, me, fill_entry, keys)
    by_file = {index.get_entry(key_of(k)).file_name: key_of(k) for k in keys}  # type: ignore[union-attr]
    seen: list[tuple[str, bool]] = []
    real_unlink_many = store.unlink_many

    def checking_unlink_many(file_names: Iterable[str]) -> None:
        # Another connection (another process) must already see the entries gone.
        for file_name in file_names:
            seen.append((by_file[file_name], second_index.get_entry(by_file[file_name]) is None))
            real_unlink_many([file_name])

    monkeypatch.setattr(store, "unlink_many", checking_unlink_many)
    collect(index, store, POLICY, me)
    assert seen == [(key_of(k), True) for k in keys[:5]]


def test_evictions_are_recorded_with_their_reason(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    fill(index, me, fill_entry, [f"k{i}" for i in range(10)])
    collect(index, store, POLICY, me)
    collect(index, store, POLICY, me, needed=900)  # room for 900: down to 100
    rows = list(reversed(index.evictions(100)))
    assert [r.reason for r in rows] == ["gc"] * 5 + ["pressure"] * 4
    assert {r.by_owner for r in rows} == {me.owner_id}
    assert sum(r.bytes for r in rows) == 900


def test_an_old_version_whose_last_reader_died_goes_with_the_next_pass(
    index: Index, store: Store, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    old = fill_entry("k", 100)
    index.acquire_lock(old.item_id, "s", dead_owner, entry_key=old.key)
    new = NewEntry("girder:k@v2", "girder:k", "v2", old.item_id, 100, "girder:x", "/k")
    fresh = index.ensure_entry(new, by_owner=me.owner_id)
    assert fresh.unlink is None  # its reader (dead, not yet known to be) still holds it
    report = collect(index, store, POLICY, me)  # usage 100: below the start mark
    assert report.reclaimed["locks"] == 1
    assert index.get_entry(old.key) is None
    assert not store.path_of(old.file_name).exists()
    assert index.usage() == 0


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Store]:
    """A store (SQLite index included) on a real 8 MiB tmpfs, unmounted in teardown."""
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    try:
        store = Store(where / "ps")
        store.prepare()
        yield store
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_smaller_than_the_capacity_sizes_the_marks(small_store: Store) -> None:
    """1 GiB configured on an 8 MiB filesystem: the marks are fractions of what it holds (its
    files plus the free space, less the reserve), or no pass would ever evict."""
    index = small_store.open_index()
    me = Owner.current("me")
    index.register_owner(me, "mount")
    try:
        size = 1024**2
        names = [f"f{n}" for n in range(7)]
        for name in names:
            entry = new_entry(index, name, size)
            fd = small_store.open_file(entry.file_name, size)
            os.pwrite(fd, b"x" * size, 0)
            os.close(fd)
            claim = index.reserve(entry.key, 0, size, me, capacity=1 << 40).claim_id
            assert claim is not None
            index.commit_range(claim, entry.key, 0, size)
        index.heartbeat(me, {}, {key_of(n): time.time() + i for i, n in enumerate(names)})
        policy = GcPolicy(1024**3, 0.9, 0.5, disk_reserve=512 * 1024)
        report = collect(index, small_store, policy, me)
        assert report.capacity < 8 * size  # the filesystem's, not the configured 1 GiB
        assert report.usage_after <= report.capacity // 2, report
        assert evicted_names(report) == names[: len(report.evicted)] and report.evicted
        roomy = collect(index, small_store, GcPolicy(4 * size, 0.9, 0.5, disk_reserve=0), me)
        assert roomy.capacity == 4 * size  # a configured capacity the disk holds is kept
    finally:
        index.close()


def test_a_pass_leaves_alone_the_spans_its_own_process_is_dropping(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    """The windowed soak's block of zeros. A reader's wait made room inside a file being read
    (a window); the GC pass of the same process, meanwhile, took that batch for one left over
    and punched its span too, late: after the drop was finished and the span fetched and
    committed again. A later read of the span was served the hole's zeros."""
    entry = fill_entry("big", 300)
    path = store.path_of(entry.file_name)
    lock = index.acquire_lock("item-big", "s", me, entry_key=entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(lock, 200, 300)])
    drop = index.window(100, me.owner_id, align=100).eviction
    assert [(p.start, p.end) for p in drop.punches] == [(0, 100)] and drop.unlink_id
    collect(index, store, POLICY, me)  # a pass while the drop is on its way
    assert [b.id for b in index.unlink_batches()] == [drop.unlink_id]  # still its maker's
    # The maker punches and finishes it; the span is fetched and committed again.
    store.apply(drop)
    index.finish_unlink(drop.unlink_id)
    fd = store.open_file(entry.file_name, 300)
    try:
        os.pwrite(fd, b"y" * 100, 0)
    finally:
        os.close(fd)
    claim = index.reserve(entry.key, 0, 100, me, capacity=1 << 40).claim_id
    assert claim is not None
    index.commit_range(claim, entry.key, 0, 100)
    collect(index, store, POLICY, me)
    assert path.read_bytes() == b"y" * 100 + b"x" * 200


def test_a_batch_its_process_gave_up_on_is_finished_by_its_next_pass(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    """The punch or the index failed the maker midway: the batch is the next pass's."""
    entry = fill_entry("big", 300)
    lock = index.acquire_lock("item-big", "s", me, entry_key=entry.key)
    index.window(1, me.owner_id, align=100)
    index.set_pins(entry.key, [(lock, 200, 300)])
    drop = index.window(100, me.owner_id, align=100).eviction
    assert drop.unlink_id is not None
    with pytest.raises(OSError), store.carrying_out(drop.unlink_id):
        raise OSError("the disk failed the punch")
    assert store.given_up == {drop.unlink_id}
    collect(index, store, POLICY, me)
    assert index.unlink_batches() == [] and store.given_up == set()
    assert index.usage() == 200
    assert store.path_of(entry.file_name).read_bytes() == bytes(100) + b"x" * 200  # punched
