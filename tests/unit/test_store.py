"""The private store on disk: private permissions, sparse files, crash recovery."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wtfs_index.index import Index
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges

from wtfs.cache.store import Store
from wtfs.errors import ConfigError

FillEntry = Callable[..., None]  # the `fill_entry` fixture


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


def test_the_index_file_is_private(store: Store) -> None:
    index = store.open_index()
    try:
        assert mode(store.index_path) == 0o600
    finally:
        index.close()


def test_open_file_creates_a_private_sparse_file_of_the_right_size(store: Store) -> None:
    fd = store.open_file("ab/cdef", 10 * 1024**2)
    try:
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == 10 * 1024**2
        assert st.st_blocks * 512 < 1024**2  # sparse: nothing written, nothing used
    finally:
        os.close(fd)
    assert mode(store.data / "ab") == 0o700


def test_open_file_keeps_existing_bytes(store: Store) -> None:
    fd = store.open_file("ab/x", 100)
    os.pwrite(fd, b"hello", 0)
    os.close(fd)
    fd = store.open_file("ab/x", 100)
    try:
        assert os.pread(fd, 5, 0) == b"hello"
    finally:
        os.close(fd)


def test_open_file_refuses_a_symlink(store: Store, tmp_path: Path) -> None:
    (store.data / "ab").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("secret")
    (store.data / "ab" / "link").symlink_to(target)
    with pytest.raises(OSError):
        store.open_file("ab/link", 100)
    assert target.read_text() == "secret"


def test_unlinking_a_missing_file_is_harmless(store: Store) -> None:
    store.unlink("zz/never-existed")


def test_unlinking_many_removes_each_file_and_passes_over_missing_ones(store: Store) -> None:
    names = ["ab/one", "cd/two", "ab/three"]
    for name in names:
        os.close(store.open_file(name, 10))
    store.unlink_many(["ab/one", "zz/never-existed", "cd/two", "ab/three"])
    assert not any(store.path_of(name).exists() for name in names)


def test_punching_a_hole_gives_blocks_back_and_keeps_the_size(store: Store) -> None:
    size = 4 * 1024**2
    fd = store.open_file("ab/holey", size)
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


def test_disk_usage_counts_real_blocks(store: Store) -> None:
    fd = store.open_file("ab/one", 1024**2)
    try:
        os.pwrite(fd, b"y" * 65536, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert 65536 <= store.disk_usage() < 1024**2


# -- recovery -------------------------------------------------------------------------------------


def test_recovery_removes_orphan_files(store: Store, index: Index, fill_entry: FillEntry) -> None:
    fill_entry("kept", 100)
    orphan = store.data / "ff" / "orphan"
    orphan.parent.mkdir()
    orphan.write_bytes(b"left by a crash")
    top_level_orphan = store.data / "stray"
    top_level_orphan.write_bytes(b"?")
    report = store.recover(index)
    assert report.orphans_removed == 2
    assert not orphan.exists() and not top_level_orphan.exists()
    entry = index.get_entry("kept")
    assert entry is not None
    assert store.path_of(entry.file_name).exists()


def test_recovery_drops_entries_whose_file_vanished(
    store: Store, index: Index, fill_entry: FillEntry
) -> None:
    fill_entry("lost", 100)
    fill_entry("fine", 100)
    lost = index.get_entry("lost")
    assert lost is not None
    os.unlink(store.path_of(lost.file_name))
    report = store.recover(index)
    assert report.missing_dropped == 1
    assert index.get_entry("lost") is None
    assert index.get_entry("fine") is not None
    assert index.usage() == 100


def test_recovery_keeps_entries_that_never_had_a_file(store: Store, index: Index) -> None:
    index.ensure_entry("empty", "item", 100, None, "girder:x", "/e")
    report = store.recover(index)
    assert report.missing_dropped == 0
    assert index.get_entry("empty") is not None


def test_recovery_keeps_present_ranges(store: Store, index: Index, me: Owner) -> None:
    entry = index.ensure_entry("part", "item", 1000, None, "girder:x", "/p")
    fd = store.open_file(entry.file_name, 1000)
    os.pwrite(fd, b"z" * 300, 0)
    os.close(fd)
    for start, end in ((0, 100), (200, 300)):
        reservation = index.reserve("part", start, end, me, capacity=10_000)
        assert reservation.claim_id is not None
        index.commit_range(reservation.claim_id, "part", start, end)
    store.recover(index)
    after = index.get_entry("part")
    assert after is not None
    assert after.ranges == Ranges([(0, 100), (200, 300)])
    assert after.present == 200
    assert after.file_name == entry.file_name


def test_recovery_reclaims_dead_owners(store: Store, index: Index, dead_owner: Owner) -> None:
    index.register_owner(dead_owner, "mount")
    index.ensure_entry("k", "item", 100, None, "girder:x", "/k")
    index.acquire_lock("item", "s", dead_owner)
    index.reserve("k", 0, 100, dead_owner, capacity=1000)
    report = store.recover(index)
    assert report.reclaimed["locks"] == 1
    assert report.reclaimed["claims"] == 1
    assert report.reclaimed["owners"] == 1
    assert index.lock_count("item") == 0
    assert index.usage() == 0


def test_recovery_of_a_clean_store_changes_nothing(
    store: Store, index: Index, fill_entry: FillEntry
) -> None:
    fill_entry("a", 10)
    fill_entry("b", 20)
    report = store.recover(index)
    assert (report.orphans_removed, report.missing_dropped) == (0, 0)
    assert index.usage() == 30


def test_evicted_bytes_count_as_used_until_their_files_are_unlinked(
    index: Index, store: Store, fill_entry: Any
) -> None:
    fill_entry("a", 100)
    fill_entry("b", 100)
    evicted = index.evict_lru(100, "me", "gc")
    assert [e.key for e in evicted] == ["a"] and evicted.unlink_id is not None
    # The row is gone but its file is not yet: nobody may reserve those 100 bytes.
    assert index.usage() == 200
    store.unlink(evicted[0].file_name)
    index.finish_unlink(evicted.unlink_id)
    assert index.usage() == 100


def test_an_eviction_left_half_done_by_a_dead_process_is_finished(
    index: Index, store: Store, fill_entry: Any, dead_owner_identity: tuple[int, int]
) -> None:
    fill_entry("a", 100)
    evicted = index.evict_lru(0, "me", "gc")
    pid, start = dead_owner_identity
    with index.transaction() as db:  # as if the process evicting had died before unlinking
        db.execute("UPDATE unlinking SET pid = ?, pid_start = ?", (pid, start))
    assert store.path_of(evicted[0].file_name).exists()
    assert index.usage() == 100
    store.recover(index)
    assert index.usage() == 0
    assert not store.path_of(evicted[0].file_name).exists()
