"""What only the SQLite backend has: its query plans, its page cache, the filesystems it refuses,
damaged files, and the migration from schema 1."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from wtfs_index import (
    SCHEMA_VERSION,
    IndexBusy,
    IndexDamaged,
    IndexRefused,
    Owner,
    open_index,
)
from wtfs_index.owner import process_start_time
from wtfs_index.sqlite import INDEX_FILE, SqliteIndex, refuse_shared_filesystem

from tests.index.conftest import filled, new_transfer, schema_1_index, sqlite_pragma
from tests.support import owners
from tests.support.tinyfuse import tiny_fuse


@pytest.fixture
def sqlite_index(store_root: Path) -> Iterator[SqliteIndex]:
    index = SqliteIndex(store_root / INDEX_FILE)
    yield index
    index.close()


@pytest.fixture
def me(sqlite_index: SqliteIndex) -> Owner:
    owner = Owner.current("me")
    sqlite_index.register_owner(owner, "mount")
    return owner


@contextmanager
def statements(index: SqliteIndex) -> Iterator[list[str]]:
    """Every SQL statement the index runs inside the block, as SQLite ran it."""
    seen: list[str] = []
    index._db.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        index._db.set_trace_callback(None)


def plans_over_entries(
    index: SqliteIndex, run: Callable[[], object]
) -> list[tuple[str, list[str]]]:
    """(statement, query plan) of each SELECT over `entries` that `run()` makes the index run."""
    with statements(index) as seen:
        run()
    selects = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "entries" in s]
    assert selects, seen
    return [(s, index.query_plan(s)) for s in selects]


@pytest.fixture
def short_index(store_root: Path) -> Iterator[SqliteIndex]:
    """Waits at most 2 s for a lock: a call that waited fails as IndexUnavailable, not busy."""
    index = SqliteIndex(store_root / INDEX_FILE, timeout=2)
    yield index
    index.close()


def test_a_quick_call_without_waiting_is_busy_while_another_process_writes(
    short_index: SqliteIndex, store_root: Path
) -> None:
    owner = Owner.current("me")
    short_index.register_owner(owner, "mount")
    assert "transfer_create" in short_index.quick_calls
    other = sqlite3.connect(store_root / INDEX_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another daemon's write transaction, still open
    try:
        with short_index.without_waiting(), pytest.raises(IndexBusy):
            new_transfer(short_index, owner)
        assert other.in_transaction  # busy while it holds the lock: it did not wait for it
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert short_index.transfers() == []  # nothing was done
    assert sqlite_pragma(short_index, "busy_timeout") == 2000  # the wait is back for others
    with short_index.without_waiting():
        new_transfer(short_index, owner)  # free: done at once
    assert len(short_index.transfers()) == 1


def test_a_quick_call_without_waiting_is_busy_while_another_thread_uses_the_connection(
    short_index: SqliteIndex,
) -> None:
    owner = Owner.current("me")
    short_index.register_owner(owner, "mount")
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with short_index._lock:  # a worker thread in the middle of a call
            holding.set()
            done.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert holding.wait(10)
        with short_index.without_waiting(), pytest.raises(IndexBusy):
            new_transfer(short_index, owner)
    finally:
        done.set()
        worker.join()
    new_transfer(short_index, owner)  # another thread's calls are not affected
    assert len(short_index.transfers()) == 1


def test_usage_and_a_reservation_scan_no_entries(sqlite_index: SqliteIndex, me: Owner) -> None:
    # Every reservation asks for the usage: at 100,000 entries a scan of even the covering LRU
    # index cost 3.7 ms per 4 MiB block. The present bytes are one row (`present_total`), and a
    # reservation looks its entry up by key.
    for n in range(3):
        filled(sqlite_index, f"k{n}", 10, me)
    for run in (sqlite_index.usage, lambda: sqlite_index.reserve("girder:k0@v1", 0, 20, me, 99)):
        with statements(sqlite_index) as seen:
            run()
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
        assert selects, seen
        for sql in selects:
            plan = sqlite_index.query_plan(sql)
            assert not any(step.startswith("SCAN entries") for step in plan), (sql, plan)


def test_the_lru_walk_reads_entries_in_index_order(sqlite_index: SqliteIndex, me: Owner) -> None:
    for n in range(3):
        filled(sqlite_index, f"k{n}", 10, me)
    plans = plans_over_entries(sqlite_index, lambda: sqlite_index.evict_lru(0, me.owner_id, "gc"))
    [walk] = [plan for sql, plan in plans if "ORDER BY atime" in sql]
    assert any("entries_atime_key_present" in step for step in walk), walk
    assert not any("TEMP B-TREE" in step for step in walk), walk  # no sort of every entry


def test_an_eviction_leaves_the_page_cache_size_as_it_found_it(
    sqlite_index: SqliteIndex, me: Owner
) -> None:
    filled(sqlite_index, "a", 100, me)
    before = sqlite_pragma(sqlite_index, "cache_size")
    assert len(sqlite_index.evict_lru(0, me.owner_id, "gc")) == 1
    assert sqlite_pragma(sqlite_index, "cache_size") == before


def test_a_file_that_is_not_a_database_is_damaged_and_says_what_to_do(store_root: Path) -> None:
    path = store_root / INDEX_FILE
    path.write_bytes(b"this is no SQLite database, just some bytes " * 100)
    with pytest.raises(IndexDamaged) as info:
        open_index(None, store_root)
    assert str(path) in info.value.cause
    assert "wtfs fsck" in info.value.cause


@pytest.mark.parametrize("statfs", [True, False], ids=["statfs", "no-statfs"])
def test_an_index_on_a_fuse_filesystem_is_refused_naming_index_url(
    tmp_path: Path, statfs: bool
) -> None:
    # A real FUSE mount; the store lies inside it. Some FUSE filesystems do not answer
    # statfs(2) at all: they are FUSE all the same.
    with tiny_fuse(tmp_path / "mnt", statfs=statfs) as mountpoint:
        store = mountpoint / "store"
        with pytest.raises(IndexRefused) as info:
            refuse_shared_filesystem(store)
        assert "FUSE" in info.value.cause and "index_url" in info.value.cause
        assert str(store) in info.value.cause
        with pytest.raises(IndexRefused, match="index_url"):
            open_index(None, store)
        with pytest.raises(IndexRefused, match="index_url"):
            SqliteIndex(store / INDEX_FILE)


def test_a_local_filesystem_is_not_refused(store_root: Path) -> None:
    refuse_shared_filesystem(store_root)


# -- migration from schema 1 ----------------------------------------------------------------------


def test_a_schema_1_index_of_a_dead_wtfs_is_migrated(store_root: Path) -> None:
    """Schema 1's entries carry no version: none can be trusted, so their files become an
    unlinking batch (their bytes counted until it is finished); owners, locks and claims of
    the old processes go; the history stays."""
    schema_1_index(
        store_root / INDEX_FILE,
        owner=owners.exited_process(),
        entries={"ab/one": 100, "cd/two": 50},
        unlinking={"ef/left-over": 30},
    )
    index = open_index(None, store_root)
    try:
        me = Owner.current("me")
        assert index.schema_version() == SCHEMA_VERSION == 2
        assert index.entries() == [] and index.owners(me) == []
        assert index.locks(me) == [] and index.claims() == []
        batches = index.orphan_unlinks(me)
        assert sorted(f for _, files, _ in batches for f in files) == [
            "ab/one",
            "cd/two",
            "ef/left-over",
        ]
        assert index.summary().unlinking == 180
        assert index.usage() == 180
        for batch, _, _ in batches:
            index.finish_unlink(batch)
        assert index.usage() == 0
        [transfer] = index.transfers()
        assert (transfer.key, transfer.status, transfer.transferred) == ("file-0", 3, 10)
        # The store works as any schema 2 one.
        filled(index, "new", 10, me)
        assert index.usage() == 10
    finally:
        index.close()
    reopened = open_index(None, store_root)
    try:
        assert reopened.schema_version() == 2 and reopened.usage() == 10
    finally:
        reopened.close()


def test_a_schema_1_index_still_used_by_a_running_wtfs_is_refused(store_root: Path) -> None:
    old_wtfs = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start_time(old_wtfs.pid)
        assert start is not None
        schema_1_index(
            store_root / INDEX_FILE, owner=(old_wtfs.pid, start), entries={"ab/one": 100}
        )
        with pytest.raises(IndexRefused) as info:
            open_index(None, store_root)
        assert str(old_wtfs.pid) in info.value.cause and "/mnt/old" in info.value.cause
        assert (store_root / "data" / "ab" / "one").exists()
    finally:
        old_wtfs.kill()
        old_wtfs.wait()
    # Nothing was changed by the refusal: once the old wtfs is gone, the migration runs.
    index = open_index(None, store_root)
    try:
        assert index.schema_version() == 2
        [(_, files, _)] = index.orphan_unlinks(Owner.current("me"))
        assert files == ["ab/one"]
    finally:
        index.close()


def test_the_index_file_can_be_checkpointed_and_reopened_with_its_data(
    store_root: Path,
) -> None:
    index = SqliteIndex(store_root / INDEX_FILE)
    me = Owner.current("me")
    index.register_owner(me, "mount")
    filled(index, "k", 10, me)
    index.checkpoint()
    assert os.path.getsize(store_root / (INDEX_FILE + "-wal")) == 0
    index.close()
    again = SqliteIndex(store_root / INDEX_FILE)
    try:
        assert again.usage() == 10 and again.describe() == str(store_root / INDEX_FILE)
    finally:
        again.close()


def test_integrity_problems_are_what_sqlite_finds_in_a_damaged_file(store_root: Path) -> None:
    """A file that still opens but whose pages were overwritten: SQLite's integrity check names
    what is wrong (or the damage shows as IndexDamaged at once), for `wtfs fsck`."""
    path = store_root / INDEX_FILE
    index = SqliteIndex(path)
    owner = Owner.current("me")
    for n in range(300):
        filled(index, f"f{n}", 10, owner)
    index.checkpoint()
    index.close()
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    for page in range(pages // 2, pages):  # the second half: entries and their indexes
        data[page * 4096 + 8 : page * 4096 + 4000] = b"\x07" * 3992
    path.write_bytes(bytes(data))
    try:
        damaged = SqliteIndex(path)
        try:
            problems = damaged.integrity_problems()
        finally:
            damaged.close()
    except IndexDamaged as exc:
        problems = [exc.cause]
    assert problems and all(isinstance(p, str) and p for p in problems), problems
