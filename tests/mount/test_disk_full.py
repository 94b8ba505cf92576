"""A store on a filesystem smaller than its configured capacity: pressure, not a crash.

Each test puts the store (its data files and its SQLite index) on a real 48 MiB tmpfs, mounted
for the test and unmounted in teardown, with `private_storage_capacity: 1GiB`. What is checked:
files bigger than the filesystem stream with the right bytes (the windows make room inside the
files being read, the GC evicts closed ones); a read that cannot get room fails with ENOSPC and
its cause is recorded; complete cached files go on being served; the daemon stays up and logs
no traceback; `wtfs status` shows the capacity the filesystem allows beside the configured one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_index import Owner

from tests.support.bigdata import BigFile, MiB, import_files
from tests.support.index import store_index
from tests.support.mounts import Mount, mounted, run_wtfs
from wtfs.cache.space import auto_reserve
from wtfs.cache.store import Store

FS_SIZE = 48 * MiB
SIZES = {"huge-a.bin": 64 * MiB, "huge-b.bin": 80 * MiB,
         **{f"m{n}.bin": 12 * MiB for n in range(4)}}  # fmt: skip


@pytest.fixture(scope="module")
def files(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, BigFile]:
    return import_files(girder, tmp_path_factory.mktemp("fulldata"), SIZES)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB tmpfs, unmounted (lazily if something still holds it) in teardown."""
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE // MiB}m,mode=0700",
                    "tmpfs", str(where)], check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def config_on(base_config: dict[str, Any], fs: Path, **extra: Any) -> dict[str, Any]:
    return {**base_config, "private_storage_path": str(fs / "store"),
            "private_storage_capacity": "1GiB", "block_size": "1MiB", **extra}  # fmt: skip


def session(*files: BigFile) -> list[dict[str, str]]:
    return [{"itemId": f.item_id, "mountPath": f"/{f.name}"} for f in files]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def read_all(paths: list[Path]) -> dict[Path, str | OSError]:
    """Read every path at once, each in its own thread: sha256, or the error."""
    results: dict[Path, str | OSError] = {}

    def work(path: Path) -> None:
        try:
            results[path] = sha256_of(path)
        except OSError as exc:
            results[path] = exc

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
        assert not t.is_alive(), "a read is still blocked after 240 s"
    return results


def fill(fs: Path, leave: int = 0) -> Path:
    """Take the filesystem's free space (but `leave` bytes) with a file of someone else's."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize - leave
        with contextlib.suppress(OSError):  # ENOSPC: full, as meant
            while free > 0:
                f.write(b"\xff" * min(MiB, free))
                free -= MiB
    return filler


def assert_alive(m: Mount) -> None:
    assert m.process.poll() is None, f"the daemon died:\n{m.log()}"
    assert os.path.ismount(m.mountpoint)


def test_files_bigger_than_the_filesystem_stream_with_the_right_bytes(
    tmp_path: Path, base_config: dict[str, Any], small_fs: Path, files: dict[str, BigFile]
) -> None:
    huge = [files["huge-a.bin"], files["huge-b.bin"]]
    config = config_on(base_config, small_fs)
    with mounted(tmp_path, config, session(*files.values())) as m:
        for f in huge:  # one after the other: the second evicts the first
            assert sha256_of(m.mountpoint / f.name) == f.sha256, f.name
        results = read_all([m.mountpoint / f.name for f in huge])  # both at once
        for f in huge:
            assert results[m.mountpoint / f.name] == f.sha256, (f.name, results)
        assert_alive(m)
        status = m.status()["store"]
        assert status["capacity"] == 1024 * MiB
        assert 0 < status["effectiveCapacity"] < FS_SIZE, status
        assert status["usage"] <= status["effectiveCapacity"], status
        plain = m.wtfs("status").stdout
        assert "of 1.0 GiB configured" in plain, plain
        assert "the filesystem holds" in plain, plain
        log = m.log()
        assert log.count("private_storage_capacity") == 1, log  # the one warning at start
    assert "Traceback" not in log


def test_a_read_that_cannot_get_room_fails_with_enospc_and_cached_files_go_on(
    tmp_path: Path,
    base_config: dict[str, Any],
    small_fs: Path,
    files: dict[str, BigFile],
    girder: LocalGirder,
) -> None:
    """Another process takes the disk but less than the reserve kept for the index: no fetch
    finds room (the cached file is pinned, so neither the GC nor a window may drop it), the
    read gets ENOSPC and the index records why; the cached file is still served from the
    store, and once the disk has room again the read succeeds."""
    cached, wanted = files["m0.bin"], files["m1.bin"]
    config = config_on(base_config, small_fs)
    with mounted(tmp_path, config, session(cached, wanted)) as m:
        assert sha256_of(m.mountpoint / cached.name) == cached.sha256
        index = store_index(config)
        try:
            index.hold_item(cached.item_id, "pins", Owner.lease_only("test-pin"), expires_in=600)
        finally:
            index.close()
        reserve = auto_reserve(Store(small_fs / "store"))
        filler = fill(small_fs, leave=reserve // 2)
        with pytest.raises(OSError) as info:
            sha256_of(m.mountpoint / wanted.name)
        assert info.value.errno == errno.ENOSPC, info.value
        failures = m.status()["failures"]
        assert any("disk under the store is full" in f["cause"] for f in failures), failures
        girder.reset_stats()
        assert sha256_of(m.mountpoint / cached.name) == cached.sha256
        assert girder.stats()["download_bytes"] == 0  # from the store, not fetched again
        assert_alive(m)
        filler.unlink()
        assert sha256_of(m.mountpoint / wanted.name) == wanted.sha256
        assert_alive(m)
        log = m.log()
    assert "Traceback" not in log


def test_an_index_that_meets_a_full_disk_fails_reads_with_enospc_and_recovers(
    tmp_path: Path, base_config: dict[str, Any], small_fs: Path, files: dict[str, BigFile]
) -> None:
    """The SQLite index itself meets ENOSPC ("database or disk is full"): its write-ahead log
    is folded into the database and emptied, then another process takes the whole disk, so
    the index's next write has nowhere to go."""
    cached, wanted = files["m2.bin"], files["m3.bin"]
    config = config_on(base_config, small_fs)
    with mounted(tmp_path, config, session(cached, wanted)) as m:
        held = open(m.mountpoint / cached.name, "rb")  # noqa: SIM115
        try:
            assert hashlib.sha256(held.read()).hexdigest() == cached.sha256
            index_path = small_fs / "store" / "index.sqlite3"
            db = sqlite3.connect(index_path, timeout=30)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
            filler = fill(small_fs)
            with pytest.raises(OSError) as info:
                sha256_of(m.mountpoint / wanted.name)
            assert info.value.errno == errno.ENOSPC, info.value
            held.seek(0)  # a file open before keeps being served
            assert hashlib.sha256(held.read()).hexdigest() == cached.sha256
            assert_alive(m)
            assert "database or disk is full" in m.log()
            filler.unlink()
            assert sha256_of(m.mountpoint / wanted.name) == wanted.sha256
        finally:
            held.close()
        assert_alive(m)
        log = m.log()
    assert "Traceback" not in log


def test_a_background_mount_warns_when_the_capacity_cannot_fit(
    tmp_path: Path, base_config: dict[str, Any], small_fs: Path, files: dict[str, BigFile]
) -> None:
    config = config_on(base_config, small_fs, log_file=str(tmp_path / "bg.log"))
    config_path = tmp_path / "wtfs.yaml"
    config_path.write_text(__import__("yaml").safe_dump(config))
    session_path = tmp_path / "session.json"
    session_path.write_text(__import__("json").dumps({"dataSet": session(files["m0.bin"])}))
    mountpoint = tmp_path / "bg"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    result = run_wtfs(["-c", str(config_path), "mount", str(session_path), str(mountpoint)], env)
    try:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 2, result.stderr
        assert "private_storage_capacity" in lines[0] and "1.0 GiB" in lines[0], lines
        assert lines[1].startswith("wtfs: mounted"), lines
        assert sha256_of(mountpoint / "m0.bin") == files["m0.bin"].sha256
    finally:
        run_wtfs(["-c", str(config_path), "umount", str(mountpoint)], env, check=False)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    log = (tmp_path / "bg.log").read_text()
    warnings = [line for line in log.splitlines() if "private_storage_capacity" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], warnings
    assert "Traceback" not in log
