"""A damaged store gives a way forward: real mounts of the real dev Girder, the store's index
and data files damaged behind wtfs's back, and `wtfs fsck` through the command line.

- An index that is not a database: every command that opens it (mount in the foreground and
  in the background, status, gc, retry, session refresh, umount) says so in one line naming
  the file and `wtfs fsck --repair`, exit 2 (umount unmounts all the same); `wtfs fsck` finds
  it (exit 1), `--repair` moves it aside (exit 1: found), the next fsck is clean (exit 0) and
  the mount serves Girder's bytes again. A missing index: the mount starts afresh.
- Data files truncated, deleted, cut and extended again, overwritten with zeros at the same
  size, an orphan added: fsck finds each, `--repair` fixes them, and a restart never serves
  their bytes as good (each file compared with the bytes Girder has); a restart without fsck
  does not either, for every damage but the same-size overwrite, which only a checksum finds.
- fsck on the PostgreSQL backend, and fsck refusing to repair while a mount is live.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import BigFile, MiB, import_files, write_random
from tests.support.index import store_index
from tests.support.mounts import Mount, mounted, run_wtfs, start_mount

SIZES = {"t.bin": 3 * MiB + 5, "d.bin": 2 * MiB, "h.bin": 4 * MiB, "k.bin": MiB + 7}


@dataclass(frozen=True)
class Data:
    files: dict[str, BigFile]  # in Girder
    phys: BigFile  # a meta.phys_path item with meta.checksum (sha256), read from a local root
    root: Path

    def session(self) -> list[dict[str, str]]:
        entries = [{"itemId": f.item_id, "mountPath": f"/{n}"} for n, f in self.files.items()]
        return [*entries, {"itemId": self.phys.item_id, "mountPath": "/z.bin"}]

    def every(self) -> dict[str, BigFile]:
        return {**self.files, "z.bin": self.phys}


@pytest.fixture(scope="module")
def data(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> Data:
    files = import_files(girder, tmp_path_factory.mktemp("fsckdata"), SIZES)
    root = tmp_path_factory.mktemp("fsckroot")
    digest = write_random(root / "z.bin", 2 * MiB + 3)
    client = girder.client()
    collection = client.createCollection("fsck-phys", public=True)
    folder = client.createFolder(collection["_id"], "f", parentType="collection", public=True)
    item = client.createItem(folder["_id"], "z.bin")
    client.addMetadataToItem(item["_id"], {"phys_path": str(root / "z.bin"), "size": 2 * MiB + 3,
                                           "checksum": {"sha256": digest}})  # fmt: skip
    phys = BigFile("z.bin", str(item["_id"]), root / "z.bin", 2 * MiB + 3, digest)
    return Data(files, phys, root)


@pytest.fixture
def config(base_config: dict[str, Any], data: Data) -> dict[str, Any]:
    return {**base_config, "providers": {"allowed_local_roots": [str(data.root)]}}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_every_file(m: Mount, data: Data) -> None:
    """Read each file whole and compare it with the bytes Girder (or the phys_path) has."""
    for name, f in data.every().items():
        assert sha256(m.mountpoint / name) == f.sha256, f"{name}: wrong bytes served"


def wtfs(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    return run_wtfs(["-c", str(config_path), *args], env, check=False)


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "wtfs.yaml"
    path.write_text(yaml.safe_dump({**config, "log_file": str(tmp_path / "cli.log")}))
    return path


def fsck(config_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = wtfs(config_path, "fsck", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def kinds(report: dict[str, Any]) -> list[str]:
    return sorted(p["kind"] for p in report["problems"])


def entry_file(config: dict[str, Any], item_id: str) -> Path:
    """The data file of an item's current entry."""
    index = store_index(config)
    try:
        [entry] = [e for e in index.entries() if e.item_id == item_id and not e.superseded]
    finally:
        index.close()
    return Path(config["private_storage_path"]) / "data" / entry.file_name


def assert_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, exactly one `wtfs: ` line (a foreground mount also logs to stderr), no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("wtfs: ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.stderr


# -- the index ---------------------------------------------------------------------------------


def test_a_corrupt_index_is_one_clear_line_everywhere_and_fsck_repair_brings_the_mount_back(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    with mounted(tmp_path / "first", config, data.session()) as m:
        read_every_file(m, data)
    store = Path(config["private_storage_path"])
    index_path = store / "index.sqlite3"
    index_path.write_bytes(b"\x00garbage, not a database\x00" * 400)
    path = write(tmp_path, config)
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"dataSet": data.session()}))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    needles = (str(index_path), "wtfs fsck --repair")
    assert_one_line(wtfs(path, "mount", "--foreground", str(session), str(mountpoint)), *needles)
    assert_one_line(wtfs(path, "mount", str(session), str(mountpoint)), *needles)
    assert not os.path.ismount(mountpoint)
    for command in (["status"], ["status", "--json"], ["gc"], ["retry", "--failed"],
                    ["session", "refresh", str(mountpoint)]):  # fmt: skip
        assert_one_line(wtfs(path, *command), *needles)

    code, found = fsck(path)
    assert code == 1 and kinds(found) == ["index-damaged"], found
    assert any("--repair" in note for note in found["notes"])
    code, repaired = fsck(path, "--repair")
    assert code == 1, repaired
    assert kinds(repaired) == ["index-damaged"] + ["orphan"] * len(data.every()), repaired
    assert all(p["repaired"] for p in repaired["problems"])
    [moved] = store.glob("index.sqlite3.damaged-*")
    assert moved.read_bytes().startswith(b"\x00garbage")
    code, clean = fsck(path)
    assert code == 0 and clean["clean"], clean
    with mounted(tmp_path / "again", config, data.session()) as m:
        read_every_file(m, data)


def test_umount_with_an_index_damaged_under_a_live_mount_unmounts_and_says_why(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    m = start_mount(tmp_path, config, data.session()[:1])
    try:
        name = next(iter(data.files))
        assert sha256(m.mountpoint / name) == data.files[name].sha256
        index_path = Path(config["private_storage_path"]) / "index.sqlite3"
        db = sqlite3.connect(index_path, timeout=30)  # every page into the file, the log empty
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        with open(index_path, "r+b") as f:  # in place: the daemon's connection sees it too
            f.write(b"\x00garbage, not a database\x00" * 400)
        result = m.wtfs("umount", str(m.mountpoint), check=False)
        assert result.returncode == 0, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("wtfs: warning: ") and "wtfs fsck --repair" in line, line
        assert not os.path.ismount(m.mountpoint)
        assert m.process.wait(timeout=30) == 0, m.log()
        assert "Traceback" not in m.log()
    finally:
        m.stop()


def test_a_missing_index_is_a_fresh_start_that_sweeps_the_data_files(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    with mounted(tmp_path / "first", config, data.session()) as m:
        read_every_file(m, data)
    store = Path(config["private_storage_path"])
    left = sorted(p for p in (store / "data").rglob("*") if p.is_file())
    assert len(left) == len(data.every())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store / 'index.sqlite3'}{suffix}").unlink(missing_ok=True)
    code, found = fsck(write(tmp_path, config))
    assert code == 1 and kinds(found) == ["index-missing"], found
    with mounted(tmp_path / "again", config, data.session()) as m:
        assert not any(p.exists() for p in left)  # orphans of the lost index: swept at start
        read_every_file(m, data)


# -- the data files ----------------------------------------------------------------------------


def damage(config: dict[str, Any], data: Data) -> Path:
    """Each way a data file is damaged behind wtfs's back; an orphan added. The orphan's path."""
    damaged = (data.files["t.bin"], data.files["d.bin"], data.files["h.bin"], data.phys)
    t, d, h, z = (entry_file(config, f.item_id) for f in damaged)
    os.truncate(t, MiB)  # shorter than its ranges: another size
    d.unlink()  # gone
    os.truncate(h, MiB)  # cut, then extended again: the right size, a hole where bytes were
    os.truncate(h, data.files["h.bin"].size)
    with open(z, "r+b") as f:  # zeros at the same size: only its checksum can tell
        f.write(bytes(data.phys.size))
    orphan = Path(config["private_storage_path"]) / "data" / "ff" / "left-behind"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"no entry names me")
    return orphan


def test_damaged_data_files_are_found_repaired_and_never_served_as_good(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    with mounted(tmp_path / "first", config, data.session()) as m:
        read_every_file(m, data)
    orphan = damage(config, data)
    path = write(tmp_path, config)
    code, found = fsck(path)
    assert code == 1
    assert kinds(found) == ["missing-bytes", "missing-file", "orphan", "wrong-size"], found
    code, verified = fsck(path, "--verify")
    assert code == 1
    assert kinds(verified) == ["checksum", "missing-bytes", "missing-file", "orphan",
                               "wrong-size"], verified  # fmt: skip
    by_kind = {p["kind"]: p for p in verified["problems"]}
    assert by_kind["checksum"]["path"] == "/z.bin" and by_kind["wrong-size"]["path"] == "/t.bin"
    assert by_kind["missing-file"]["path"] == "/d.bin"
    assert by_kind["missing-bytes"]["path"] == "/h.bin"
    plain = wtfs(path, "fsck", "--verify")
    assert plain.returncode == 1 and "5 problems found; `wtfs fsck --repair`" in plain.stdout
    code, repaired = fsck(path, "--verify", "--repair")
    assert code == 1 and all(p["repaired"] for p in repaired["problems"]), repaired
    assert not orphan.exists()
    code, again = fsck(path, "--verify")
    assert (code, again["problems"]) == (0, []), again
    with mounted(tmp_path / "again", config, data.session()) as m:
        read_every_file(m, data)


def test_a_restart_without_fsck_never_serves_the_damaged_bytes_stat_and_seek_can_find(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    """Truncated, deleted, cut and extended again: start-up recovery drops what they no longer
    hold, and the restart fetches it again. (A same-size overwrite needs `fsck --verify`.)"""
    session = [e for e in data.session() if e["mountPath"] != "/z.bin"]
    with mounted(tmp_path / "first", config, session) as m:
        for name, f in data.files.items():
            assert sha256(m.mountpoint / name) == f.sha256
    t, d, h = (entry_file(config, data.files[n].item_id) for n in ("t.bin", "d.bin", "h.bin"))
    os.truncate(t, MiB)
    d.unlink()
    os.truncate(h, MiB)
    os.truncate(h, data.files["h.bin"].size)
    with mounted(tmp_path / "again", config, session) as m:
        for name, f in data.files.items():
            assert sha256(m.mountpoint / name) == f.sha256, f"{name}: damaged bytes served"
        log = m.log()
    assert "store recovery:" in log and "1 entries had holes" in log, log


def test_fsck_on_the_postgresql_backend(
    tmp_path: Path, config: dict[str, Any], data: Data, postgres_url: str
) -> None:
    config = {**config, "index_url": postgres_url}
    with mounted(tmp_path / "first", config, data.session()) as m:
        read_every_file(m, data)
    path = write(tmp_path, config)
    code, clean = fsck(path, "--verify")
    assert (code, clean["problems"]) == (0, []), clean
    assert clean["index"].startswith("postgresql://") and "***" in clean["index"]
    orphan = damage(config, data)
    code, found = fsck(path, "--verify")
    assert code == 1
    assert kinds(found) == ["checksum", "missing-bytes", "missing-file", "orphan",
                            "wrong-size"], found  # fmt: skip
    code, repaired = fsck(path, "--verify", "--repair")
    assert code == 1 and all(p["repaired"] for p in repaired["problems"]), repaired
    assert not orphan.exists()
    assert fsck(path, "--verify")[0] == 0
    with mounted(tmp_path / "again", config, data.session()) as m:
        read_every_file(m, data)


def test_fsck_only_checks_while_a_mount_is_live(
    tmp_path: Path, config: dict[str, Any], data: Data
) -> None:
    with mounted(tmp_path, config, data.session()) as m:
        read_every_file(m, data)
        orphan = Path(config["private_storage_path"]) / "data" / "ff" / "left-behind"
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"?")
        code, report = fsck(m.config_path, "--repair")
        assert code == 1 and kinds(report) == ["orphan"], report
        assert not report["problems"][0]["repaired"] and orphan.exists()
        assert report["liveMounts"] == [str(m.mountpoint)]
        assert any("not repaired" in n and "--force" in n for n in report["notes"]), report
        plain = m.wtfs("fsck", "--repair", check=False)
        assert plain.returncode == 1 and "not repaired: 1 mounts are live" in plain.stdout
        read_every_file(m, data)  # the mount went on all along
