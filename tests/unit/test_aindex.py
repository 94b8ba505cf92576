"""The index's one worker: bookkeeping steps aside for the calls readers wait for, within a
bound (wtfs.cache.aindex). Against a real SQLite index; the call that holds the worker waits on
a gate, so the order of the others is what the queue decides."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing
from wtfs_index import Index

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.store import Store


@pytest.fixture
def sqlite_index(local_store: Store) -> Iterator[Index]:
    index = local_store.open_index()
    yield index
    index.close()


async def test_bookkeeping_waits_for_the_calls_readers_wait_for(sqlite_index: Index) -> None:
    aindex = AsyncIndex(sqlite_index)
    gate = threading.Event()
    order: list[str] = []

    async def call(name: str, fn: Callable[[], object]) -> None:
        await aindex.run(fn)
        order.append(name)

    async def bookkeeping(name: str) -> None:
        async with aindex.aside():
            await aindex.run(sqlite_index.summary)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "holder", lambda: gate.wait(10))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(bookkeeping, "transfer record")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "open", sqlite_index.summary)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert order == ["holder", "open", "transfer record"]


async def test_bookkeeping_is_late_under_a_steady_load_never_starved(sqlite_index: Index) -> None:
    aindex = AsyncIndex(sqlite_index)
    order: list[str] = []
    stop = trio.Event()

    async def reader(n: int) -> None:
        while not stop.is_set():
            await aindex.run(time.sleep, 0.002)
            order.append(f"read {n}")

    async def bookkeeping() -> None:
        async with aindex.aside():
            await aindex.run(sqlite_index.summary)
        order.append("transfer record")

    async with trio.open_nursery() as nursery:
        for n in range(3):  # always one waiting while another runs
            nursery.start_soon(reader, n)
        await trio.sleep(0.05)
        with trio.fail_after(10):
            await bookkeeping()
        await trio.sleep(0.05)
        stop.set()
    done = order.index("transfer record")
    assert 0 < done < len(order) - 1, "the record waited for the load to end"
