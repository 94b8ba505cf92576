"""Hostile data on real mounts: names Girder's REST would refuse, inserted raw into a real Girder
(`LocalGirder.raw_item`), and items whose metadata lies. The outcome must be the README's: names
escaped or de-duplicated, every item reachable with its own bytes; a lying size or an unknown
source gives EIO and a FAILED transfer naming the cause; never a wrong byte; and the mount stays
up (after every bad read another file still reads)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder, bulk_file_content, bulk_item_name

from tests.support.girder import local_girder
from tests.support.mounts import Mount, mounted

FAILED = 4
LONG = "L" * 296 + ".txt"  # 300 bytes
NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
REAL = os.urandom(1000)  # the bytes behind the meta.phys_path items
# `ls -l` of 10,000 entries held in memory takes ~5 s (fuse-facts.md): a minute and a half for
# os.listdir, Girder round trips included, is generous.
LISTING_BOUND = 90


@dataclass(frozen=True)
class Hostile:
    folder_id: str
    local_root: Path
    ids: dict[str, str]  # label -> item id
    content: dict[str, bytes]  # label -> bytes it must read back as
    shown: dict[str, str]  # label -> the POSIX name the README's table gives it


def long_name_shown(name: str) -> str:
    """README: cut on a character boundary, extension kept, `~` + 8 hex of its SHA-1."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    stem, ext = name[: -len(".txt")], ".txt"
    return stem[: 255 - len(ext) - 9] + "~" + digest + ext


@pytest.fixture(scope="module")
def hostile(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    client = girder.client()
    collection = client.createCollection(f"hostile-{uuid.uuid4().hex[:8]}", public=True)
    folder = client.createFolder(collection["_id"], "h", parentType="collection", public=True)
    folder_id = str(folder["_id"])
    root = tmp_path_factory.mktemp("physroot")
    real = root / "real.bin"
    real.write_bytes(REAL)
    ids: dict[str, str] = {}
    content: dict[str, bytes] = {}
    shown: dict[str, str] = {}

    def add(label: str, name: str, data: bytes | None, posix: str, **meta: Any) -> None:
        ids[label] = girder.raw_item(folder_id, name, data, meta or None)
        if data is not None:
            content[label] = data
        shown[label] = posix

    add("good", "good.txt", b"a well-behaved file\n", "good.txt")
    add("slash", "a/b", b"slash\n", "a%2Fb")
    add("tab", "tab\there", b"tab\n", "tab%09here")
    add("newline", "new\nline", b"newline\n", "new%0Aline")
    add("dot", ".", b"dot\n", "%2E")
    add("dotdot", "..", b"dotdot\n", "%2E%2E")
    add("long", LONG, b"long\n", long_name_shown(LONG))
    add("dup1", "dup.txt", b"first dup\n", "")
    add("dup2", "dup.txt", b"second dup\n", "")
    first, second = sorted(["dup1", "dup2"], key=lambda label: ids[label])
    shown[first], shown[second] = "dup.txt", f"dup~{ids[second][-8:]}.txt"
    add("nfc", NFC, b"nfc\n", NFC)
    add("nfd", NFD, b"nfd\n", NFD)
    add("empty", "empty-item", None, "empty-item")
    add("exact", "exact.bin", None, "exact.bin", phys_path=str(real), size=len(REAL))
    content["exact"] = REAL
    add("bigger", "bigger.bin", None, "bigger.bin", phys_path=str(real), size=2 * len(REAL))
    add("smaller", "smaller.bin", None, "smaller.bin", phys_path=str(real), size=len(REAL) // 2)
    add("gopher", "gopher.bin", None, "gopher.bin", phys_path="gopher://x/y", size=10)
    add("nosize", "nosize.bin", None, "nosize.bin", phys_path=str(real))
    return Hostile(folder_id, root, ids, content, shown)


def config_for(base_config: dict[str, Any], hostile: Hostile) -> dict[str, Any]:
    return {
        **base_config,
        "providers": {"allowed_local_roots": [str(hostile.local_root)]},
        "network": {**base_config["network"], "read_deadline": 10, "retry_attempts": 3},
    }


def session(hostile: Hostile) -> list[dict[str, str]]:
    return [{"itemId": hostile.folder_id, "mountPath": "/h"}]


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def transfers_of(m: Mount, item_id: str) -> list[dict[str, Any]]:
    return [t for t in m.status("--all")["transfers"] if t["itemId"] == item_id]


def assert_mount_still_serves(m: Mount, hostile: Hostile) -> None:
    assert read(m.mountpoint / "h/good.txt") == hostile.content["good"]


def test_every_hostile_name_is_listed_as_the_readme_says(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        listed = os.listdir(m.mountpoint / "h")
        assert len(listed) == len(set(listed)) == len(hostile.ids), sorted(listed)
        assert set(listed) == set(hostile.shown.values())
        assert all(len(os.fsencode(name)) <= 255 for name in listed)
        assert all("/" not in name and "\n" not in name and "\t" not in name for name in listed)
        log = m.log()  # README: every change is logged
        for label in ("slash", "tab", "newline", "dot", "dotdot", "long"):
            assert f"is shown as {hostile.shown[label]!r}" in log, label
        renamed = max(("dup1", "dup2"), key=lambda label: hostile.ids[label])
        assert f"is shown as {hostile.shown[renamed]!r}" in log


@pytest.mark.parametrize(
    "label", ["slash", "tab", "newline", "dot", "dotdot", "long", "dup1", "dup2", "nfc", "nfd"]
)
def test_each_hostile_name_reads_its_own_bytes(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile, label: str
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        path = m.mountpoint / "h" / hostile.shown[label]
        assert path.is_file()
        assert path.stat().st_size == len(hostile.content[label])
        assert read(path) == hostile.content[label]
        assert_mount_still_serves(m, hostile)


def test_item_with_zero_files_is_an_empty_directory(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        path = m.mountpoint / "h/empty-item"
        assert path.is_dir()
        assert os.listdir(path) == []


def test_phys_path_with_the_right_size_reads_the_local_file(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        path = m.mountpoint / "h/exact.bin"
        assert path.stat().st_size == len(REAL)
        assert read(path) == REAL


def expect_eio(m: Mount, path: Path, limit: float = 15) -> None:
    started = time.monotonic()
    try:
        data = read(path)
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
    else:
        raise AssertionError(
            f"{path.name}: read returned {len(data)} bytes ({data[:32]!r}...) instead of EIO"
        )
    assert time.monotonic() - started < limit


def failed_transfer_cause(m: Mount, item_id: str) -> str:
    transfers = transfers_of(m, item_id)
    failed = [t for t in transfers if t["status"] == FAILED]
    assert failed, f"no FAILED transfer recorded: {transfers}"
    return " ".join(t["error"] or "" for t in failed)


@pytest.mark.parametrize("label", ["bigger", "smaller"])
def test_lying_meta_size_is_eio_with_a_failed_transfer_naming_the_size(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile, label: str
) -> None:
    claimed = 2 * len(REAL) if label == "bigger" else len(REAL) // 2
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        path = m.mountpoint / "h" / f"{label}.bin"
        assert path.stat().st_size == claimed
        expect_eio(m, path)
        cause = failed_transfer_cause(m, hostile.ids[label])
        assert str(len(REAL)) in cause and str(claimed) in cause, cause
        assert_mount_still_serves(m, hostile)
        expect_eio(m, path)  # still refused: never the wrong bytes on a second try
        assert_mount_still_serves(m, hostile)


def test_unknown_scheme_is_eio_naming_the_scheme(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        expect_eio(m, m.mountpoint / "h/gopher.bin")
        cause = failed_transfer_cause(m, hostile.ids["gopher"])
        assert "gopher" in cause, cause
        assert_mount_still_serves(m, hostile)


def test_phys_path_without_meta_size_is_eio_naming_the_missing_size(
    tmp_path: Path, base_config: dict[str, Any], hostile: Hostile
) -> None:
    with mounted(tmp_path, config_for(base_config, hostile), session(hostile)) as m:
        expect_eio(m, m.mountpoint / "h/nosize.bin")
        cause = failed_transfer_cause(m, hostile.ids["nosize"])
        assert "meta.size" in cause, cause
        assert_mount_still_serves(m, hostile)


def test_folder_of_10000_items_lists_them_all(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A separate Girder: a 10,000-item folder slows every later request of the one it lives in.
    count = 10_000
    with local_girder(tmp_path_factory, "girder10k") as (big_girder, _):
        client = big_girder.client()
        collection = client.createCollection("tenk", public=True)
        folder = client.createFolder(collection["_id"], "tenk", parentType="collection",
                                     public=True)  # fmt: skip
        big_girder.bulk_items(str(folder["_id"]), count, prefix="n", file_size=16)
        config = {
            "girder": {"api_url": big_girder.api_url,
                       "api_key_file": str(big_girder.api_key_file)},
            "private_storage_path": str(tmp_path / "store"),
            "private_storage_capacity": "1GiB",
        }  # fmt: skip
        with mounted(tmp_path, config, [{"itemId": str(folder["_id"]), "mountPath": "/t"}]) as m:
            big_girder.reset_stats()
            result: dict[str, Any] = {}

            def listing() -> None:
                started = time.monotonic()
                try:
                    result["names"] = os.listdir(m.mountpoint / "t")
                except OSError as exc:
                    result["error"] = exc
                result["seconds"] = time.monotonic() - started

            worker = threading.Thread(target=listing, daemon=True)
            worker.start()
            worker.join(LISTING_BOUND)
            routes = big_girder.stats()["by_route"]
            requests = {route: v["requests"] for route, v in routes.items()}
            assert not worker.is_alive(), (
                f"os.listdir of {count} items still running after {LISTING_BOUND}s; "
                f"Girder requests so far: {requests}"
            )
            print(f"\nos.listdir of {count} items: {result['seconds']:.1f}s; requests {requests}")
            assert "error" not in result, result["error"]
            listed = result["names"]
            assert len(listed) == count
            assert set(listed) == {bulk_item_name("n", i, count) for i in range(count)}
            last = bulk_item_name("n", count - 1, count)
            assert read(m.mountpoint / "t" / last) == bulk_file_content(last, 16)
