"""Providers through real mounts: one session mixing Girder, http, local and sftp items; the
local-path security boundary; a third-party provider package picked up without a wtfs change."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.bigdata import MiB, write_random
from tests.support.index import store_index
from tests.support.mounts import mounted
from tests.support.rangehttp import RangeHTTPServer
from tests.support.sshd import SshdServer, running_sshd

PLUGIN = Path(__file__).resolve().parents[1] / "providers" / "plugin_demo"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def folder(girder: LocalGirder) -> str:
    client = girder.client()
    name = f"providers-{random.randrange(1 << 30)}"
    collection = client.createCollection(name, public=True)
    return str(client.createFolder(collection["_id"], "items", parentType="collection")["_id"])


def phys_item(girder: LocalGirder, folder: str, name: str, meta: dict[str, Any]) -> str:
    client = girder.client()
    item = client.createItem(folder, name)
    client.addMetadataToItem(item["_id"], meta)
    return str(item["_id"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_ranges_match(path: Path, original: Path, count: int = 25) -> None:
    rng = random.Random(11)
    size = original.stat().st_size
    with open(path, "rb") as mounted_file, open(original, "rb") as source:
        for _ in range(count):
            offset = rng.randrange(size)
            length = rng.randrange(1, 300_000)
            got = os.pread(mounted_file.fileno(), length, offset)
            assert got == os.pread(source.fileno(), length, offset), (path.name, offset, length)


def test_a_session_mixing_girder_http_local_and_sftp_reads_them_all(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, sample: SampleData,
    folder: str, sshd: SshdServer,
) -> None:  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    files = {}
    for name in ("over-http.bin", "local.bin", "over-sftp.bin"):
        write_random(data / name, 3 * MiB + 4321)
        files[name] = data / name
    with RangeHTTPServer(data) as http_server:
        items = {
            "over-http.bin": phys_item(girder, folder, "over-http.bin", {
                "phys_path": http_server.url("over-http.bin"), "size": 3 * MiB + 4321}),
            "local.bin": phys_item(girder, folder, "local.bin", {
                "phys_path": str(data / "local.bin"), "size": 3 * MiB + 4321}),
            "over-sftp.bin": phys_item(girder, folder, "over-sftp.bin", {
                "phys_path": sshd.sftp_url(data / "over-sftp.bin"), "size": 3 * MiB + 4321}),
        }  # fmt: skip
        data_set = [
            {"itemId": item_id, "mountPath": f"/mixed/{name}"} for name, item_id in items.items()
        ]
        data_set.append({"itemId": sample.items["experiment/raw/measurements.csv"],
                         "mountPath": "/mixed/measurements.csv"})  # fmt: skip
        config = {
            **base_config,
            "providers": {"allowed_local_roots": [str(data)], **sshd.options()},
        }
        with mounted(tmp_path, config, data_set) as m:
            mixed = m.mountpoint / "mixed"
            assert sorted(os.listdir(mixed)) == sorted([*items, "measurements.csv"])
            for name, original in files.items():
                assert (mixed / name).stat().st_size == original.stat().st_size
                random_ranges_match(mixed / name, original)
                assert sha256(mixed / name) == sha256(original), name
            assert sha256(mixed / "measurements.csv") == sample.sha256[
                "experiment/raw/measurements.csv/measurements.csv"]  # fmt: skip
            sources = {t["source"].split(":")[0] for t in m.status("--all")["transfers"]}
            assert sources == {"girder", "http", "local", "sftp"}


def test_local_paths_outside_the_allowed_roots_are_refused_and_nothing_is_served(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, folder: str
) -> None:
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "ok.txt").write_text("inside the root\n")
    (root / "escape").symlink_to("/etc/passwd")
    hostile = {
        "shadow": "file:///etc/shadow",
        "passwd": "/etc/passwd",
        "dotdot": f"{root}/../../../etc/passwd",
        "symlink": str(root / "escape"),
    }
    data_set = [
        {"itemId": phys_item(girder, folder, name, {"phys_path": url, "size": 100}),
         "mountPath": f"/h/{name}"}
        for name, url in hostile.items()
    ]  # fmt: skip
    data_set.append({"itemId": phys_item(girder, folder, "ok", {
        "phys_path": str(root / "ok.txt"), "size": 16}), "mountPath": "/h/ok"})  # fmt: skip
    config = {**base_config, "providers": {"allowed_local_roots": [str(root)]}}
    with mounted(tmp_path, config, data_set) as m:
        for name in hostile:
            with pytest.raises(OSError) as info:
                (m.mountpoint / "h" / name).read_bytes()
            assert info.value.errno == errno.EACCES, name
        assert (m.mountpoint / "h" / "ok").read_text() == "inside the root\n"
        failed = [t for t in m.status("--all")["transfers"] if t["status"] == 4]
        assert len(failed) == len(hostile)
        assert all("allowed" in t["error"] or "outside" in t["error"] for t in failed), failed
    index = store_index(config)
    present = {e.path: e.present for e in index.entries()}
    index.close()
    assert all(present.get(f"/h/{name}", 0) == 0 for name in hostile)  # not one byte stored
    assert present["/h/ok"] == 16


def test_a_plugin_package_adds_a_scheme_without_changing_wtfs(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, folder: str
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(PLUGIN)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {"PYTHONPATH": str(target)}
    code = "from wtfs.providers import registry; print(sorted(registry.discover()))"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "'demo'" in probe.stdout
    size = 200_000
    item = phys_item(girder, folder, "pattern", {"phys_path": "demo://pattern/42", "size": size})
    with mounted(tmp_path, base_config, [{"itemId": item, "mountPath": "/p"}], env=env) as m:
        data = (m.mountpoint / "p").read_bytes()
    assert data == bytes((i * 7 + 42) % 256 for i in range(size))
