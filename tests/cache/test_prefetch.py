"""A prefetch beside live reads, on a real store and index with a provider in memory (so the
test decides when the "remote" answers): it starts no fetch while a live read waits for bytes,
then fetches everything, once, in one stream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.cache.test_load import ref
from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.manager import CacheManager
from wtfs.cache.prefetch import Outcome, Prefetcher

MiB = 1024 * 1024


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[CacheManager]:
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://big"] = os.urandom(6 * MiB)
    MemoryProvider.blobs["mem://live"] = os.urandom(2 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as m:
        yield m


async def test_a_prefetch_waits_while_a_live_read_waits_for_bytes(manager: CacheManager) -> None:
    index = manager.index
    prefetch_id = await index.run(index.sync.prefetch_create, session_id="s1", paths=["/"],
                                  owner_id=manager.owner.owner_id)  # fmt: skip
    resume = trio.Event()
    MemoryProvider.pause = {"mem://live": (MiB // 2, resume)}
    MemoryProvider.paused = trio.Event()
    live = await manager.open(ref("live", 2 * MiB))
    outcome: list[Outcome] = []
    read: list[bytes] = []

    async def read_live() -> None:
        read.append(bytes(await manager.read(live, 0, MiB)))

    async def prefetch() -> None:
        prefetcher = Prefetcher(manager, prefetch_id, start_fraction=0.9)
        outcome.append(await prefetcher.run([ref("big", 6 * MiB)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_live)
        await MemoryProvider.paused.wait()  # the live read waits in the middle of its bytes
        nursery.start_soon(prefetch)
        await trio.sleep(0.5)
        assert [url for url, _, _ in MemoryProvider.requests] == ["mem://live"]
        resume.set()
    assert read == [MemoryProvider.blobs["mem://live"][:MiB]]
    assert outcome[0].state == "done" and outcome[0].failures == []
    big = [(start, end) for url, start, end in MemoryProvider.requests if url == "mem://big"]
    assert big == [(0, 6 * MiB)]  # one stream: one request for the file's 6 blocks
    row = await index.run(index.sync.get_entry, ref("big", 6 * MiB).key)
    assert row is not None and row.complete
    record = await index.run(index.sync.get_prefetch, prefetch_id)
    assert record is not None
    assert (record.state, record.bytes_done, record.bytes_fetched) == ("done", 6 * MiB, 6 * MiB)
    await manager.release(live)
