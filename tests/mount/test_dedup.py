"""Content dedup on real mounts of the real dev Girder: a copied item (Girder copies the file
documents, sha512 included) is served from the store file of the original, with no download
counted at the server; each item keeps its own entry, lock and eviction; without a hash (a
stock Girder's listing shows none) there is no dedup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import MiB
from tests.support.index import store_index
from tests.support.mounts import mounted
from tests.support.nodes import wait_until
from tests.support.uploads import public_folder, upload

SIZE = 3 * MiB + 4321


def uploaded_with_copy(girder: LocalGirder, content: bytes) -> tuple[str, str, str]:
    """(folder id, original item id, copy item id): `orig.bin` uploaded through Girder's REST
    API (its filesystem assetstore records the sha512), and a copy of that item beside it."""
    folder = public_folder(girder, "dedup")
    item = upload(girder, folder, "orig.bin", content)
    copy = girder.client().post(f"item/{item}/copy", parameters={"name": "copy.bin"})
    return folder, item, str(copy["_id"])


def download_bytes(girder: LocalGirder) -> int:
    return int(girder.stats()["download_bytes"])


def entries(config: dict[str, Any]) -> dict[str, Any]:
    index = store_index(config)
    try:
        return {e.item_id: e for e in index.entries()}
    finally:
        index.close()


def test_a_copied_item_is_served_from_the_originals_store_file_without_a_download(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    content = os.urandom(SIZE)
    folder, orig, copy = uploaded_with_copy(girder, content)
    with mounted(tmp_path, base_config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        root = m.mountpoint / "f"
        girder.reset_stats()
        assert hashlib.sha256((root / "orig.bin").read_bytes()).digest() == (
            hashlib.sha256(content).digest()
        )
        assert download_bytes(girder) == SIZE
        wait_until(lambda: entries(base_config)[orig].complete, timeout=30)
        girder.reset_stats()
        with open(root / "copy.bin", "rb") as f, open(root / "orig.bin", "rb") as g:
            assert f.read() == content
            assert download_bytes(girder) == 0  # served by the original's store file
            # Two items, two locks: each its own, though their bytes are one file.
            locks = {lock["itemId"] for lock in m.status()["locks"]}
            assert {orig, copy} <= locks
            assert g.read(10) == content[:10]
        rows = entries(base_config)
        assert rows[orig].complete and rows[copy].complete
        assert rows[orig].file_name != rows[copy].file_name  # each entry its own name
        data = Path(base_config["private_storage_path"]) / "data"
        a, b = os.stat(data / rows[orig].file_name), os.stat(data / rows[copy].file_name)
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)  # one store file
        # Status counts both entries complete; only the original was fetched.
        transfers = [t for t in m.status("--all")["transfers"] if t["itemId"] in (orig, copy)]
        assert {t["itemId"] for t in transfers} == {orig}


def test_evicting_one_copy_keeps_the_others_bytes(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    content = os.urandom(SIZE)
    folder, orig, copy = uploaded_with_copy(girder, content)
    # Each entry counts its bytes: the two copies together pass the GC's start mark (90%),
    # one alone does not; the GC evicts the least recently used, the original.
    config = {**base_config, "private_storage_capacity": 2 * SIZE}
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        root = m.mountpoint / "f"
        assert (root / "orig.bin").read_bytes() == content
        # Marked complete (after its checksum) by the run that brought the last bytes.
        wait_until(lambda: entries(config)[orig].complete, timeout=30)
        girder.reset_stats()
        assert (root / "copy.bin").read_bytes() == content
        assert download_bytes(girder) == 0
        wait_until(lambda: orig not in entries(config), timeout=30)
        rows = entries(config)
        assert rows[copy].complete
        data = Path(config["private_storage_path"]) / "data"
        assert os.stat(data / rows[copy].file_name).st_nlink == 1
        evicted = [e for e in m.status()["evictions"] if e["itemId"] == orig]
        assert evicted and evicted[0]["bytes"] == SIZE
        # The copy is still whole in the store: its bytes come from there.
        with open(data / rows[copy].file_name, "rb") as f:
            assert f.read() == content


def test_without_a_hash_there_is_no_dedup(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    """A stock Girder's answers carry no sha512 (the listing without the server plugin)."""
    content = os.urandom(SIZE)
    folder, _, copy = uploaded_with_copy(girder, content)
    config = {**base_config, "girder": {**base_config["girder"], "bulk_listing": False}}
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        root = m.mountpoint / "f"
        assert (root / "orig.bin").read_bytes() == content
        girder.reset_stats()
        assert (root / "copy.bin").read_bytes() == content
        assert download_bytes(girder) == SIZE
        assert entries(config)[copy].content_hash is None
