"""Fresh bytes after a change in Girder: a file's contents replaced under the same id.

Girder 5 replaces a file's contents in place (`PUT /file/{id}/contents?size=N`, then the bytes
through `POST /file/chunk`); with as many bytes as before, only the file document's `created`
changes. The store keeps versions apart by fingerprint; these tests check, on real mounts of
the real dev Girder, that a mount sees the new version where it should: after a remount of the
same store (with the server plugin's listing, and without it, when the file lists come from the
metadata cache), inside a running mount after `wtfs session refresh`, and at every open with
`mount.revalidate_after: 0`; that an old version held open reads its own bytes while a new
open reads the new ones, and goes from the store when it is closed; that a file deleted in
Girder meanwhile is ENOENT with its cause.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import MiB
from tests.support.index import store_index
from tests.support.mounts import mounted
from tests.support.nodes import wait_until

SIZE = 3 * MiB + 1234  # a few blocks, so that reads go through runs


def create_file(girder: LocalGirder, content: bytes) -> tuple[str, str, str]:
    """(folder id, item id, file id) of a new public folder holding `v.bin` = `content`."""
    client = girder.client()
    collection = client.createCollection(f"versions-{time.monotonic_ns()}", public=True)
    folder = client.createFolder(collection["_id"], "f", parentType="collection", public=True)
    item = client.createItem(folder["_id"], "v.bin")
    where = {"parentType": "item", "parentId": item["_id"], "name": "v.bin"}
    upload = _put(girder, "POST", "file", params={**where, "size": len(content)})
    doc = _put(girder, "POST", "file/chunk", params={"uploadId": upload["_id"], "offset": 0},
               content=content)  # fmt: skip
    return str(folder["_id"]), str(item["_id"]), str(doc["_id"])


def replace_contents(girder: LocalGirder, file_id: str, content: bytes) -> dict[str, Any]:
    """Girder's own way to replace a file's contents (the same file id); the new document."""
    upload = _put(girder, "PUT", f"file/{file_id}/contents", params={"size": len(content)})
    return _put(girder, "POST", "file/chunk", params={"uploadId": upload["_id"], "offset": 0},
                content=content)  # fmt: skip


def _put(girder: LocalGirder, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    headers = {"Girder-Token": girder.token()}
    answer = httpx.request(method, f"{girder.api_url}/{path}", headers=headers, timeout=60,
                           **kwargs)  # fmt: skip
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries_of(config: dict[str, Any], file_id: str) -> list[Any]:
    index = store_index(config)
    try:
        return [e for e in index.entries() if e.source_key == f"girder:{file_id}"]
    finally:
        index.close()


def file_checks(girder: LocalGirder) -> int:
    """How many `GET /file/{id}` Girder answered since the last reset (the version checks)."""
    route = girder.stats()["by_route"].get("GET /api/v1/file/{id}", {})
    return int(route.get("requests", 0))


LISTINGS = pytest.mark.parametrize("bulk", [True, False], ids=["plugin-listing", "stock-listing"])


def test_girder_replaces_contents_under_the_same_id_changing_only_created(
    girder: LocalGirder,
) -> None:
    """What the version check rests on, as the dev Girder (5.0.21) does it."""
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    _, item_id, file_id = create_file(girder, old)
    client = girder.client()
    before, item_before = client.get(f"file/{file_id}"), client.get(f"item/{item_id}")
    time.sleep(0.01)
    after = replace_contents(girder, file_id, new)
    item_after = client.get(f"item/{item_id}")
    assert after["_id"] == file_id and after["size"] == before["size"] == SIZE
    assert after["created"] != before["created"]
    assert {k: v for k, v in after.items() if k != "created"} == {
        k: v for k, v in before.items() if k != "created"
    }
    assert "sha512" not in after  # no checksum to tell the versions apart
    assert (item_after["updated"], item_after["size"]) == (item_before["updated"], SIZE)
    download = httpx.get(f"{girder.api_url}/file/{file_id}/download",
                         headers={"Girder-Token": girder.token()}, timeout=60)  # fmt: skip
    assert download.content == new


@LISTINGS
def test_a_remount_of_the_same_store_serves_the_new_bytes(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, bulk: bool
) -> None:
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    folder, _, file_id = create_file(girder, old)
    config = {**base_config, "girder": {**base_config["girder"], "bulk_listing": bulk}}
    session = [{"itemId": folder, "mountPath": "/f"}]
    with mounted(tmp_path / "first", config, session) as m:
        assert digest((m.mountpoint / "f" / "v.bin").read_bytes()) == digest(old)
    [first] = entries_of(config, file_id)
    assert first.complete
    replace_contents(girder, file_id, new)
    girder.reset_stats()
    with mounted(tmp_path / "second", config, session) as m:
        path = m.mountpoint / "f" / "v.bin"
        assert digest(path.read_bytes()) == digest(new)
        assert digest(path.read_bytes()) == digest(new)  # again: no second check
        # Without the plugin the file list came from the metadata cache, with the old
        # `created`: the first open asked Girder once. The plugin's listing was fresh.
        assert file_checks(girder) == (0 if bulk else 1)
        # A read returns once its bytes are in the store; the entry is marked complete just
        # after, by the fetch (seen late on a loaded machine).
        wait_until(lambda: [e.complete for e in entries_of(config, file_id)] == [True], 30)
        [current] = entries_of(config, file_id)
        assert current.version != first.version
        assert not (Path(config["private_storage_path"]) / "data" / first.file_name).exists()


@LISTINGS
def test_a_running_mount_serves_the_new_bytes_after_a_session_refresh(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, bulk: bool
) -> None:
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    folder, _, file_id = create_file(girder, old)
    config = {**base_config, "girder": {**base_config["girder"], "bulk_listing": bulk}}
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        path = m.mountpoint / "f" / "v.bin"
        assert digest(path.read_bytes()) == digest(old)
        replace_contents(girder, file_id, new)
        # Until a refresh the running mount keeps the version it listed (documented).
        assert digest(path.read_bytes()) == digest(old)
        assert "refreshed" in m.wtfs("session", "refresh", str(m.mountpoint)).stdout
        assert digest(path.read_bytes()) == digest(new)
        assert os.stat(path).st_size == SIZE
        # Marked complete once its sha512 (shown by the plugin's listing) is checked, which
        # may come just after the last read returned.
        wait_until(lambda: [e.complete for e in entries_of(config, file_id)] == [True], 30)
        log = m.log()
    assert "Traceback" not in log


def test_an_old_version_held_open_reads_its_bytes_while_a_new_open_reads_the_new_ones(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    """With `mount.revalidate_after: 0` every open asks Girder, so the new version comes on the
    same inode while the old one is open: each must read its own bytes, through the kernel's
    page cache or around it, and the old entry goes from the store with its last close."""
    old, new, newest = os.urandom(SIZE), os.urandom(SIZE), os.urandom(SIZE + 17)
    folder, _, file_id = create_file(girder, old)
    config = {**base_config, "mount": {"revalidate_after": 0}}
    store = Path(config["private_storage_path"])
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        path = m.mountpoint / "f" / "v.bin"
        held = open(path, "rb")  # noqa: SIM115 - the old version, held open
        try:
            assert digest(held.read()) == digest(old)
            [first] = entries_of(config, file_id)
            replace_contents(girder, file_id, new)
            girder.reset_stats()
            with open(path, "rb") as fresh:
                assert file_checks(girder) == 1
                assert digest(fresh.read()) == digest(new)
                held.seek(0)
                assert digest(held.read()) == digest(old)  # the page cache did not mix them
                fresh.seek(0)
                assert digest(fresh.read()) == digest(new)
            versions = {e.version: e for e in entries_of(config, file_id)}
            assert first.version in versions and len(versions) == 2, versions
            assert versions[first.version].superseded
            assert (store / "data" / first.file_name).exists()  # still held open
            held.seek(SIZE // 2)
            assert digest(held.read()) == digest(old[SIZE // 2 :])
        finally:
            held.close()
        # The old version goes with its last close (the kernel releases the file just after):
        # its row first, then its file (unlinked once the row's deletion is committed; CI once
        # looked in between).
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up and (
            len(entries_of(config, file_id)) > 1 or (store / "data" / first.file_name).exists()
        ):
            time.sleep(0.05)
        [current] = entries_of(config, file_id)
        assert current.version != first.version and not current.superseded
        assert not (store / "data" / first.file_name).exists()
        assert digest(path.read_bytes()) == digest(new)
        # A size change too: the kernel forgets the old size.
        replace_contents(girder, file_id, newest)
        assert digest(path.read_bytes()) == digest(newest)
        assert os.stat(path).st_size == SIZE + 17
        log = m.log()
    assert "Traceback" not in log


def test_an_old_version_held_open_fetches_nothing_more_once_a_new_one_is_open(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    """Girder serves only the new contents: the holes of an old version open here must not be
    filled with them. Its bytes in the store are still served; the rest is EIO, with why."""
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    folder, _, file_id = create_file(girder, old)
    config = {**base_config, "block_size": "1MiB", "mount": {"revalidate_after": 0}}
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        path = m.mountpoint / "f" / "v.bin"
        held = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(held, 4096, 2 * MiB) == old[2 * MiB : 2 * MiB + 4096]  # one block
            replace_contents(girder, file_id, new)
            assert digest(path.read_bytes()) == digest(new)
            assert os.pread(held, 4096, 2 * MiB) == old[2 * MiB : 2 * MiB + 4096]
            with pytest.raises(OSError) as info:
                os.pread(held, 4096, 0)
            assert info.value.errno == errno.EIO
        finally:
            os.close(held)
        assert "Girder has a new version of this file" in m.log()
        assert digest(path.read_bytes()) == digest(new)
        log = m.log()
    assert "Traceback" not in log


def test_a_file_deleted_in_girder_before_its_open_is_enoent_with_the_cause(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    folder, _, file_id = create_file(girder, b"soon gone\n")
    config = {**base_config, "mount": {"revalidate_after": 0}}
    with mounted(tmp_path, config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        path = m.mountpoint / "f" / "v.bin"
        assert path.read_bytes() == b"soon gone\n"
        girder.client().delete(f"file/{file_id}")
        for _ in range(2):  # recorded once
            with pytest.raises(OSError) as info:
                path.read_bytes()
            assert info.value.errno == errno.ENOENT, info.value
        failed = [t for t in m.status("--all")["transfers"] if t["status"] == 4]
        assert [t["error"] for t in failed] == ["v.bin: deleted in Girder"], failed
        log = m.log()
    assert "Traceback" not in log
