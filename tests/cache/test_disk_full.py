"""The cache manager when the disk under its store fills up, on a real tmpfs holding the store
and its SQLite index: every index write and every store write then meets ENOSPC.

The read that needs room gets ENOSPC (NoSpace), the manager goes on (its nursery is the
mount's: an error escaping into it would end every fetch of the mount), and once the disk has
room again the same read succeeds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from wtfs_index import NewEntry, Owner
from wtfs_index.sqlite import INDEX_FILE, WAL_LIMIT, SqliteIndex

from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.entry import FileRef
from wtfs.cache.manager import FAILURE_MEMORY, CacheManager
from wtfs.cache.space import auto_reserve
from wtfs.cache.store import Store
from wtfs.errors import NoSpace
from wtfs.providers.base import Source

MiB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
async def manager(small_fs: Path) -> AsyncIterator[CacheManager]:
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://a"] = os.urandom(8 * MiB)
    async with make_manager(small_fs, capacity=1024 * MiB, block_size=MiB) as m:
        yield m


def ref(name: str) -> FileRef:
    size = len(MemoryProvider.blobs[f"mem://{name}"])
    return FileRef(f"mem:{name}", "v1", f"item-{name}", size,
                   Source(f"mem://{name}", size, label=name), f"/{name}")  # fmt: skip


def fill_disk(fs: Path) -> Path:
    """Fold the index's write-ahead log into its database, then take every free byte."""
    db = sqlite3.connect(fs / "store" / "index.sqlite3", timeout=30)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    filler = fs / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\xff" * MiB)
            f.flush()
    return filler


def leave_free(fs: Path, room: int) -> Path:
    """Take the filesystem's free space but `room` bytes."""
    filler = fs / "filler"
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    filler.write_bytes(b"\xff" * (free - room))
    return filler


async def test_a_full_disk_fails_the_read_with_enospc_and_the_manager_goes_on(
    manager: CacheManager, small_fs: Path
) -> None:
    blob = MemoryProvider.blobs["mem://a"]
    handle = await manager.open(ref("a"))
    try:
        assert await manager.read(handle, MiB, 4096) == blob[MiB : MiB + 4096]  # one block
        with trio.fail_after(30):
            while manager._entries[ref("a").key].runs:  # noqa: ASYNC110
                await trio.sleep(0.01)
        # The disk fills while a fetch is under way: its record was made, its bytes not yet.
        MemoryProvider.gate = gate = trio.Event()
        outcome: list[BaseException | bytes] = []

        async def read() -> None:
            try:
                outcome.append(await manager.read(handle, 7 * MiB, 4096))
            except NoSpace as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(30):
                while len(MemoryProvider.requests) < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            filler = await trio.to_thread.run_sync(fill_disk, small_fs)
            gate.set()
        MemoryProvider.gate = None
        [error] = outcome
        assert isinstance(error, NoSpace), error
        await trio.sleep(2.5)  # heartbeats fail meanwhile; the manager must not
        filler.unlink()
        with trio.fail_after(30):
            assert await manager.read(handle, 7 * MiB, 4096) == blob[7 * MiB : 7 * MiB + 4096]
    finally:
        with trio.CancelScope(shield=True):
            await manager.release(handle)


async def test_a_short_write_on_a_nearly_full_disk_is_never_committed_as_written(
    manager: CacheManager, small_fs: Path
) -> None:
    """A filesystem nearly full writes part of a buffer and says how much: the rest is not in
    the file. Here the room is taken between the reservation's look at the disk and the write,
    as another process would take it (Space is told the disk has more than it has)."""
    blob = MemoryProvider.blobs["mem://a"]
    # Leave 300 KiB: one 256 KiB chunk of the provider's, and part of the next.
    filler = await trio.to_thread.run_sync(leave_free, small_fs, 300 * 1024)
    manager.space.disk_reserve = -16 * MiB
    handle = await manager.open(ref("a"))
    try:
        offset = 2 * MiB + 300 * 1024  # in the block's second chunk, past what fitted
        try:
            with trio.fail_after(30):
                got: bytes | None = await manager.read(handle, offset, 4096)
        except NoSpace:
            got = None
        assert got in (None, blob[offset : offset + 4096]), "wrong bytes served"
        filler.unlink()
        manager.space.disk_reserve = 0
        await trio.sleep(FAILURE_MEMORY + 0.1)  # the failure no longer answers for the block
        with trio.fail_after(30):
            got = await manager.read(handle, 2 * MiB, MiB)
        assert got == blob[2 * MiB : 3 * MiB]  # never the zeros a short write left
    finally:
        with trio.CancelScope(shield=True):
            await manager.release(handle)


def test_the_automatic_reserve_holds_the_index_s_write_ahead_log(small_fs: Path) -> None:
    """The data files may fill the disk up to `auto_reserve`, and the index must still commit:
    its write-ahead log grows to ~4 MiB before SQLite checkpoints it. (A reserve of 5 % of a
    48 MiB filesystem, 2.4 MiB, was less: CI saw reads fail with the index's disk full.)"""
    store = Store(small_fs / "store")
    store.prepare()
    index = SqliteIndex(store.root / INDEX_FILE)
    try:
        index.register_owner(Owner.current("wal"), "mount")
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        (small_fs / "filler").write_bytes(b"\xff" * (free - auto_reserve(store)))
        source = "girder:" + "x" * 3000  # a page or so of log per transaction
        for n in range(1500):  # more than a checkpoint's 1000 pages
            new = NewEntry(f"k{n}", source, "v1", "item", 1, "s", "/p")
            index.ensure_entry(new, by_owner="wal")
        wal = (store.root / (INDEX_FILE + "-wal")).stat().st_size
        assert 3 * MiB < wal <= WAL_LIMIT  # it did grow to a checkpoint's length
    finally:
        index.close()
