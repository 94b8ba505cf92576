"""What a streaming run asks of the index, on a real store and SQLite index: one write
transaction per block. On PostgreSQL each transaction costs round trips (BEGIN with the write
lock, the statements, COMMIT), so a run that committed a block and then reserved the next in
two made the index the bottleneck of a cold read (bench row 2e)."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from wtfs_index import Owner

from tests.cache.test_load import ref
from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.manager import CacheManager, Handle
from wtfs.errors import NotFound

MiB = 1024 * 1024


def _blob(name: str, size: int) -> bytes:
    """Random bytes the memory provider serves as mem://`name` (and nothing else)."""
    MemoryProvider.reset()
    blob = MemoryProvider.blobs[f"mem://{name}"] = os.urandom(size)
    return blob


async def _release_and_settle(manager: CacheManager, handle: Handle) -> None:
    """Close `handle`, then wait for its runs to end: a reader is woken before the rest of
    its chunk is written and committed (wtfs.cache.runs), so they may outlive its close."""
    runs = list(handle.entry.runs)
    await manager.release(handle)
    for run in runs:
        await run.wait()


async def test_a_run_streaming_a_file_makes_one_index_write_per_block(tmp_path: Path) -> None:
    blob = _blob("a", 6 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as manager:
        index = manager.index
        calls: collections.Counter[str] = collections.Counter()
        writes: list[str] = []
        real_run = index.run

        async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
            name = getattr(fn, "__name__", "")  # every index call, on the index's thread
            calls[name] += 1
            if name in ("reserve", "commit_range", "commit_and_reserve"):
                writes.append(name)
            return await real_run(fn, *args, **kwargs)

        index.run = run  # type: ignore[method-assign]
        handle = await manager.open(ref("a", len(blob)))
        got = bytearray()
        for offset in range(0, len(blob), 128 * 1024):
            got += await manager.read(handle, offset, 128 * 1024)
        await manager.release(handle)
    assert bytes(got) == blob
    # The first block is reserved on its own, each later one is claimed by the commit of the
    # one before it, and the last commit claims nothing.
    assert writes == ["reserve", *["commit_and_reserve"] * 5, "commit_range"]
    assert calls["open_entry"] == 1 and calls["release_lock"] == 1


async def test_a_random_read_sends_its_request_while_its_first_piece_is_claimed(
    tmp_path: Path,
) -> None:
    # The claim's transaction is then off the way to the first byte (wtfs.cache.runs).
    blob = _blob("r", 4 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as manager:
        index = manager.index
        requests_at_reserve: list[int] = []
        real_run = index.run

        async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(fn, "__name__", "") == "reserve":
                requests_at_reserve.append(len(MemoryProvider.requests))
            return await real_run(fn, *args, **kwargs)

        index.run = run  # type: ignore[method-assign]
        handle = await manager.open(ref("r", len(blob)))
        offset = 2 * MiB + 12345
        got = bytes(await manager.read(handle, offset, 4096))
        await _release_and_settle(manager, handle)
        assert index.sync.claims() == []
    assert got == blob[offset : offset + 4096]
    assert requests_at_reserve == [1]


async def test_a_reader_gets_its_bytes_before_the_rest_of_their_chunk_is_written(
    tmp_path: Path,
) -> None:
    # The memory provider sends a random read's 256 KiB span as one chunk: the 4 KiB the
    # reader waits for are written (and it is woken) first, the rest after (wtfs.cache.runs).
    blob = _blob("w", 4 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as manager:
        store = manager.store
        writes: list[tuple[int, int]] = []
        real_write = store.write_all

        def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
            writes.append((offset, len(data)))
            real_write(fd, data, offset)

        store.write_all = write_all  # type: ignore[method-assign]
        handle = await manager.open(ref("w", len(blob)))
        offset = 2 * MiB + 12345
        got = bytes(await manager.read(handle, offset, 4096))
        await _release_and_settle(manager, handle)
    assert got == blob[offset : offset + 4096]
    start = offset - offset % 4096
    assert writes[:2] == [
        (start, offset + 4096 - start),
        (offset + 4096, start + 256 * 1024 - offset - 4096),
    ]


async def test_a_random_read_of_a_block_another_process_fetches_writes_nothing_into_it(
    tmp_path: Path,
) -> None:
    # Its request went out beside its claim, which was refused (busy): the answer is dropped
    # unwritten, and the reader waits for the other process's bytes.
    blob = _blob("b", 4 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as manager:
        sync = manager.index.sync
        other = Owner.current("other")
        sync.register_owner(other, "mount")
        handle = await manager.open(ref("b", len(blob)))
        entry = sync.get_entry(handle.entry.ref.key)
        assert entry is not None
        theirs = sync.reserve(entry.key, 2 * MiB, 3 * MiB, other, 64 * MiB,
                              file_name=entry.file_name)  # fmt: skip
        assert theirs.claim_id is not None
        offset = 2 * MiB + 12345
        with trio.move_on_after(0.5) as waiting:
            await manager.read(handle, offset, 4096)
        assert waiting.cancelled_caught  # still waiting for the other process
        assert len(MemoryProvider.requests) >= 1  # sent beside the claim, and dropped
        assert [c.id for c in sync.claims()] == [theirs.claim_id]
        row = sync.get_entry(entry.key)
        assert row is not None and row.present == 0
        assert os.pread(handle.entry.fd, MiB, 2 * MiB).count(0) == MiB  # not a byte written
        await manager.release(handle)


async def test_a_random_read_whose_request_fails_beside_its_claim_leaves_no_claim(
    tmp_path: Path,
) -> None:
    blob = _blob("f", 4 * MiB)
    MemoryProvider.explode["mem://f"] = NotFound("mem://f: gone")
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as manager:
        handle = await manager.open(ref("f", len(blob)))
        with pytest.raises(NotFound):
            await manager.read(handle, 2 * MiB + 12345, 4096)
        assert manager.index.sync.claims() == []
        await manager.release(handle)
