"""Long-lived sessions: refresh without unmounting, and a revoked token replaced from the key."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from wtfs_devgirder.control import LocalGirder

from tests.support.mounts import mounted


def make_folder(
    girder: LocalGirder, name: str, files: dict[str, bytes], *, public: bool = True
) -> tuple[str, dict[str, str]]:
    client = girder.client()
    collection = client.createCollection(f"{name}-{time.monotonic_ns()}", public=public)
    folder = client.createFolder(collection["_id"], name, parentType="collection", public=public)
    items = {}
    for file_name, content in files.items():
        items[file_name] = add_item(girder, folder["_id"], file_name, content)
    return str(folder["_id"]), items


def add_item(girder: LocalGirder, folder_id: str, name: str, content: bytes) -> str:
    client = girder.client()
    item = client.createItem(folder_id, name)
    client.uploadFile(item["_id"], _Stream(content), name, len(content), parentType="item")
    return str(item["_id"])


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def test_items_added_and_removed_in_girder_show_after_refresh_without_unmounting(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    folder, items = make_folder(girder, "live", {"a.txt": b"alpha\n", "b.txt": b"bravo\n"})
    with mounted(tmp_path, base_config, [{"itemId": folder, "mountPath": "/live"}]) as m:
        live = m.mountpoint / "live"
        assert sorted(os.listdir(live)) == ["a.txt", "b.txt"]
        inode_a = (live / "a.txt").stat().st_ino
        held = open(live / "a.txt", "rb")  # noqa: SIM115 - an open file must survive the refresh
        try:
            add_item(girder, folder, "c.txt", b"charlie\n")
            girder.client().delete(f"item/{items['b.txt']}")
            assert sorted(os.listdir(live)) == ["a.txt", "b.txt"]  # nothing changes by itself
            out = m.wtfs("session", "refresh", str(m.mountpoint)).stdout
            assert "refreshed" in out
            assert sorted(os.listdir(live)) == ["a.txt", "c.txt"]
            assert (live / "c.txt").read_bytes() == b"charlie\n"
            assert not (live / "b.txt").exists()
            assert (live / "a.txt").stat().st_ino == inode_a  # unchanged objects keep their inode
            assert held.read() == b"alpha\n"
        finally:
            held.close()
        # SIGHUP does the same as the command.
        add_item(girder, folder, "d.txt", b"delta\n")
        os.kill(m.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "d.txt" not in os.listdir(live) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (live / "d.txt").read_bytes() == b"delta\n"
        assert m.process.poll() is None


def test_refresh_of_a_mount_that_is_not_running_is_a_clear_error(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    folder, _ = make_folder(girder, "none", {"a.txt": b"a"})
    with mounted(tmp_path, base_config, [{"itemId": folder, "mountPath": "/x"}]) as m:
        result = m.wtfs("session", "refresh", str(tmp_path / "elsewhere"), check=False)
    assert result.returncode == 2
    assert "no running wtfs mount" in result.stderr


def test_reads_go_on_after_the_girder_token_is_revoked(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    files = {f"f{n}.bin": os.urandom(100_000 + n) for n in range(3)}
    # Private data: Girder would serve public data anonymously, hiding a dead token.
    folder, _ = make_folder(girder, "revoked", files, public=False)
    with mounted(tmp_path, base_config, [{"itemId": folder, "mountPath": "/r"}]) as m:
        root = m.mountpoint / "r"
        assert (root / "f0.bin").read_bytes() == files["f0.bin"]
        assert girder.revoke_tokens() >= 1  # the daemon's token is gone on the server
        for name in ("f1.bin", "f2.bin"):
            data = (root / name).read_bytes()
            assert hashlib.sha256(data).digest() == hashlib.sha256(files[name]).digest()
        log = m.log()
    assert log.count("obtained a Girder token") == 2
