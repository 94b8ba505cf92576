"""AsyncIndex: which index calls run on the event loop's own thread, and that none of them makes
the loop wait (a real SQLite index in a fresh store; another process's write lock is a second
sqlite3 connection holding BEGIN IMMEDIATE, as another daemon's transaction would)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from wtfs_index import Owner
from wtfs_index.sqlite import INDEX_FILE, SqliteIndex

from wtfs.cache import quick
from wtfs.cache.aindex import AsyncIndex


class WatchedIndex(SqliteIndex):
    """The real SQLite index, noting the thread of each `transfer_create` and `transfers`.

    `Quick` times the calls on `clock` (the fixture puts it in place of `time.perf_counter`),
    which a `transfer_create` moves on by a tenth of the budget, or by `slow` (as `reserve`
    grows slow in a store of many entries): what the real call costs on a loaded machine
    (0.2-2 ms on a fresh file here) must not decide where the next one runs.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, timeout=10)
        self.threads: list[int] = []
        self.slow = 0.0
        self.clock = 0.0

    def transfer_create(self, **kwargs: Any) -> int:
        self.threads.append(threading.get_ident())
        self.clock += self.slow or quick.QUICK_BUDGET / 10
        return super().transfer_create(**kwargs)

    def transfers(self, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        return super().transfers(**kwargs)


@pytest.fixture
def watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[WatchedIndex, Owner]]:
    index = WatchedIndex(tmp_path / INDEX_FILE)
    monkeypatch.setattr(quick, "time", SimpleNamespace(perf_counter=lambda: index.clock))
    owner = Owner.current("me")
    index.register_owner(owner, "mount")
    yield index, owner
    index.close()


async def create(index: AsyncIndex, owner: Owner) -> int:
    """A transfer record, as a fetch run makes one."""
    return await index.run(
        index.sync.transfer_create, key="k", item_id="i", path="/k", session_id="s",
        owner_id=owner.owner_id, source="girder:x", size=10, start_offset=0,
    )  # fmt: skip


async def test_a_small_call_runs_on_the_loop_thread_once_measured(
    watched: tuple[WatchedIndex, Owner],
) -> None:
    sync, owner = watched
    index = AsyncIndex(sync)
    loop = threading.get_ident()
    for _ in range(3):
        await create(index, owner)
        await index.run(sync.transfers)
    creates, listings = sync.threads[0::2], sync.threads[1::2]
    assert creates[0] != loop  # its first run measures it, on the worker thread
    assert creates[1:] == [loop, loop]
    assert loop not in listings  # not one of the index's quick calls: always the thread
    assert len(await index.run(sync.transfers)) == 3


async def test_a_small_call_grown_slow_goes_back_to_the_thread(
    watched: tuple[WatchedIndex, Owner],
) -> None:
    sync, owner = watched
    index = AsyncIndex(sync)
    loop = threading.get_ident()
    await create(index, owner)
    await create(index, owner)
    assert sync.threads[-1] == loop
    sync.slow = 10 * quick.QUICK_BUDGET
    for _ in range(5):
        await create(index, owner)
    # one slow run on the loop thread lifts its mean over the budget: the rest are threaded
    assert sync.threads[2:] == [loop] + [sync.threads[3]] * 4
    assert sync.threads[3] != loop


async def test_a_small_call_waits_for_another_process_on_the_thread_not_the_loop(
    watched: tuple[WatchedIndex, Owner], tmp_path: Path
) -> None:
    sync, owner = watched
    index = AsyncIndex(sync)
    loop = threading.get_ident()
    await create(index, owner)
    await create(index, owner)  # measured: it runs on the loop thread now
    assert sync.threads[-1] == loop
    other = sqlite3.connect(tmp_path / INDEX_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0
    result: list[int] = []

    async def call() -> None:
        result.append(await create(index, owner))

    async def tick() -> None:
        nonlocal ticks
        while not result:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        nursery.start_soon(tick)
        await trio.sleep(0.3)
        assert not result and ticks > 5  # it waits, and the loop goes on meanwhile
        other.execute("ROLLBACK")
        other.close()
    assert result
    assert sync.threads[-1] != loop  # tried on the loop (busy: nothing done), then the thread
    assert sync.threads[-2] == loop
    assert len(await index.run(sync.transfers)) == 3
