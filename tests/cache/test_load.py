"""The cache manager under the races a mixed load makes (issue 14's root causes), on a real
store and index, with a provider serving bytes from memory so each test controls the timing.

Each test names a failure the soak met and fails when its cause comes back:
- a reopen racing the end of a run read through a closed descriptor (EBADF);
- a run's unexpected error escaped into the manager's nursery, which cancelled it: readers
  then spun respawning runs that died at once (the busy loop), each leaving its Cancelled
  behind (the growth), until the nursery closed under them (the dead mount).
- an open that found the entry another open had loaded and closed meanwhile took it as it was,
  though nothing of this process had locked the file in between: the other daemon had dropped
  and punched a block of it, served as zeros (the windowed soak's wrong bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.memprovider import MemoryProvider, make_manager
from wtfs.cache.entry import FileRef
from wtfs.cache.manager import CacheManager
from wtfs.errors import TransferFailed, WtfsError
from wtfs.providers.base import Source

MiB = 1024 * 1024


def ref(name: str, size: int, version: str = "v1") -> FileRef:
    return FileRef(f"mem:{name}", version, f"item-{name}", size, Source(f"mem://{name}", size,
                   label=name), f"/{name}")  # fmt: skip


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[CacheManager]:
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://a"] = os.urandom(6 * MiB)
    MemoryProvider.blobs["mem://b"] = os.urandom(3 * MiB)
    async with make_manager(tmp_path, capacity=64 * MiB, block_size=MiB) as m:
        yield m


async def test_a_reopen_while_a_run_winds_down_never_reads_a_closed_descriptor(
    manager: CacheManager,
) -> None:
    """The soak's EBADF: open() awaited the index while the entry's last run, cancelled by the
    last close, ended and closed the descriptor; open() then kept the dead entry."""
    blob = MemoryProvider.blobs["mem://a"]
    index = manager.index
    real_run = index.run

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn == index.sync.open_entry:
            # This is the interleaving the load made: the run winding down ends *while* the
            # reopen waits for the index.
            while any(e.runs for e in manager._entries.values()):  # noqa: ASYNC110
                await trio.sleep(0.001)
            await trio.sleep(0.05)
        return await real_run(fn, *args, **kwargs)

    index.run = run  # type: ignore[method-assign]
    MemoryProvider.gate = trio.Event()  # the fetch stalls until the gate opens
    first = await manager.open(ref("a", len(blob)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_quietly, manager, first, 5 * MiB)
        await trio.testing.wait_all_tasks_blocked()
        await manager.release(first)  # the last close cancels the run: it winds down...
        MemoryProvider.gate.set()
        second = await manager.open(ref("a", len(blob)))  # ...while this open awaits the index
    data = await manager.read(second, 5 * MiB, 4096)
    assert data == blob[5 * MiB : 5 * MiB + 4096]
    await manager.release(second)
    assert manager._entries == {}  # every descriptor closed with its last reference


@contextlib.asynccontextmanager
async def two_daemons(
    tmp_path: Path, name: str
) -> AsyncIterator[tuple[CacheManager, CacheManager, FileRef, bytes]]:
    """Two daemons' managers on one store and index, and a 4 MiB file both can read."""
    MemoryProvider.reset()
    blob = os.urandom(4 * MiB)
    MemoryProvider.blobs[f"mem://{name}"] = blob
    async with (
        make_manager(tmp_path, capacity=64 * MiB, block_size=MiB, session_id="a") as a,
        make_manager(tmp_path, capacity=64 * MiB, block_size=MiB, session_id="b") as b,
    ):
        yield a, b, ref(name, len(blob)), blob


async def _read_quietly(manager: CacheManager, handle: object, offset: int) -> None:
    with contextlib.suppress(WtfsError):
        await manager.read(handle, offset, 4096)  # type: ignore[arg-type]


async def test_an_unexpected_error_in_a_run_fails_its_read_and_the_mount_keeps_serving(
    manager: CacheManager,
) -> None:
    """The soak's dead daemon: an OSError inside a run (a pwrite on a bad descriptor) went up
    into the manager's nursery, cancelled every run and closed the nursery to new ones."""
    MemoryProvider.explode = {"mem://a": OSError(errno.EBADF, "Bad file descriptor")}
    handle = await manager.open(ref("a", 6 * MiB))
    with pytest.raises(TransferFailed) as info:
        await manager.read(handle, 0, 4096)
    assert "Bad file descriptor" in info.value.cause
    await manager.release(handle)
    # The nursery is open and serving: another file reads, and the first does once it can.
    other = await manager.open(ref("b", 3 * MiB))
    assert await manager.read(other, MiB, 4096) == MemoryProvider.blobs["mem://b"][MiB : MiB + 4096]
    await manager.release(other)
    MemoryProvider.explode = {}
    again = await manager.open(ref("a", 6 * MiB))
    assert await manager.read(again, 0, 100) == MemoryProvider.blobs["mem://a"][:100]
    await manager.release(again)


async def test_a_failing_run_is_not_respawned_in_a_loop(manager: CacheManager) -> None:
    """The soak's busy loop and growth: readers whose runs kept dying at once respawned them
    without end. A read whose run fails gets the failure; it starts no other run."""
    MemoryProvider.explode = {"mem://a": RuntimeError("a bug in a provider")}
    handle = await manager.open(ref("a", 6 * MiB))
    with pytest.raises(TransferFailed):
        await manager.read(handle, 0, 4096)
    assert len(MemoryProvider.requests) == 1
    await manager.release(handle)


async def test_readers_of_a_mount_being_unmounted_fail_at_once(manager: CacheManager) -> None:
    """Unmounting cancels every run: the readers waiting on them fail with the cause instead of
    starting new runs into a nursery that is closing."""
    MemoryProvider.gate = trio.Event()  # never opened: the fetch stalls
    handle = await manager.open(ref("a", 6 * MiB))
    failures: list[WtfsError] = []

    async def read() -> None:
        try:
            await manager.read(handle, 0, 4096)
        except WtfsError as exc:
            failures.append(exc)

    with trio.fail_after(10):  # a reader respawning runs instead would never end
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(read)
            # The run reserves its first block (in a worker thread), then sends its request.
            while not MemoryProvider.requests:
                await trio.testing.wait_all_tasks_blocked(0.01)
            await trio.testing.wait_all_tasks_blocked()
            manager.shutdown()
    assert len(failures) == 4
    assert all("unmounted" in f.cause for f in failures)
    assert len(MemoryProvider.requests) == 1


async def test_a_read_waits_for_another_process_s_eviction_in_flight(tmp_path: Path) -> None:
    """The 10-minute soak's ENOSPC with the store half empty: two daemons' GC passes overlapped.
    The first had chosen its victims and was unlinking them (their bytes still counted) when
    the second needed room and found nothing left to evict or window. The read must wait for
    the room on its way, not fail."""
    MemoryProvider.reset()
    MemoryProvider.blobs["mem://full"] = os.urandom(8 * MiB)
    MemoryProvider.blobs["mem://next"] = os.urandom(2 * MiB)
    async with (
        make_manager(tmp_path, capacity=8 * MiB, block_size=MiB, session_id="a") as a,
        make_manager(tmp_path, capacity=8 * MiB, block_size=MiB, session_id="b") as b,
    ):
        full = await b.open(ref("full", 8 * MiB))
        assert await b.read(full, 0, 8 * MiB) == MemoryProvider.blobs["mem://full"]
        await b.release(full)
        # b's pass, its index half done: the entry is gone, its 8 MiB counted until unlinked.
        eviction = b.index.sync.evict_lru(0, b.owner.owner_id, "gc")
        assert eviction.unlink_id is not None and b.index.sync.summary().unlinking == 8 * MiB

        async def unlink_later() -> None:
            await trio.sleep(0.5)
            await b.space.settle(eviction)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(unlink_later)
            handle = await a.open(ref("next", 2 * MiB))
            with trio.fail_after(30):
                assert await a.read(handle, 0, MiB) == MemoryProvider.blobs["mem://next"][:MiB]
            await a.release(handle)


async def test_an_open_that_finds_an_entry_loaded_meanwhile_reads_what_the_store_holds_now(
    tmp_path: Path,
) -> None:
    """The windowed soak's span of zeros (a whole block of huge.bin). An open waited for its lock
    while another open of the same process loaded the entry, read it and closed it; a run of
    that open still held the entry. In that gap nothing of this process locked the file, and
    the other daemon dropped a block of it (its readers pinned elsewhere) and punched it. The
    waiting open then took the entry it found as it was: still whole to this process, so its
    read served the punched block as zeros. An entry no handle of ours holds must be checked
    against the index's row, read after our lock, however the open came to it."""
    async with two_daemons(tmp_path, "huge") as (a, b, f, blob):
        index = a.index
        real_run = index.run
        held: list[Any] = []
        armed = [True]  # the first open_entry only: the one of the open under test

        async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
            if fn == index.sync.open_entry and armed:
                armed.clear()
                # While this open waits for its lock, an earlier open of this process loads the
                # entry, reads it whole and closes it, a run of its still winding down...
                first = await a.open(f)
                assert await a.read(first, 0, len(blob)) == blob
                held.append(first.entry)
                first.entry.retain()
                await a.release(first)
                # ...and the other daemon, reading elsewhere in the file, drops block 0.
                other = await b.open(f)
                assert await b.read(other, MiB, 4096) == blob[MiB : MiB + 4096]
                freed, _ = await b.space.window(MiB)
                assert freed == MiB
                assert (await b.index.run(b.index.sync.get_entry, f.key)).ranges.find_missing(
                    0, MiB
                ) == [(0, MiB)]
            return await real_run(fn, *args, **kwargs)

        index.run = run  # type: ignore[method-assign]
        handle = await a.open(f)
        index.run = real_run  # type: ignore[method-assign]
        assert held and handle.entry is held[0]  # the open took the entry it found loaded
        data = bytes(await a.read(handle, 0, MiB))
        assert data == blob[:MiB], "served bytes the other daemon had dropped"
        await a.release(handle)
        a._release_ref(held[0])


async def test_a_read_that_outlasts_half_a_lease_renews_it_before_serving(tmp_path: Path) -> None:
    """A read that waited while this process could not renew its lease (stopped, or its index
    stalled) must not serve what it knew before: its locks may have been taken by another host
    meanwhile, which then dropped and punched those bytes. It renews first, and on finding its
    owner gone registers again and looks at the file anew."""
    async with two_daemons(tmp_path, "f") as (a, b, f, blob):
        mine = await a.open(f)
        assert await a.read(mine, 4096, MiB - 4096) == blob[4096:MiB]  # no read-ahead
        MemoryProvider.gate = trio.Event()  # the next fetch stalls
        got: list[bytes] = []

        async def read_across() -> None:  # the end of block 0 (present) and block 1 (not yet)
            got.append(bytes(await a.read(mine, MiB - 4096, 8192)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_across)
            while not MemoryProvider.requests[1:]:
                await trio.testing.wait_all_tasks_blocked(0.01)
            # Meanwhile this process's lease ran out: its owner, locks and claims are reclaimed
            # (as another host does), and the other daemon, its reader far ahead, drops block 0.
            a._renewed_at = trio.current_time() - a.settings.lease
            a.index.sync.unregister_owner(a.owner.owner_id)
            other = await b.open(f)
            b.index.sync.set_pins(f.key, [(other.lock_id, 3 * MiB, 4 * MiB)])
            freed, _ = await b.space.window(MiB)
            assert freed > 0
            MemoryProvider.gate.set()
        assert got == [blob[MiB - 4096 : MiB + 4096]], "served bytes dropped as the lease ran out"
        await a.release(mine)
        await b.release(other)
