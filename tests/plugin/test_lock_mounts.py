"""Pins, downloads and session deletes with real mounts: a `wtfs mount` of a Girder session
shares the plugin's PostgreSQL index and store directory (the cluster's), so what the plugin
pins its GC honours, what it reads the plugin serves, and what a session delete releases its
files lose.

The store is 3 MiB and every file 1 MiB: reading a few files fills it, and its GC evicts the
least recently used unlocked entry first, which is the pinned file, read first, unless the pin
keeps it.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_index import LockKind, Owner

from tests.plugin.conftest import Cluster, seed_example
from tests.plugin.test_lock_api import ok, pinned
from tests.plugin.test_session_api import assert_shaped_like, created
from tests.support.bigdata import MiB
from tests.support.mounts import Mount, mounted

FILES = 7
SIZE = MiB


@dataclass
class Blobs:
    """A folder of FILES random files of SIZE bytes in Girder (f0 ... f6)."""

    folder_id: str
    items: list[str]
    contents: list[bytes]


@pytest.fixture(scope="module")
def blobs(girder: LocalGirder) -> Blobs:
    gc = girder.client()
    collection = gc.createCollection(f"pins-{time.monotonic_ns()}", public=False)
    folder = gc.createFolder(collection["_id"], "data", parentType="collection")
    rng = random.Random(18)
    items, contents = [], []
    for n in range(FILES):
        content = rng.randbytes(SIZE)
        made = gc.uploadStreamToFolder(folder["_id"], io.BytesIO(content), f"f{n}", SIZE)
        items.append(str(made["itemId"]))
        contents.append(content)
    return Blobs(str(folder["_id"]), items, contents)


def config_for(base_config: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    return {**base_config, "index_url": cluster.index_url,
            "private_storage_path": str(cluster.store), "private_storage_capacity": 3 * MiB,
            "block_size": "1MiB"}  # fmt: skip


def read(m: Mount, n: int, blobs: Blobs) -> None:
    assert (m.mountpoint / f"data/f{n}").read_bytes() == blobs.contents[n], f"f{n}"


def evicted_items(cluster: Cluster) -> set[str]:
    return {e.item_id for e in cluster.index.evictions(1000)}


def wait_for(what: str, check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_pinned_file_outlives_a_full_store_and_downloads_from_it_with_and_without_range(
    tmp_path: Path,
    base_config: dict[str, Any],
    admin_http: httpx.Client,
    cluster: Cluster,
    blobs: Blobs,
) -> None:
    session = created(admin_http, [{"itemId": blobs.folder_id, "mountPath": "/data"}])
    sid = session["_id"]
    config = config_for(base_config, cluster)
    with mounted(tmp_path / "m", config, session["dataSet"], session_id=sid) as m:
        read(m, 0, blobs)
        lock = pinned(admin_http, sid, blobs.items[0], expiresIn=600)
        for n in range(1, 6):  # 5 MiB more through a 3 MiB store
            read(m, n, blobs)
        gone = evicted_items(cluster)
        assert len(gone) >= 3, gone  # the GC ran, the least recently used first...
        assert blobs.items[0] not in gone  # ...but never the pinned file, read first of all
        [entry] = cluster.index.current_entries(blobs.items[0])
        assert entry.complete and entry.present == SIZE
        stored = (cluster.store / "data" / entry.file_name).read_bytes()
        assert sha(stored) == sha(blobs.contents[0])

        # The transfers the mount made, in the seed's shape, one per file read (each is marked
        # DONE just after its last byte is served).
        def transfers() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = ok(
                admin_http.get("dm/transfer", params={"sessionId": sid})
            )
            return listed

        wait_for("six transfers DONE", lambda: sum(t["status"] == 3 for t in transfers()) == 6)
        assert_shaped_like(transfers(), seed_example("transfer_list_response.json"))
        assert {t["itemId"] for t in transfers()} == set(blobs.items[:6])

    # The mount is gone; the pin and the bytes stay, and Girder serves them from the store.
    url = f"dm/lock/{lock['_id']}/download"
    whole = admin_http.get(url)
    assert whole.status_code == 200, whole.text
    assert sha(whole.content) == sha(blobs.contents[0])
    assert whole.headers["Content-Length"] == str(SIZE)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in whole.headers
    assert 'filename="f0"' in whole.headers["Content-Disposition"]
    content = blobs.contents[0]
    for asked, start, end in [
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=1048000-", 1048000, SIZE),
        ("bytes=-100", SIZE - 100, SIZE),
        ("bytes=0-99999999", 0, SIZE),
        ("bytes=-99999999", 0, SIZE),
    ]:
        part = admin_http.get(url, headers={"Range": asked})
        assert part.status_code == 206, (asked, part.text)
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}", asked
        assert part.content == content[start:end], asked
    for ignored in ("bytes=0-0,5-6", "items=0-1", "bytes=9-3"):  # several, other units, invalid
        answer = admin_http.get(url, headers={"Range": ignored})
        assert answer.status_code == 200 and len(answer.content) == SIZE, ignored
    for unsatisfiable in (f"bytes={SIZE}-", "bytes=-0", f"bytes={SIZE + 5}-{SIZE + 9}"):
        answer = admin_http.get(url, headers={"Range": unsatisfiable})
        assert answer.status_code == 416, (unsatisfiable, answer.text)
        assert answer.headers["Content-Range"] == f"bytes */{SIZE}"

    # A pin of an item no mount has read: nothing to download yet, and the answer says so.
    unread = pinned(admin_http, sid, blobs.items[6])
    answer = admin_http.get(f"dm/lock/{unread['_id']}/download")
    assert answer.status_code == 409
    assert answer.json()["message"].startswith(f"item {blobs.items[6]} is not in the store yet")


def test_an_expired_pin_is_reclaimed_by_a_mounts_gc_and_its_file_evicted_again(
    tmp_path: Path,
    base_config: dict[str, Any],
    admin_http: httpx.Client,
    cluster: Cluster,
    blobs: Blobs,
) -> None:
    session = created(admin_http, [{"itemId": blobs.folder_id, "mountPath": "/data"}])
    sid = session["_id"]
    config = config_for(base_config, cluster)  # gc_run_interval: 1 s
    with mounted(tmp_path / "m", config, session["dataSet"], session_id=sid) as m:
        read(m, 0, blobs)
        lock = pinned(admin_http, sid, blobs.items[0], expiresIn=1)

        def reclaimed() -> bool:
            return admin_http.get(f"dm/lock/{lock['_id']}").status_code == 400

        wait_for("the mount's GC to reclaim the expired pin", reclaimed)
        assert cluster.index.lock_total() == 0
        for n in range(1, 4):
            read(m, n, blobs)
        wait_for("f0 to be evicted", lambda: blobs.items[0] in evicted_items(cluster))
        assert cluster.index.current_entries(blobs.items[0]) == []
    again = pinned(admin_http, sid, blobs.items[0])
    assert again["_id"] != lock["_id"]  # a new pin: the old one is gone
    assert admin_http.get(f"dm/lock/{again['_id']}/download").status_code == 409


def test_deleting_a_session_releases_a_mounts_open_file_and_a_pin(
    tmp_path: Path,
    base_config: dict[str, Any],
    admin_http: httpx.Client,
    girder: LocalGirder,
    cluster: Cluster,
    blobs: Blobs,
) -> None:
    session = created(admin_http, [{"itemId": blobs.folder_id, "mountPath": "/data"}])
    sid = session["_id"]
    config = config_for(base_config, cluster)
    with mounted(tmp_path / "m", config, session["dataSet"], session_id=sid) as m:
        read(m, 0, blobs)
        pin = pinned(admin_http, sid, blobs.items[0])
        with open(m.mountpoint / "data/f1", "rb") as held:
            assert held.read() == blobs.contents[1]
            locks = ok(admin_http.get(f"dm/session/{sid}/lock"))
            assert_shaped_like(locks, seed_example("lock_list_response.json"))
            [reader] = [lock for lock in locks if lock["kind"] == LockKind.READ]
            assert reader["itemId"] == blobs.items[1] and reader["sessionId"] == sid
            assert reader["mountpoint"] == str(m.mountpoint) and reader["path"] == "/data/f1"
            assert reader["alive"] is True and reader["expires"] is None
            assert reader["userId"] == girder.admin_user_id
            assert {lock["_id"] for lock in locks} == {reader["_id"], pin["_id"]}

            # A running mount's lock is not released through Girder...
            refused = admin_http.delete(f"dm/lock/{reader['_id']}")
            assert refused.status_code == 409
            assert "held by the running mount" in refused.json()["message"]
            # ...but deleting its session releases it, with the pin.
            assert ok(admin_http.delete(f"dm/session/{sid}"))
            assert cluster.index.locks(Owner.lease_only("test"), session_id=sid) == []
            assert ok(admin_http.get("dm/lock", params={"sessionId": sid})) == []
            assert admin_http.get(f"dm/lock/{pin['_id']}").status_code == 400
            held.seek(0)  # the open file reads on: its bytes are still in the store
            assert held.read() == blobs.contents[1]
        events = httpx.get(f"{girder.base_url}/__wtfs_dev/events").json()["events"]
        assert {"event": "dm.session.delete", "id": sid} in events
