"""What a streaming run asks of the index, and when, on a real store and SQLite index: one
write transaction per block, made beside the bytes rather than in their way. On PostgreSQL a
transaction costs round trips, and a commit made in line stalled each run 2.8 ms per 4 MiB
block (most of it waiting for the event loop), which made the index the bottleneck of a cold
read (bench row 2e)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cache.test_load import ref
from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.manager import CacheManager

MiB = 1024 * 1024
WRITES = ("reserve", "commit_range", "commit_and_reserve", "release_claim")


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[CacheManager]:
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://a"] = os.urandom(6 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as m:
        yield m


async def read_all(manager: CacheManager) -> bytes:
    blob = MemoryProvider.blobs["mem://a"]
    handle = await manager.open(ref("a", len(blob)))
    got = bytearray()
    for offset in range(0, len(blob), 128 * 1024):
        got += await manager.read(handle, offset, 128 * 1024)
    await manager.release(handle)
    return bytes(got)


async def test_a_run_streaming_a_file_makes_one_index_write_per_block(
    manager: CacheManager,
) -> None:
    index = manager.index
    writes: list[str] = []
    real_run = index.run

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") in WRITES:  # every index call, on the index's thread
            writes.append(fn.__name__)
        return await real_run(fn, *args, **kwargs)

    index.run = run  # type: ignore[method-assign]
    assert await read_all(manager) == MemoryProvider.blobs["mem://a"]
    # The first block is reserved in line and the second beside it; each commit claims the
    # block after the next, and the last two claim nothing: 8 writes for 6 blocks, none of
    # them a claim given back unused.
    assert writes == ["reserve", "reserve", *["commit_and_reserve"] * 4, "commit_range",
                      "commit_range"]  # fmt: skip


async def test_a_run_goes_on_writing_while_its_last_block_is_committed(
    manager: CacheManager,
) -> None:
    """The commit of a block (and the claim of the one after the next) runs beside the
    fetch: while it is slow, the run writes the next block, whose claim it holds."""
    index = manager.index
    real_run = index.run
    seen: list[tuple[int, int]] = []  # (end of the committed block, the run's position after)

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await real_run(fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "commit_and_reserve":
            await trio.sleep(0.05)  # a slow index
            [entry] = manager._entries.values()
            seen.append((args[3], max((r.position for r in entry.runs), default=-1)))
        return result

    index.run = run  # type: ignore[method-assign]
    assert await read_all(manager) == MemoryProvider.blobs["mem://a"]
    assert seen, "no commit_and_reserve"
    for committed_end, position in seen:
        assert position > committed_end  # the run did not wait for the commit
