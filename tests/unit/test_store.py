"""The private store on disk: private permissions, sparse files, crash recovery."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from wtfs_index import Index
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges

from tests.unit.conftest import FillEntry, key_of, new_entry
from wtfs.cache.store import Store
from wtfs.errors import ConfigError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_prepare_makes_private_directories(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "ps"
    Store(root).prepare()
    assert mode(root) == 0o700
    assert mode(root / "data") == 0o700
    assert list(root.iterdir()) == [root / "data"]  # the write probe is gone


def test_prepare_tightens_an_existing_open_directory(tmp_path: Path) -> None:
    root = tmp_path / "ps"
    (root / "data").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "data", 0o777)
    Store(root).prepare()
    assert mode(root) == 0o700
    assert mode(root / "data") == 0o700


def test_prepare_on_an_unusable_path_names_private_storage_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        Store(blocker / "ps").prepare()
    assert str(info.value).startswith("private_storage_path: ")
    assert str(blocker / "ps") in str(info.value)


def test_the_sqlite_index_files_are_private(local_store: Store) -> None:
    index = local_store.open_index()
    try:
        assert index.usage() == 0  # the write-ahead log and its shared memory exist now
        for suffix in ("", "-wal", "-shm"):
            assert mode(Path(f"{local_store.index_path}{suffix}")) == 0o600
    finally:
        index.close()


def test_open_file_creates_a_private_sparse_file_of_the_right_size(local_store: Store) -> None:
    fd = local_store.open_file("ab/cdef", 10 * 1024**2)
    try:
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == 10 * 1024**2
        assert st.st_blocks * 512 < 1024**2  # sparse: nothing written, nothing used
    finally:
        os.close(fd)
    assert mode(local_store.data / "ab") == 0o700


def test_open_file_keeps_existing_bytes(local_store: Store) -> None:
    fd = local_store.open_file("ab/x", 100)
    os.pwrite(fd, b"hello", 0)
    os.close(fd)
    fd = local_store.open_file("ab/x", 100)
    try:
        assert os.pread(fd, 5, 0) == b"hello"
    finally:
        os.close(fd)


def test_open_file_refuses_a_symlink(local_store: Store, tmp_path: Path) -> None:
    (local_store.data / "ab").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("secret")
    (local_store.data / "ab" / "link").symlink_to(target)
    with pytest.raises(OSError):
        local_store.open_file("ab/link", 100)
    assert target.read_text() == "secret"


def test_unlinking_a_missing_file_is_harmless(local_store: Store) -> None:
    local_store.unlink("zz/never-existed")


def test_unlinking_many_removes_each_file_and_passes_over_missing_ones(local_store: Store) -> None:
    names = ["ab/one", "cd/two", "ab/three"]
    for name in names:
        os.close(local_store.open_file(name, 10))
    local_store.unlink_many(["ab/one", "zz/never-existed", "cd/two", "ab/three"])
    assert not any(local_store.path_of(name).exists() for name in names)


def test_punching_a_hole_gives_blocks_back_and_keeps_the_size(local_store: Store) -> None:
    size = 4 * 1024**2
    fd = local_store.open_file("ab/holey", size)
    try:
        os.pwrite(fd, b"x" * size, 0)
        os.fsync(fd)
        before = os.fstat(fd).st_blocks
        Store.punch_hole(fd, 0, size // 2)
        after = os.fstat(fd)
        assert after.st_size == size
        assert after.st_blocks < before
        assert os.pread(fd, 4, 0) == b"\0" * 4
        assert os.pread(fd, 4, size - 4) == b"xxxx"
    finally:
        os.close(fd)


def test_disk_usage_counts_real_blocks(local_store: Store) -> None:
    fd = local_store.open_file("ab/one", 1024**2)
    try:
        os.pwrite(fd, b"y" * 65536, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert 65536 <= local_store.disk_usage() < 1024**2


# -- recovery (both backends) --------------------------------------------------------------------


def test_recovery_removes_orphan_files(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    kept = fill_entry("kept", 100)
    orphan = store.data / "ff" / "orphan"
    orphan.parent.mkdir()
    orphan.write_bytes(b"left by a crash")
    top_level_orphan = store.data / "stray"
    top_level_orphan.write_bytes(b"?")
    report = store.recover(index, me)
    assert report.orphans_removed == 2
    assert not orphan.exists() and not top_level_orphan.exists()
    assert store.path_of(kept.file_name).exists()
    assert index.get_entry(kept.key) is not None


def test_recovery_drops_entries_whose_file_vanished(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    lost = fill_entry("lost", 100)
    fine = fill_entry("fine", 100)
    os.unlink(store.path_of(lost.file_name))
    report = store.recover(index, me)
    assert report.missing_dropped == 1
    assert index.get_entry(lost.key) is None
    assert index.get_entry(fine.key) is not None
    assert index.usage() == 100


def test_recovery_drops_entries_whose_file_changed_size(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    cut = fill_entry("cut", 100)
    os.truncate(store.path_of(cut.file_name), 40)  # cut behind our back
    report = store.recover(index, me)
    assert report.damaged_dropped == [cut.key]
    assert index.get_entry(cut.key) is None
    assert not store.path_of(cut.file_name).exists()
    assert index.usage() == 0
    [eviction] = index.evictions(10)
    assert eviction.reason.startswith("damaged")


def test_recovery_drops_the_ranges_a_file_cut_and_extended_again_no_longer_holds(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    """Same size, fewer bytes: the first quarter is still there, the rest is a hole."""
    size = 1024**2
    cut = fill_entry("cut", size)
    fine = fill_entry("fine", size)
    path = store.path_of(cut.file_name)
    os.truncate(path, size // 4)
    os.truncate(path, size)
    report = store.recover(index, me)
    assert report.holes_dropped == [cut.key]
    after = index.get_entry(cut.key)
    assert after is not None and after.ranges == Ranges([(0, size // 4)]) and not after.complete
    assert index.get_entry(fine.key) == fine
    [eviction] = index.evictions(10)
    assert (eviction.reason, eviction.bytes) == (
        "damaged: bytes missing from the file",
        3 * size // 4,
    )


def test_recovery_drops_a_span_punched_out_behind_our_back(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    size = 1024**2
    entry = fill_entry("punched", size)
    fd = os.open(store.path_of(entry.file_name), os.O_WRONLY)
    try:
        Store.punch_hole(fd, 64 * 1024, 128 * 1024)
    finally:
        os.close(fd)
    assert store.recover(index, me).holes_dropped == [entry.key]
    after = index.get_entry(entry.key)
    assert after is not None
    assert after.ranges == Ranges([(0, 64 * 1024), (128 * 1024, size)])


def test_holes_are_the_parts_of_the_ranges_a_file_holds_no_data_for(local_store: Store) -> None:
    size = 1024**2
    fd = local_store.open_file("ab/sparse", size)
    try:
        os.pwrite(fd, b"d" * 65536, 0)
        os.pwrite(fd, b"d" * 65536, 512 * 1024)
    finally:
        os.close(fd)
    asked = Ranges([(0, 65536), (256 * 1024, 320 * 1024), (500 * 1024, size)])
    assert local_store.holes("ab/sparse", asked) == Ranges(
        [(256 * 1024, 320 * 1024), (500 * 1024, 512 * 1024), (576 * 1024, size)]
    )
    assert local_store.holes("ab/sparse", Ranges([(0, 65536)])) == Ranges()
    with pytest.raises(FileNotFoundError):
        local_store.holes("ab/gone", asked)


def test_recovery_keeps_entries_that_never_had_a_file(
    store: Store, index: Index, me: Owner
) -> None:
    new_entry(index, "empty", 100)
    report = store.recover(index, me)
    assert report.missing_dropped == 0
    assert index.get_entry(key_of("empty")) is not None


def test_recovery_keeps_present_ranges(store: Store, index: Index, me: Owner) -> None:
    entry = new_entry(index, "part", 1000)
    fd = store.open_file(entry.file_name, 1000)
    os.pwrite(fd, b"z" * 300, 0)
    os.close(fd)
    for start, end in ((0, 100), (200, 300)):
        reservation = index.reserve(entry.key, start, end, me, capacity=10_000)
        assert reservation.claim_id is not None
        index.commit_range(reservation.claim_id, entry.key, start, end)
    store.recover(index, me)
    after = index.get_entry(entry.key)
    assert after is not None
    assert after.ranges == Ranges([(0, 100), (200, 300)])
    assert after.present == 200
    assert after.file_name == entry.file_name


def test_recovery_reclaims_dead_owners(
    store: Store, index: Index, me: Owner, dead_owner: Owner
) -> None:
    entry = new_entry(index, "k", 100)
    index.acquire_lock(entry.item_id, "s", dead_owner, entry_key=entry.key)
    assert index.reserve(entry.key, 0, 100, dead_owner, capacity=1000).claim_id is not None
    report = store.recover(index, me)
    assert report.reclaimed["locks"] == 1
    assert report.reclaimed["claims"] == 1
    assert report.reclaimed["owners"] == 1
    assert index.lock_count(entry.item_id) == 0
    assert index.usage() == 0


def test_recovery_of_a_clean_store_changes_nothing(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 10)
    fill_entry("b", 20)
    report = store.recover(index, me)
    assert (report.orphans_removed, report.missing_dropped, report.damaged_dropped) == (0, 0, [])
    assert index.usage() == 30


def test_evicted_bytes_count_as_used_until_their_files_are_unlinked(
    index: Index, store: Store, me: Owner, fill_entry: FillEntry
) -> None:
    a = fill_entry("a", 100)
    fill_entry("b", 100)
    evicted = index.evict_lru(100, me.owner_id, "gc")
    assert [e.key for e in evicted] == [a.key] and evicted.unlink_id is not None
    # The row is gone but its file is not yet: nobody may reserve those 100 bytes.
    assert index.usage() == 200
    store.apply(evicted)
    assert not store.path_of(a.file_name).exists()
    index.finish_unlink(evicted.unlink_id)
    assert index.usage() == 100


def test_an_eviction_left_half_done_by_a_dead_process_is_finished(
    index: Index, store: Store, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    a = fill_entry("a", 100)
    # The dead process evicted it, then died before unlinking the file.
    evicted = index.evict_lru(0, dead_owner.owner_id, "gc")
    assert [e.key for e in evicted] == [a.key]
    assert store.path_of(a.file_name).exists()
    assert index.usage() == 100
    report = store.recover(index, me)
    assert report.reclaimed["unlinking"] == 1
    assert index.usage() == 0
    assert not store.path_of(a.file_name).exists()


def test_spans_dropped_by_a_dead_process_are_punched_out_by_whoever_recovers(
    index: Index, store: Store, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    size = 1024**2
    big = fill_entry("big", size)
    lock = index.acquire_lock(big.item_id, "s", dead_owner, entry_key=big.key)
    index.window(1, dead_owner.owner_id, align=4096)
    index.set_pins(big.key, [(lock, size // 2, size)])
    dropped = index.window(size // 2, dead_owner.owner_id, align=4096)  # then it died
    assert dropped.eviction.freed == size // 2
    blocks = os.stat(store.path_of(big.file_name)).st_blocks
    store.recover(index, me)
    assert index.usage() == size // 2
    after = os.stat(store.path_of(big.file_name))
    assert after.st_size == size and after.st_blocks < blocks
    with open(store.path_of(big.file_name), "rb") as f:
        assert f.read(4) == b"\0\0\0\0"
