"""The private store on real mounts of a real Girder: range reads, capacity under pressure,
ENOSPC, locks as leases across a kill -9, resume after a crash, GC water marks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import BigFile, MiB
from tests.support.index import entry_of, store_index
from tests.support.mounts import drop_page_cache, mounted, start_mount
from wtfs.cache.store import Store

BLOCK = 4 * MiB


def session_of(*files: BigFile) -> list[dict[str, str]]:
    return [{"itemId": f.item_id, "mountPath": f"/{f.name}"} for f in files]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_4k_read_at_900mib_of_uncached_1gib_fetches_under_two_blocks(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile], girder: LocalGirder
) -> None:
    one = big["one-gib.bin"]
    latencies = []
    with mounted(tmp_path, base_config, session_of(one)) as m:
        path = m.mountpoint / one.name
        girder.reset_stats()
        with open(path, "rb") as f:
            assert os.pread(f.fileno(), 4096, 900 * MiB) == one.expected(900 * MiB, 4096)
        stats = girder.stats()
        assert stats["downloads"] >= 1
        assert stats["download_bytes"] < 2 * BLOCK
        # First byte at 20 random offsets, each in a block not yet fetched.
        rng = random.Random(3)
        blocks = rng.sample(range(one.size // BLOCK), 21)
        for block in blocks:
            if block == 900 * MiB // BLOCK:
                continue
            offset = block * BLOCK + rng.randrange(BLOCK - 4096)
            start = time.perf_counter()
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), 4096, offset)
            latencies.append(time.perf_counter() - start)
            assert data == one.expected(offset, 4096)
    print(f"\nfirst byte at a random offset (open+read, 4 KiB): median "
          f"{statistics.median(latencies) * 1000:.1f} ms over {len(latencies)}")  # fmt: skip


@pytest.mark.slow
def test_capacity_256mib_holds_under_4_readers_of_1gib(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    files = [big[f"p{n:02d}.bin"] for n in range(16)]
    capacity = 256 * MiB
    config = {**base_config, "private_storage_capacity": capacity,
              "gc_collect_start_fraction": 0.9, "gc_collect_end_fraction": 0.5}  # fmt: skip
    store = Store(Path(config["private_storage_path"]))
    samples: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(store.disk_usage())
            time.sleep(0.05)

    def reader(mine: list[BigFile], root: Path) -> None:
        try:
            for f in mine:
                assert sha256(root / f.name) == f.sha256, f.name
        except BaseException as exc:
            errors.append(exc)

    with mounted(tmp_path, config, session_of(*files)) as m:
        sampler = threading.Thread(target=sample)
        sampler.start()
        readers = [
            threading.Thread(target=reader, args=(files[n::4], m.mountpoint)) for n in range(4)
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout=600)
        done.set()
        sampler.join()
        assert not errors, errors
    peak = max(samples)
    print(f"\npeak store usage {peak / MiB:.1f} MiB of {capacity / MiB:.0f} MiB "
          f"({len(samples)} samples every 50 ms)")  # fmt: skip
    assert len(samples) > 10
    assert peak <= capacity


def test_files_read_whole_and_held_open_make_room_for_another_reader(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    """Open files keep what their readers need now, not every byte: two 8 MiB files read whole
    and held open do not stop a third from being read in a 16 MiB store."""
    small = [big[f"s{n:02d}.bin"] for n in range(3)]
    config = {**base_config, "private_storage_capacity": 16 * MiB, "block_size": "1MiB"}
    with mounted(tmp_path, config, session_of(*small)) as m:
        held = [open(m.mountpoint / f.name, "rb") for f in small[:2]]  # noqa: SIM115
        try:
            for f, handle in zip(small, held, strict=False):
                assert hashlib.sha256(handle.read()).hexdigest() == f.sha256
            assert sha256(m.mountpoint / small[2].name) == small[2].sha256
            for f, handle in zip(small, held, strict=False):  # and they still read right
                handle.seek(0)
                assert hashlib.sha256(handle.read()).hexdigest() == f.sha256
        finally:
            for handle in held:
                handle.close()
        reasons = {e["reason"] for e in m.status()["evictions"]}
        assert "window" in reasons, reasons


def test_read_gets_enospc_when_the_blocks_open_readers_need_fill_the_store(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    """ENOSPC only when the blocks open readers need now do not fit: here each open file's
    reader sits in its first block, and a 4 MiB store holds at most four of them."""
    files = [big[f"s{n:02d}.bin"] for n in range(7)]
    config = {**base_config, "private_storage_capacity": 4 * MiB, "block_size": "1MiB"}
    with mounted(tmp_path, config, session_of(*files)) as m:
        held: list[Any] = []
        refused: OSError | None = None
        try:
            for f in files:
                handle = open(m.mountpoint / f.name, "rb")  # noqa: SIM115
                held.append(handle)
                try:
                    assert os.pread(handle.fileno(), 4096, 0) == f.expected(0, 4096)
                except OSError as exc:
                    refused = exc
                    break
            assert refused is not None, "every reader's blocks fit in a 4 MiB store?"
            assert refused.errno == errno.ENOSPC
            assert len(held) >= 3  # two pinned blocks each at most: two readers always fit
            failures = m.status()["failures"]
            assert any("private store full" in f["cause"] for f in failures)
        finally:
            for handle in held:
                handle.close()
        # Once the files are closed they are no longer locked: the GC makes room.
        assert sha256(m.mountpoint / files[-1].name) == files[-1].sha256
        assert "Traceback" not in m.log()


def test_killed_mount_loses_its_locks_and_a_second_mount_keeps_its_own(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    x, y = big["s03.bin"], big["s04.bin"]
    first = start_mount(tmp_path / "a", base_config, session_of(x))
    second = start_mount(tmp_path / "b", base_config, session_of(y))
    try:
        held_x = open(first.mountpoint / x.name, "rb")  # noqa: SIM115
        held_y = open(second.mountpoint / y.name, "rb")  # noqa: SIM115
        assert hashlib.sha256(held_x.read()).hexdigest() == x.sha256
        assert hashlib.sha256(held_y.read()).hexdigest() == y.sha256
        locked = {lock["itemId"] for lock in second.status()["locks"]}
        assert locked == {x.item_id, y.item_id}
        first.kill(signal.SIGKILL)
        with contextlib.suppress(OSError):  # ENOTCONN: its daemon is gone
            held_x.close()
        # A new mount on the dead mountpoint cleans it up and reclaims the dead owner's locks.
        again = start_mount(tmp_path / "a", base_config, session_of(x), mountpoint=first.mountpoint)
        try:
            locks = again.status()["locks"]
            assert [lock["itemId"] for lock in locks] == [y.item_id], locks
            index = store_index(base_config)
            evicted = index.evict_lru(0, "test", "test")
            index.close()
            assert {e.item_id for e in evicted} == {x.item_id}  # y stays: its mount is alive
            assert sha256(again.mountpoint / x.name) == x.sha256
        finally:
            again.stop()
        held_y.close()
    finally:
        first.stop()
        second.stop()


@pytest.mark.slow
def test_kill_during_256mib_fetch_then_remount_fetches_only_the_rest(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile], girder: LocalGirder
) -> None:
    quarter = big["quarter-gib.bin"]
    girder.throttle(64 * MiB)
    try:
        mount = start_mount(tmp_path, base_config, session_of(quarter))
        reader = threading.Thread(target=_read_quietly, args=(mount.mountpoint / quarter.name,))
        reader.start()
        time.sleep(2.0)
        mount.kill(signal.SIGKILL)
        reader.join(timeout=30)
        mount.stop()
    finally:
        girder.throttle(None)
    row = entry_of(base_config, f"girder:{_file_id(girder, quarter)}")
    assert row is not None
    present = row.present
    assert 0 < present < quarter.size
    girder.reset_stats()
    with mounted(tmp_path / "again", base_config, session_of(quarter)) as m:
        assert sha256(m.mountpoint / quarter.name) == quarter.sha256
        fetched = girder.stats()["download_bytes"]
    print(f"\nkilled after {present / MiB:.0f} MiB; the remount fetched {fetched / MiB:.0f} MiB")
    assert fetched <= quarter.size - present


def test_gc_pass_with_start_09_end_05_evicts_lru_first(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    small = [big[f"s{n:02d}.bin"] for n in range(12)]  # 96 MiB
    config = {**base_config, "private_storage_capacity": 100 * MiB, "gc_run_interval": 3600,
              "gc_collect_start_fraction": 0.9, "gc_collect_end_fraction": 0.5}  # fmt: skip
    with mounted(tmp_path, config, session_of(*small)) as m:
        for f in small:
            assert sha256(m.mountpoint / f.name) == f.sha256
            time.sleep(0.01)
        drop_page_cache()
        time.sleep(1.5)  # let the daemon flush its batched atimes
        before = m.status()["store"]["usage"]
        assert before >= 0.9 * 100 * MiB
        out = m.wtfs("gc").stdout
        assert "evicted 6 entries" in out  # 96 - 6 × 8 = 48 MiB ≤ 50 %
        status = m.status()
        assert status["store"]["usage"] <= 50 * MiB
        evicted = {e["itemId"] for e in status["evictions"]}
        assert evicted == {f.item_id for f in small[:6]}  # the least recently used


def _read_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # the daemon is killed under us
        sha256(path)


def _file_id(girder: LocalGirder, f: BigFile) -> str:
    files = list(girder.client().listFile(f.item_id))
    return str(files[0]["_id"])


def test_a_file_larger_than_the_store_reads_sequentially_in_a_sliding_window(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    f = big["p14.bin"]  # 64 MiB through a 24 MiB store
    capacity = 24 * MiB
    config = {**base_config, "private_storage_capacity": capacity}
    store = Store(Path(config["private_storage_path"]))
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(store.disk_usage())
            time.sleep(0.02)

    with mounted(tmp_path, config, session_of(f)) as m:
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            assert sha256(m.mountpoint / f.name) == f.sha256
        finally:
            done.set()
            sampler.join()
        status = m.status("--all")
        assert status["failures"] == []  # read-ahead that found no room stopped quietly
        assert all(t["status"] == 3 for t in status["transfers"])
        assert "dropped" in m.log()
    assert max(samples) <= capacity
