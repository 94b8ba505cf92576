"""`/dm/lock` and `/dm/transfer` on the real dev Girder with the plugin loaded, configured through
Girder's REST API to use a real PostgreSQL index: the settings (validated, the password never
shown), every endpoint, the records' shape against seed 001's examples, pins and their renewal,
who may see and do what, and the answers of a plugin that has no index or cannot reach it.

The rows a mount would write (a read lock, transfers) are written here through the same index
(`cluster.index`); tests/plugin/test_lock_mounts.py has real mounts write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from girder_plugin_wtfs.download import CHUNK
from wtfs_devgirder.control import LocalGirder
from wtfs_index import DISCARD_AFTER, LockKind, NewEntry, Owner, TransferStatus

from tests.plugin.conftest import (
    INDEX_URL,
    STORE_PATH,
    Cluster,
    Tree,
    put_settings,
    seed_example,
)
from tests.plugin.test_session_api import assert_shaped_like, created
from tests.support.girder import GirderUser
from tests.support.postgres import PostgresServer

DAY = 86400


def session_of(http: httpx.Client, tree: Tree, *paths: str) -> dict[str, Any]:
    """A session holding folder `one` at /one and each item of `paths` at /<its name>."""
    data_set = [{"itemId": tree.folders["one"], "mountPath": "/one"}]
    data_set += [{"itemId": tree.items[p], "mountPath": "/" + p.rsplit("/", 1)[-1]} for p in paths]
    return created(http, data_set)


def pin(http: httpx.Client, session_id: str, item_id: str, **params: Any) -> httpx.Response:
    return http.post("dm/lock", params={"sessionId": session_id, "itemId": item_id, **params})


def pinned(http: httpx.Client, session_id: str, item_id: str, **params: Any) -> dict[str, Any]:
    answer = pin(http, session_id, item_id, **params)
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()
    return record


def ok(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()


def seconds_from_now(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() - time.time()


# -- settings ------------------------------------------------------------------------------------


def test_without_settings_each_endpoint_says_what_to_set(
    admin_http: httpx.Client, private_tree: Tree
) -> None:
    session = session_of(admin_http, private_tree)
    sid, item = session["_id"], private_tree.items["one/fa.txt"]
    for method, path, params in [
        ("GET", "dm/lock", {}),
        ("GET", f"dm/session/{sid}/lock", {}),
        ("GET", "dm/lock/1", {}),
        ("POST", "dm/lock", {"sessionId": sid, "itemId": item}),
        ("DELETE", "dm/lock/1", {}),
        ("GET", "dm/lock/1/download", {}),
        ("GET", "dm/transfer", {}),
    ]:
        answer = admin_http.request(method, path, params=params)
        assert answer.status_code == 503, (method, path, answer.text)
        message = answer.json()["message"]
        assert message.startswith("the wtfs plugin has no index: set wtfs.index_url"), message
        assert "trace" not in answer.json()
    # Deleting a session needs no index when none is set: nothing could be locked in it.
    assert admin_http.delete(f"dm/session/{sid}").status_code == 200


def test_downloads_without_a_store_path_say_to_set_it(
    admin_http: httpx.Client, cluster: Cluster, private_tree: Tree
) -> None:
    session = session_of(admin_http, private_tree)
    lock = pinned(admin_http, session["_id"], private_tree.items["one/fa.txt"])
    assert put_settings(admin_http, {STORE_PATH: None}).status_code == 200
    answer = admin_http.get(f"dm/lock/{lock['_id']}/download")
    assert answer.status_code == 503
    assert answer.json()["message"].startswith("the wtfs plugin has no store to read: set "
                                               "wtfs.store_path")  # fmt: skip


def test_settings_are_checked_and_the_password_is_never_shown(
    admin_http: httpx.Client,
    girder: LocalGirder,
    cluster: Cluster,
    postgres_server: PostgresServer,
    private_tree: Tree,
) -> None:
    password = postgres_server.password
    answers: list[httpx.Response] = []

    def put(key: str, value: Any) -> httpx.Response:
        answers.append(admin_http.put("system/setting", data={"key": key, "value": value}))
        return answers[-1]

    # The index URL: PostgreSQL only, readable; errors show it redacted.
    for bad, needle in [
        (f"mysql://wtfs:{password}@127.0.0.1/db", "is not a postgresql:// URL"),
        (f"sqlite:///{cluster.store}/index.sqlite3", "is not a postgresql:// URL"),
        (f"postgresql://wtfs:{password}@127.0.0.1:port/db", "cannot be read"),
        (f"postgresql://wtfs:{password[:4]}/{password[4:]}@127.0.0.1/db", "cannot be read"),
        ("42", "must be a postgresql:// URL"),
    ]:
        answer = put(INDEX_URL, bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert needle in answer.json()["message"], answer.text
    assert "wtfs:***@127.0.0.1" in answers[0].json()["message"]
    # The store: an absolute directory this server can read.
    for bad, needle in [
        ("relative/store", "must be an absolute path"),
        (str(cluster.store / "missing"), "is not a directory"),
    ]:
        answer = put(STORE_PATH, bad)
        assert answer.status_code == 400 and needle in answer.json()["message"], answer.text

    # Stored as given (the plugin connects with it), shown redacted to admins, both ways.
    assert put(INDEX_URL, cluster.index_url).json() is True
    shown = urlsplit(cluster.index_url)._replace(
        netloc=f"wtfs:***@{postgres_server.host}:{postgres_server.port}"
    )
    answers.append(admin_http.get("system/setting", params={"key": INDEX_URL}))
    assert answers[-1].json() == shown.geturl()
    answers.append(
        admin_http.get("system/setting", params={"list": json.dumps([INDEX_URL, STORE_PATH])})
    )
    assert answers[-1].json() == {INDEX_URL: shown.geturl(), STORE_PATH: str(cluster.store)}
    answers.append(admin_http.get("dm/lock"))
    assert answers[-1].status_code == 200 and answers[-1].json() == []

    # An index it cannot log in to: a 503 naming it, redacted; a session delete is refused and
    # the session kept, so that its locks are never left held.
    session = session_of(admin_http, private_tree)
    wrong = postgres_server.url_for(urlsplit(cluster.index_url).path.strip("/"),
                                    password="wrong-Secret-42")  # fmt: skip
    assert put(INDEX_URL, wrong).status_code == 200
    answers.append(admin_http.get("dm/lock"))
    assert answers[-1].status_code == 503
    assert "cannot be reached" in answers[-1].json()["message"]
    assert "wtfs:***@" in answers[-1].json()["message"]
    answers.append(admin_http.delete(f"dm/session/{session['_id']}"))
    assert answers[-1].status_code == 503, answers[-1].text
    assert admin_http.get(f"dm/session/{session['_id']}").status_code == 200
    assert put(INDEX_URL, cluster.index_url).status_code == 200  # back: deleting works again
    assert admin_http.delete(f"dm/session/{session['_id']}").status_code == 200

    for answer in answers:
        assert password not in answer.text and "wrong-Secret-42" not in answer.text, answer.text
    log = girder.log_file.read_text(errors="replace")
    assert password not in log and "wrong-Secret-42" not in log


# -- pins ----------------------------------------------------------------------------------------


def test_a_pin_is_a_hold_lock_on_the_item_shaped_like_the_seeds_and_renewed_in_place(
    admin_http: httpx.Client, girder: LocalGirder, cluster: Cluster, private_tree: Tree
) -> None:
    session = session_of(admin_http, private_tree, "two/b.txt")
    sid = session["_id"]
    item = private_tree.items["one/a/c.txt"]  # below the dataSet's folder
    record = pinned(admin_http, sid, item)
    assert_shaped_like(record, seed_example("lock_acquire_response.json"))
    assert record["itemId"] == item and record["sessionId"] == sid
    assert record["ownerId"] == sid  # the seed's default
    assert record["userId"] == girder.admin_user_id
    assert record["kind"] == LockKind.HOLD and record["entryKey"] is None
    assert record["alive"] is True and record["renewed"] is False
    assert 3590 < seconds_from_now(record["expires"]) <= 3600  # DEFAULT_PIN_SECONDS
    assert record["access"]["users"][0]["id"] == girder.admin_user_id

    again = pinned(admin_http, sid, item, expiresIn=2 * DAY)
    assert again["_id"] == record["_id"] and again["renewed"] is True
    assert 2 * DAY - 10 < seconds_from_now(again["expires"]) <= 2 * DAY
    [row] = cluster.index.locks(Owner.lease_only("test"), item_id=item)
    assert str(row.id) == record["_id"] and row.expires is not None and row.kind == "hold"

    other_owner = pinned(admin_http, sid, item, ownerId="a-notebook", expiresIn=60)
    other_item = pinned(admin_http, sid, private_tree.items["two/b.txt"])
    assert len({record["_id"], other_owner["_id"], other_item["_id"]}) == 3
    assert other_owner["ownerId"] == "a-notebook"
    assert cluster.index.lock_total() == 3

    # One lock, a list of them, a session's: the seed's shapes, the filters combined.
    got = ok(admin_http.get(f"dm/lock/{record['_id']}"))
    assert_shaped_like(got, seed_example("lock_get_response.json"))
    assert got["_accessLevel"] == 2 and got["_id"] == record["_id"]
    listed = ok(admin_http.get("dm/lock", params={"sessionId": sid}))
    assert_shaped_like(listed, seed_example("lock_list_response.json"))
    assert [lock["_id"] for lock in listed] == [
        record["_id"],
        other_owner["_id"],
        other_item["_id"],
    ]
    assert ok(admin_http.get(f"dm/session/{sid}/lock")) == listed
    by_item = ok(admin_http.get("dm/lock", params={"itemId": item}))
    assert [lock["_id"] for lock in by_item] == [record["_id"], other_owner["_id"]]
    by_owner = ok(admin_http.get("dm/lock", params={"ownerId": "a-notebook", "itemId": item}))
    assert [lock["_id"] for lock in by_owner] == [other_owner["_id"]]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"expiresIn": 0}, "expiresIn must be 1 to 604800 seconds"),
        ({"expiresIn": -5}, "expiresIn must be 1 to 604800 seconds"),
        ({"expiresIn": 7 * DAY + 1}, "expiresIn must be 1 to 604800 seconds"),
        ({"expiresIn": "nan"}, "expiresIn must be 1 to 604800 seconds"),
        ({"expiresIn": "soon"}, "expiresIn"),
        ({"ownerId": " "}, "ownerId must be 1 to 255 printable characters"),
        ({"ownerId": "x" * 256}, "ownerId must be 1 to 255 printable characters"),
        ({"itemId": "5f00000000000000000000ff"}, "Invalid item id"),
        ({"itemId": "not-an-id"}, "Invalid item id"),
        ({"itemId": "secret/s.txt"}, "is not in session"),
        ({"sessionId": "5f00000000000000000000ff"}, "Invalid session id"),
    ],
)
def test_a_pin_refuses_bad_input_with_400(
    admin_http: httpx.Client,
    cluster: Cluster,
    private_tree: Tree,
    params: dict[str, Any],
    needle: str,
) -> None:
    session = session_of(admin_http, private_tree)
    query = {"sessionId": session["_id"], "itemId": private_tree.items["one/fa.txt"], **params}
    if query["itemId"] == "secret/s.txt":  # an item the admin reads, outside the dataSet
        query["itemId"] = private_tree.items["secret/s.txt"]
    answer = admin_http.post("dm/lock", params=query)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["message"], answer.text
    assert cluster.index.lock_total() == 0


def test_a_pin_or_a_gone_mounts_lock_is_released_and_a_second_release_is_400(
    admin_http: httpx.Client, cluster: Cluster, private_tree: Tree
) -> None:
    session = session_of(admin_http, private_tree)
    sid, item = session["_id"], private_tree.items["one/fa.txt"]
    lock = pinned(admin_http, sid, item)
    # the read lock of a mount that is gone (its owner row is not there: not alive)
    gone = cluster.index.acquire_lock(item, sid, Owner.current("gone"), entry_key="girder:f@1",
                                      mountpoint="/mnt/x", path="/one/fa.txt")  # fmt: skip
    assert ok(admin_http.get(f"dm/lock/{gone}"))["alive"] is False
    for lock_id in (lock["_id"], str(gone)):
        assert ok(admin_http.delete(f"dm/lock/{lock_id}")) == {
            "message": f"Released lock {lock_id}."
        }
        again = admin_http.delete(f"dm/lock/{lock_id}")
        assert again.status_code == 400 and "Invalid lock id" in again.json()["message"]
    assert cluster.index.lock_total() == 0
    assert admin_http.get("dm/lock/not-a-number").status_code == 400


# -- transfers -----------------------------------------------------------------------------------


def test_transfers_are_shaped_like_the_seeds_and_old_ones_hidden_by_default(
    admin_http: httpx.Client, cluster: Cluster, private_tree: Tree
) -> None:
    session = session_of(admin_http, private_tree)
    sid = session["_id"]
    now = time.time()

    def transfer(path: str, session_id: str, status: int, ended_ago: float | None) -> str:
        tid = cluster.index.transfer_create(
            key=f"girder:{path}@1", item_id=private_tree.items["one/fa.txt"], path=path,
            session_id=session_id, owner_id="mount-1", source="girder:file/1", size=1024,
            start_offset=0,
        )  # fmt: skip
        fields: dict[str, Any] = {"status": status, "start_time": now - 200, "transferred": 512}
        if ended_ago is not None:
            fields.update(end_time=now - ended_ago, transferred=1024)
        cluster.index.transfer_update(tid, **fields)
        return str(tid)

    old = transfer("/one/old", sid, TransferStatus.DONE, DISCARD_AFTER + 30)
    recent = transfer("/one/recent", sid, TransferStatus.DONE, 5)
    running = transfer("/one/running", sid, TransferStatus.TRANSFERRING, None)
    elsewhere = transfer("/x", "another-session", TransferStatus.FAILED, 1)

    shown = ok(admin_http.get("dm/transfer", params={"sessionId": sid}))
    assert [t["_id"] for t in shown] == [recent, running]
    assert_shaped_like(shown[:1], seed_example("transfer_list_response.json"))
    assert shown[0]["status"] == 3 and shown[0]["transferred"] == 1024
    every = ok(admin_http.get("dm/transfer", params={"sessionId": sid, "discardOld": "false"}))
    assert [t["_id"] for t in every] == [old, recent, running]
    assert [t["_id"] for t in ok(admin_http.get("dm/transfer"))] == [recent, running, elsewhere]


# -- access --------------------------------------------------------------------------------------


def test_another_user_sees_and_does_nothing_with_anothers_locks(
    admin_http: httpx.Client,
    bob_http: httpx.Client,
    bob: GirderUser,
    cluster: Cluster,
    public_tree: Tree,
) -> None:
    """Bob reads the public data too, but the admin's session, its pin and its transfers are
    not his; his own session's are."""
    item = public_tree.items["one/fa.txt"]
    theirs = session_of(admin_http, public_tree)
    lock = pinned(admin_http, theirs["_id"], item)
    cluster.index.transfer_create(key="k", item_id=item, path="/one/fa.txt",
                                  session_id=theirs["_id"], owner_id="m", source="girder:f",
                                  size=1, start_offset=0)  # fmt: skip
    sid = theirs["_id"]
    for method, path, params in [
        ("GET", "dm/lock", {"sessionId": sid}),
        ("GET", f"dm/session/{sid}/lock", {}),
        ("GET", f"dm/lock/{lock['_id']}", {}),
        ("DELETE", f"dm/lock/{lock['_id']}", {}),
        ("GET", f"dm/lock/{lock['_id']}/download", {}),
        ("POST", "dm/lock", {"sessionId": sid, "itemId": item}),
        ("GET", "dm/transfer", {"sessionId": sid}),
        ("GET", "dm/lock", {"sessionId": "a-session-file"}),  # not a Girder session: admins'
        ("GET", "dm/transfer", {"sessionId": "a-session-file"}),
    ]:
        answer = bob_http.request(method, path, params=params)
        assert answer.status_code == 403, (method, path, answer.text)
    # Listings without a session show him only what his sessions hold.
    assert ok(bob_http.get("dm/lock")) == [] and ok(bob_http.get("dm/transfer")) == []
    mine = session_of(bob_http, public_tree)
    own = pinned(bob_http, mine["_id"], item, expiresIn=60)
    assert own["userId"] == bob.id and own["_accessLevel"] == 2
    assert [lock["_id"] for lock in ok(bob_http.get("dm/lock"))] == [own["_id"]]
    assert [lock["_id"] for lock in ok(bob_http.get("dm/lock", params={"itemId": item}))] == [
        own["_id"]
    ]
    assert ok(bob_http.delete(f"dm/lock/{own['_id']}"))["message"] == f"Released lock {own['_id']}."
    # The admin sees everyone's.
    assert [lock["_id"] for lock in ok(admin_http.get("dm/lock"))] == [lock["_id"]]
    assert cluster.index.lock_total() == 1


# -- downloads -------------------------------------------------------------------------------------


def socket_buffers_limit() -> int:
    """The most bytes a TCP connection may hold in flight: the largest send buffer plus the
    largest receive buffer the kernel's autotuning may grow to."""
    return sum(
        int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        for name in ("tcp_wmem", "tcp_rmem")
    )


def test_a_download_is_cut_short_when_the_store_drops_the_entry_meanwhile(
    admin_http: httpx.Client, cluster: Cluster, private_tree: Tree
) -> None:
    """Bytes the index no longer vouches for are never sent: a pinned entry dropped anyway (a
    checksum mismatch, fsck) while it streams ends the answer early, short of its length.

    The file is longer than the loopback socket buffers can hold, or the server could have sent
    it all before the entry is dropped (CI once received all of an 8 MiB file: this machine's
    receive buffer may grow to 32 MiB)."""
    session = session_of(admin_http, private_tree)
    item = private_tree.items["one/fa.txt"]
    size = CHUNK * (-(-socket_buffers_limit() // CHUNK) + 8)
    writer = Owner.current("writer")
    new = NewEntry("girder:blob@1", "girder:blob", "1", item, size, "girder:x", "/one/fa.txt")
    entry = cluster.index.ensure_entry(new, by_owner=writer.owner_id)
    path = cluster.store / "data" / entry.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    claim = cluster.index.reserve(entry.key, 0, size, writer, capacity=1 << 40)
    assert claim.claim_id is not None
    cluster.index.commit_range(claim.claim_id, entry.key, 0, size)
    assert cluster.index.mark_complete(entry.key)
    lock = pinned(admin_http, session["_id"], item)
    received = 0
    with admin_http.stream("GET", f"dm/lock/{lock['_id']}/download") as answer:
        assert answer.status_code == 200 and answer.headers["Content-Length"] == str(size)
        chunks = answer.iter_raw()
        received += len(next(chunks))
        cluster.index.delete_entry(entry.key, "checksum", writer.owner_id)
        with contextlib.suppress(httpx.RemoteProtocolError):  # the server ends it early
            for chunk in chunks:
                received += len(chunk)
    assert 0 < received < size
