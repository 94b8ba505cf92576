"""Real mounts of the seeded Girder: the foundation slice, read with plain open()/os.listdir."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.mounts import ROOT, drop_page_cache, mounted, run_wtfs, write_config


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def experiment(sample: SampleData) -> list[dict[str, str]]:
    return [
        {"itemId": sample.folders["experiment"], "mountPath": "/data/raw/experiment"},
        {"itemId": sample.items["experiment/raw/noise-64MiB.bin"], "mountPath": "/noise.bin"},
    ]


def test_tree_has_nested_mount_paths_folders_and_items(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        root = m.mountpoint
        assert sorted(os.listdir(root)) == ["data", "noise.bin"]
        assert os.listdir(root / "data") == ["raw"]
        exp = root / "data/raw/experiment"
        assert sorted(os.listdir(exp)) == ["README.txt", "notes", "raw"]
        assert sorted(os.listdir(exp / "notes")) == [
            "day1.txt",
            "day2.md",
            "résumé des données.txt",
        ]
        # An item with two files is a directory of its files; with one file, a file.
        assert (exp / "raw/scan-001").is_dir()
        assert sorted(os.listdir(exp / "raw/scan-001")) == ["scan-001.hdr", "scan-001.raw"]
        assert (exp / "raw/measurements.csv").is_file()


def test_sizes_and_mtimes_are_girders(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    client = girder.client()
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        csv = m.mountpoint / "data/raw/experiment/raw/measurements.csv"
        doc = client.getFile(sample.csv_file_id)
        st = csv.stat()
        assert (
            st.st_size
            == doc["size"]
            == sample.sizes["experiment/raw/measurements.csv/measurements.csv"]
        )
        item = client.getItem(sample.items["experiment/raw/measurements.csv"])
        updated = datetime.fromisoformat(item["updated"].replace("Z", "+00:00")).timestamp()
        assert abs(st.st_mtime - updated) < 1e-3
        assert (m.mountpoint / "noise.bin").stat().st_size == 64 * 1024 * 1024
        listing = subprocess.run(["ls", "-l", str(csv)], capture_output=True, text=True, check=True)
        assert f" {doc['size']} " in listing.stdout


def test_folder_with_more_items_than_a_girder_page_lists_them_all(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(
        tmp_path, base_config, [{"itemId": sample.many_folder_id, "mountPath": "/many"}]
    ) as m:
        result = subprocess.run(
            ["ls", "-lR", str(m.mountpoint)], capture_output=True, text=True, check=True
        )
        files = [line for line in result.stdout.splitlines() if line.startswith("-r")]
        assert sample.many_count == 120
        assert len(files) == 120
        assert len(os.listdir(m.mountpoint / "many")) == 120


def test_files_read_back_with_girders_sha256(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        exp = m.mountpoint / "data/raw/experiment"
        for key, rel in [
            ("experiment/README.txt/README.txt", "README.txt"),
            ("experiment/raw/measurements.csv/measurements.csv", "raw/measurements.csv"),
            (
                "experiment/notes/résumé des données.txt/résumé des données.txt",
                "notes/résumé des données.txt",
            ),
            ("experiment/raw/scan-001/scan-001.raw", "raw/scan-001/scan-001.raw"),
            ("experiment/raw/scan-001/scan-001.hdr", "raw/scan-001/scan-001.hdr"),
        ]:
            assert sha256(exp / rel) == sample.sha256[key], rel
        assert (
            sha256(m.mountpoint / "noise.bin")
            == sample.sha256["experiment/raw/noise-64MiB.bin/noise-64MiB.bin"]
        )


def test_second_read_of_64mib_makes_no_request_to_girder(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    data_set = [
        {"itemId": sample.items["experiment/raw/noise-64MiB.bin"], "mountPath": "/noise.bin"}
    ]
    want = sample.sha256["experiment/raw/noise-64MiB.bin/noise-64MiB.bin"]
    with mounted(tmp_path, base_config, data_set) as m:
        girder.reset_stats()
        assert sha256(m.mountpoint / "noise.bin") == want
        first = girder.stats()
        assert first["download_bytes"] >= 64 * 1024 * 1024
        drop_page_cache()  # so the second read really reaches the daemon
        girder.reset_stats()
        assert sha256(m.mountpoint / "noise.bin") == want
        assert girder.stats()["downloads"] == 0
    # A fresh mount on the same store serves it from the store too.
    with mounted(tmp_path / "again", base_config, data_set) as m:
        girder.reset_stats()
        assert sha256(m.mountpoint / "noise.bin") == want
        assert girder.stats()["downloads"] == 0


def test_writes_fail_with_erofs(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        readme = m.mountpoint / "data/raw/experiment/README.txt"
        attempts = [
            lambda: (m.mountpoint / "new.txt").open("w"),
            lambda: readme.open("w"),
            lambda: readme.open("a"),
            lambda: os.unlink(readme),
            lambda: os.mkdir(m.mountpoint / "dir"),
            lambda: os.rename(readme, m.mountpoint / "x"),
            lambda: os.utime(readme),
            lambda: os.chmod(readme, 0o777),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        for command in (
            ["touch", str(readme)],
            ["rm", "-f", str(readme)],
            ["mkdir", str(m.mountpoint / "d")],
        ):
            result = subprocess.run(command, capture_output=True, text=True)
            assert result.returncode != 0
            assert "Read-only file system" in result.stderr
        shell = subprocess.run(
            ["sh", "-c", f"echo hi > '{readme}'"], capture_output=True, text=True
        )
        assert "Read-only file system" in shell.stderr
        assert readme.read_text().startswith("Experiment")


def test_missing_paths_are_enoent(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        for rel in ("nope", "data/nope", "data/raw/experiment/notes/none.txt"):
            with pytest.raises(FileNotFoundError):
                os.stat(m.mountpoint / rel)


def test_open_takes_a_lock_and_close_releases_it(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        item_id = sample.items["experiment/raw/measurements.csv"]
        with open(m.mountpoint / "data/raw/experiment/raw/measurements.csv", "rb") as f:
            f.read(10)
            locks = m.status()["locks"]
            assert [lock["itemId"] for lock in locks] == [item_id]
            assert locks[0]["path"] == "/data/raw/experiment/raw/measurements.csv"
            assert locks[0]["alive"] is True
        assert m.status()["locks"] == []


def test_umount_command_unmounts_and_daemon_exits(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        m.wtfs("umount", str(m.mountpoint))
        assert m.process.wait(timeout=20) == 0
        assert not os.path.ismount(m.mountpoint)
        assert m.status()["mounts"] == []


def test_background_mount_returns_when_ready(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    config = write_config(tmp_path / "wtfs.yaml", base_config)
    session = tmp_path / "session.json"
    session.write_text(
        json.dumps({"dataSet": [{"itemId": sample.folders["experiment"], "mountPath": "/x"}]})
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    try:
        result = run_wtfs(["-c", str(config), "mount", str(session), str(mnt)], env)
        assert "mounted" in result.stderr
        assert os.path.ismount(mnt)
        assert "README.txt" in os.listdir(mnt / "x")
    finally:
        run_wtfs(["umount", str(mnt)], env, check=False)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"private_storage_capacity": "lots"}, "private_storage_capacity"),
        ({"private_storage_capacity": 0}, "private_storage_capacity"),
        (
            {"gc_collect_start_fraction": 0.2, "gc_collect_end_fraction": 0.5},
            "gc_collect_start_fraction",
        ),
        ({"no_such_key": 1}, "no_such_key"),
        ({"girder": {"api_url": "ftp://x"}}, "girder.api_url"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_nothing_mounted(
    tmp_path: Path,
    base_config: dict[str, Any],
    sample: SampleData,
    override: dict[str, Any],
    key: str,
) -> None:
    config = write_config(tmp_path / "bad.yaml", {**base_config, **override})
    session = tmp_path / "session.json"
    session.write_text(
        json.dumps({"dataSet": [{"itemId": sample.folders["experiment"], "mountPath": "/x"}]})
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    result = run_wtfs(["-c", str(config), "mount", str(session), str(mnt)], env, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wtfs: {key}"), result.stderr
    assert not os.path.ismount(mnt)
    assert not (tmp_path / "store").exists()


def test_unknown_item_id_is_exit_2_and_nothing_mounted(
    tmp_path: Path, base_config: dict[str, Any]
) -> None:
    config = write_config(tmp_path / "wtfs.yaml", base_config)
    session = tmp_path / "session.json"
    session.write_text('{"dataSet": [{"itemId": "0123456789abcdef01234567", "mountPath": "/x"}]}')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    result = run_wtfs(
        ["-c", str(config), "mount", "--foreground", str(session), str(mnt)], env, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "0123456789abcdef01234567" in result.stderr.strip().splitlines()[-1]
    assert not os.path.ismount(mnt)


def test_api_key_never_in_argv_or_logs(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    key = girder.api_key()
    with mounted(tmp_path, {**base_config, "log_level": "DEBUG"}, experiment(sample)) as m:
        sha256(m.mountpoint / "data/raw/experiment/raw/measurements.csv")
        cmdlines = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
        assert not any(key.encode() in c for c in cmdlines)
        status = m.wtfs("status", "--all").stdout + m.wtfs("status", "--all", "--json").stdout
        assert key not in status
        log = m.log()
        assert "obtained a Girder token" in log
    assert key not in log
    assert key not in (tmp_path / "store" / "index.sqlite3").read_bytes().decode("latin-1")


def test_private_store_is_0700_and_files_0600(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        sha256(m.mountpoint / "data/raw/experiment/README.txt")
    store = tmp_path / "store"
    assert store.stat().st_mode & 0o777 == 0o700
    files = [p for p in (store / "data").rglob("*") if p.is_file()]
    assert files
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)


def test_python_m_wtfs_help_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wtfs", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0
    for command in ("mount", "umount", "status", "gc", "demo"):
        assert command in result.stdout


def test_a_second_mount_lists_a_folder_without_per_item_requests(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    data_set = [{"itemId": sample.many_folder_id, "mountPath": "/many"}]

    def file_list_requests() -> int:
        routes = girder.stats()["by_route"]
        return sum(v["requests"] for k, v in routes.items() if k.endswith("/files"))

    stock = {**base_config, "girder": {**base_config["girder"], "bulk_listing": False}}
    girder.reset_stats()
    with mounted(tmp_path / "first", stock, data_set) as m:
        assert len(os.listdir(m.mountpoint / "many")) == 120
    assert file_list_requests() == 120  # stock Girder: one request per item, the first time
    girder.reset_stats()
    with mounted(tmp_path / "second", stock, data_set) as m:
        assert len(os.listdir(m.mountpoint / "many")) == 120
        first = sorted(os.listdir(m.mountpoint / "many"))[0]
        assert (m.mountpoint / "many" / first).read_bytes()
    assert file_list_requests() == 0  # the store's metadata cache answered


def _walk(top: Path) -> list[tuple[str, bool, int, int]]:
    """(path, is_dir, size, mtime_ns) of everything under `top`, sorted."""
    found = []
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            found.append((str(path.relative_to(top)), path.is_dir(), st.st_size, st.st_mtime_ns))
    return sorted(found)


def test_the_servers_wtfs_plugin_lists_a_folder_in_one_request_per_page_same_tree(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    data_set = [
        {"itemId": sample.folders["experiment"], "mountPath": "/experiment"},
        {"itemId": sample.many_folder_id, "mountPath": "/many"},
    ]
    stock = {**base_config, "girder": {**base_config["girder"], "bulk_listing": False}}
    girder.reset_stats()
    with mounted(tmp_path / "bulk", base_config, data_set) as m:
        bulk_tree = _walk(m.mountpoint)
    routes = girder.stats()["by_route"]
    assert not [k for k in routes if k.endswith("/files")]  # no request per item
    plugin_pages = sum(v["requests"] for k, v in routes.items() if "/wtfs/" in k)
    assert plugin_pages == 4  # one page for each of experiment, raw, notes and many

    with mounted(tmp_path / "stock", stock, data_set) as m:
        stock_tree = _walk(m.mountpoint)
    assert bulk_tree == stock_tree
    kinds = {path: is_dir for path, is_dir, _, _ in bulk_tree}
    assert kinds["experiment/raw/scan-001"] is True  # two files: a directory
    assert kinds["experiment/raw/scan-001/scan-001.hdr"] is False
    assert kinds["experiment/raw/measurements.csv"] is False
    assert len([p for p in kinds if p.startswith("many/")]) == 120
