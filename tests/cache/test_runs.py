"""What a streaming run asks of the index, on a real store and SQLite index: one write
transaction per block. On PostgreSQL each transaction costs round trips (BEGIN with the write
lock, the statements, COMMIT), so a run that committed a block and then reserved the next in
two made the index the bottleneck of a cold read (bench row 2e)."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

from tests.cache.test_load import ref
from tests.support.memprovider import MemoryProvider, make_manager

MiB = 1024 * 1024


async def test_a_run_streaming_a_file_makes_one_index_write_per_block(tmp_path: Path) -> None:
    MemoryProvider.reset()
    blob = os.urandom(6 * MiB)
    MemoryProvider.blobs["mem://a"] = blob
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
