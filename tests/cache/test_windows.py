"""Files larger than the store, read by several processes at once: each process's readers keep
the blocks they need now (their pins), the rest of an open file may be dropped by any of them,
and no reader ever serves a byte it does not hold. Two cache managers on one store and one index
stand for two daemons (two owners); the provider serves bytes from memory."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.entry import FileRef
from wtfs.cache.manager import CacheManager
from wtfs.providers.base import Source

MiB = 1024 * 1024
CAPACITY = 8 * MiB
SIZE = 20 * MiB  # 2.5x the store


def ref(size: int) -> FileRef:
    return FileRef("mem:huge", "v1", "item-huge", size,
                   Source("mem://huge", size, label="huge"), "/huge")  # fmt: skip


@asynccontextmanager
async def two_daemons(tmp_path: Path, capacity: int) -> AsyncIterator[list[CacheManager]]:
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://huge"] = os.urandom(SIZE)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            make_manager(tmp_path, capacity=capacity, block_size=MiB, session_id="a")
        )
        second = await stack.enter_async_context(
            make_manager(tmp_path, capacity=capacity, block_size=MiB, session_id="b")
        )
        yield [first, second]


async def _read_all(manager: CacheManager, start: int, chunk: int, wrong: list[str]) -> None:
    """Read the whole file from `start`, wrapping around, comparing every byte."""
    blob = MemoryProvider.blobs["mem://huge"]
    handle = await manager.open(ref(SIZE))
    try:
        for n in range(SIZE // chunk):
            offset = (start + n * chunk) % SIZE
            data = await manager.read(handle, offset, chunk)
            if data != blob[offset : offset + chunk]:
                wrong.append(f"{manager.session_id}@{offset}")
    finally:
        await manager.release(handle)


async def test_two_processes_read_a_file_larger_than_the_store_at_distant_offsets(
    tmp_path: Path,
) -> None:
    async with two_daemons(tmp_path, CAPACITY) as managers:
        await _two_readers(managers)


async def _two_readers(managers: list[CacheManager]) -> None:
    first, second = managers
    wrong: list[str] = []
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, first.index.sync.usage())
            await trio.sleep(0.01)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as readers:
                readers.start_soon(_read_all, first, 0, 256 * 1024, wrong)
                readers.start_soon(_read_all, second, SIZE // 2, 256 * 1024, wrong)
            nursery.cancel_scope.cancel()
    assert not wrong, "\n".join(wrong)
    assert peak <= CAPACITY
    reasons = {e.reason for e in first.index.sync.evictions(1000)}
    assert "window" in reasons  # the bytes came and went through windows


async def test_many_random_readers_in_two_processes_never_read_a_dropped_byte(
    tmp_path: Path,
) -> None:
    """Random readers pin and re-pin all over a windowed file while sequential ones drop what
    they left behind: every 4 KiB read is compared with the source. Six readers pin at most
    two 1 MiB blocks each: a 16 MiB store holds what they need at once (a smaller one would
    rightly answer ENOSPC)."""
    async with two_daemons(tmp_path, 2 * CAPACITY) as managers:
        await _many_readers(managers)


async def _many_readers(managers: list[CacheManager]) -> None:
    blob = MemoryProvider.blobs["mem://huge"]
    wrong: list[str] = []

    async def random_reader(manager: CacheManager, seed: int) -> None:
        rng = random.Random(seed)
        handle = await manager.open(ref(SIZE))
        try:
            for _ in range(150):
                offset = rng.randrange(SIZE - 4096)
                data = await manager.read(handle, offset, 4096)
                if data != blob[offset : offset + 4096]:
                    e = handle.entry
                    row = manager.index.sync.get_entry(e.ref.key)
                    locks = [(lk.owner_id[-4:], lk.pin_start, lk.pin_end)
                             for lk in manager.index.sync.locks(manager.owner)]  # fmt: skip
                    wrong.append(
                        f"random {manager.session_id}@{offset} zeros={not any(data)} "
                        f"pin={handle.pin} windowed={e.windowed} complete={e.complete} "
                        f"mine={list(e.ranges)}@{e.ranges.gen} "
                        f"index={list(row.ranges) if row else None}@{row.ranges.gen if row else 0}"
                        f" runs={[(r.start, r.claimed_from, r.position, r.end) for r in e.runs]} "
                        f"locks={locks}"
                    )
        finally:
            await manager.release(handle)

    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            for n, manager in enumerate(managers):
                nursery.start_soon(_read_all, manager, n * 7 * MiB, MiB, wrong)
                for k in range(2):
                    nursery.start_soon(random_reader, manager, 10 * n + k)
    assert not wrong, "\n".join(wrong)


async def test_bytes_a_running_fetch_committed_and_another_process_dropped_are_fetched_again(
    tmp_path: Path,
) -> None:
    """A run's bytes, once committed, are the index's to vouch for: another process may drop
    them while the run goes on (outside every pin). A reader that pins them later must fetch
    them again, not take them as written by the run (it would read the hole's zeros)."""
    async with two_daemons(tmp_path, 64 * MiB) as (a, b):
        blob = MemoryProvider.blobs["mem://huge"]
        resume = trio.Event()
        MemoryProvider.pause["mem://huge"] = (2 * MiB, resume)
        MemoryProvider.paused = trio.Event()
        here, there = await a.open(ref(SIZE)), await b.open(ref(SIZE))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.read, here, 0, 4096)  # a sequential run from 0: 16 blocks
            await MemoryProvider.paused.wait()  # it committed blocks 0 and 1, and waits
            entry = here.entry
            # Both readers move on (their pins far from the start), the entry is windowed and
            # the other process drops what lies behind them: blocks 0 and 1.
            await a._set_pins(entry, [(here, (10 * MiB, 12 * MiB))])
            await b._set_pins(there.entry, [(there, (10 * MiB, 12 * MiB))])
            dropped = await b.index.run(b.index.sync.window, 2 * MiB, b.owner.owner_id, align=MiB)
            assert [(p.start, p.end) for p in dropped.eviction.punches] == [(0, 2 * MiB)]
            await b.space.settle(dropped.eviction)
            assert await a.read(here, 4096, 4096) == blob[4096:8192]
            resume.set()
        await a.release(here)
        await b.release(there)


async def test_a_read_while_the_pins_change_never_serves_bytes_the_new_pins_let_go(
    tmp_path: Path,
) -> None:
    """Once a process's pins are in the index, others may drop everything outside them: a read
    served while that transaction is still on its way back must already go through the pins."""
    async with two_daemons(tmp_path, 64 * MiB) as (a, b):
        blob = MemoryProvider.blobs["mem://huge"]
        here, there = await a.open(ref(SIZE)), await b.open(ref(SIZE))
        for offset in range(0, SIZE, MiB):  # the whole file, complete, read through `here`
            await a.read(here, offset, MiB)
        with trio.fail_after(10):  # the last run marks it complete as it ends
            while not here.entry.complete:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert not here.entry.windowed
        # The other process windows the file and pins its reader; ours has yet to pin.
        result = await b.index.run(b.index.sync.window, MiB, b.owner.owner_id, align=MiB)
        there.next_offset = 12 * MiB  # its reader is far from the start
        await b.pin_locks(result.to_pin)
        index, real_run = a.index, a.index.run
        served: list[bytes] = []
        fired = False
        came = trio.Event()

        async def read() -> None:
            came.set()
            served.append(bytes(await a.read(here, 0, 4096)))

        async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal fired
            answer = await real_run(fn, *args, **kwargs)
            if fn == index.sync.set_pins and not fired:
                fired = True
                # Our pins are committed: the other process drops what they let go...
                dropped = await b.index.run(
                    b.index.sync.window, 4 * MiB, b.owner.owner_id, align=MiB
                )
                await b.space.settle(dropped.eviction)
                assert [(p.start, p.end) for p in dropped.eviction.punches] == [(0, 4 * MiB)]
                # ...and a read comes in before this answer is back.
                nursery.start_soon(read)
                await came.wait()
                await trio.testing.wait_all_tasks_blocked()
            return answer

        index.run = run  # type: ignore[method-assign]
        here.next_offset = 12 * MiB  # the reader is far from the start now
        async with trio.open_nursery() as nursery:
            await a.pin_locks([(here.lock_id, here.entry.ref.key)])
        assert served == [blob[:4096]]
        await a.release(here)
        await b.release(there)


async def test_a_handle_read_ahead_in_parallel_streams_a_file_larger_than_the_store(
    tmp_path: Path,
) -> None:
    """The kernel reads ahead with several requests at once on one handle. Each used to pin
    its own span away from the others' (and each change undid the one before): the reads
    took turns re-pinning and the stream stopped once the store was full."""
    async with two_daemons(tmp_path, CAPACITY) as (a, _):
        blob = MemoryProvider.blobs["mem://huge"]
        handle = await a.open(ref(SIZE))
        wrong: list[int] = []

        async def one(offset: int) -> None:
            if await a.read(handle, offset, MiB) != blob[offset : offset + MiB]:
                wrong.append(offset)

        with trio.fail_after(60):
            for offset in range(0, SIZE, 3 * MiB):
                async with trio.open_nursery() as nursery:
                    for k in range(3):
                        if offset + k * MiB < SIZE:
                            nursery.start_soon(one, offset + k * MiB)
        assert wrong == []
        await a.release(handle)
