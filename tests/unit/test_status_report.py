"""`wtfs status`: what the shared index says, in seed 001's transfer vocabulary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from wtfs_index.index import Index, TransferStatus
from wtfs_index.owner import Owner

from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.status.report import DISCARD_AFTER, gather, transfer_record

FillEntry = Callable[..., None]  # the `fill_entry` fixture

SEED_001_TRANSFER_KEYS = {
    "_accessLevel",
    "_id",
    "_modelType",
    "endTime",
    "error",
    "itemId",
    "ownerId",
    "path",
    "sessionId",
    "size",
    "startTime",
    "status",
    "transferred",
}


def config_for(root: Path) -> Config:
    return Config(private_storage_path=root, private_storage_capacity=1000)


def add_transfer(
    index: Index,
    owner: Owner,
    *,
    session_id: str = "s1",
    status: TransferStatus,
    ended_ago: float | None = None,
    transferred: int = 0,
) -> int:
    tid = index.transfer_create(
        key="k",
        item_id="item-1",
        path="/data/a.csv",
        session_id=session_id,
        owner_id=owner.owner_id,
        source="girder:file/1",
        size=2048,
        start_offset=0,
    )
    now = time.time()
    fields: dict[str, object] = {
        "status": int(status),
        "start_time": now - 100,
        "transferred": transferred,
    }
    if ended_ago is not None:
        fields["end_time"] = now - ended_ago
    index.transfer_update(tid, **fields)
    return tid


def test_status_of_a_store_that_does_not_exist(tmp_path: Path) -> None:
    root = tmp_path / "never-created"
    report = gather(config_for(root))
    assert report.store["exists"] is False
    assert report.store["usage"] == 0
    assert report.store["capacity"] == 1000
    assert report.store["gcStartBytes"] == 900
    assert report.store["gcEndBytes"] == 500
    assert (report.transfers, report.mounts, report.locks) == ([], [], [])
    assert not root.exists()  # looking does not create it
    json.dumps(report.to_json())


def test_status_of_an_empty_store(store: Store) -> None:
    report = gather(config_for(store.root))
    assert report.store["exists"] is False
    assert report.failed_count == 0
    assert not store.index_path.exists()


def test_status_of_a_fresh_index(store: Store, index: Index) -> None:
    report = gather(config_for(store.root))
    assert report.store["exists"] is True
    assert report.store["entries"] == 0
    assert report.transfers == []


def test_usage_counts_present_and_reserved_bytes(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 300)
    index.ensure_entry("b", "item-b", 500, None, "girder:x", "/b")
    index.reserve("b", 0, 200, me, capacity=1000)
    index.mark_complete("a")
    report = gather(config_for(store.root))
    assert report.store["present"] == 300
    assert report.store["reserved"] == 200
    assert report.store["usage"] == 500
    assert report.store["entries"] == 2
    assert report.store["complete"] == 1


def test_a_transfer_record_has_seed_001s_keys_and_codes(
    store: Store, index: Index, me: Owner
) -> None:
    tid = add_transfer(index, me, status=TransferStatus.DONE, ended_ago=1, transferred=2048)
    [record] = gather(config_for(store.root)).transfers
    assert set(record) >= SEED_001_TRANSFER_KEYS
    assert record["_id"] == tid
    assert record["_modelType"] == "transfer"
    assert record["itemId"] == "item-1"
    assert record["ownerId"] == me.owner_id
    assert record["sessionId"] == "s1"
    assert record["path"] == "/data/a.csv"
    assert record["size"] == 2048
    assert record["transferred"] == 2048
    assert record["status"] == 3
    assert record["error"] is None
    assert record["startTime"] is not None and record["endTime"] is not None
    json.dumps(record)


def test_status_codes_in_records_follow_seed_001(store: Store, index: Index, me: Owner) -> None:
    for status in TransferStatus:
        add_transfer(index, me, status=status)
    records = gather(config_for(store.root)).transfers
    assert [(r["status"], r["statusName"]) for r in records] == [
        (0, "INITIALIZING"),
        (1, "QUEUED"),
        (2, "TRANSFERRING"),
        (3, "DONE"),
        (4, "FAILED"),
    ]
    assert gather(config_for(store.root)).failed_count == 1


def test_discard_old_hides_transfers_that_ended_over_a_minute_ago(
    store: Store, index: Index, me: Owner
) -> None:
    old = add_transfer(index, me, status=TransferStatus.DONE, ended_ago=DISCARD_AFTER + 5)
    recent = add_transfer(index, me, status=TransferStatus.FAILED, ended_ago=10)
    running = add_transfer(index, me, status=TransferStatus.TRANSFERRING)
    shown = [t["_id"] for t in gather(config_for(store.root)).transfers]
    assert shown == [recent, running]
    every = [t["_id"] for t in gather(config_for(store.root), discard_old=False).transfers]
    assert every == [old, recent, running]


def test_status_can_be_limited_to_one_session(store: Store, index: Index, me: Owner) -> None:
    mine = add_transfer(index, me, session_id="mine", status=TransferStatus.QUEUED)
    add_transfer(index, me, session_id="theirs", status=TransferStatus.QUEUED)
    index.acquire_lock("item-1", "mine", me)
    index.acquire_lock("item-2", "theirs", me)
    report = gather(config_for(store.root), session_id="mine")
    assert [t["_id"] for t in report.transfers] == [mine]
    assert [lock["itemId"] for lock in report.locks] == ["item-1"]


def test_the_transfer_rate_is_bytes_per_second() -> None:
    row = {
        "id": 1,
        "item_id": "i",
        "owner_id": "o",
        "session_id": "s",
        "path": "/p",
        "size": 100,
        "transferred": 100,
        "status": 3,
        "start_time": 1000.0,
        "end_time": 1004.0,
        "error": None,
        "attempts": 1,
        "start_offset": 0,
        "source": "http://h/x",
    }
    record = transfer_record(row, now=5000.0)
    assert record["rate"] == 25
    assert record["startTime"] == "1970-01-01T00:16:40+00:00"


def test_mounts_locks_and_totals_are_reported(
    store: Store, index: Index, me: Owner, dead_owner: Owner, other_live_owner: Owner
) -> None:
    index.register_owner(
        me, "mount", mountpoint="/mnt/a", session_id="s1", session_origin="file:/s.yaml"
    )
    index.register_owner(other_live_owner, "status")
    index.heartbeat(me, {"hits": 2}, {})
    index.register_owner(dead_owner, "mount", mountpoint="/mnt/dead", session_id="s2")
    index.heartbeat(dead_owner, {"hits": 5, "misses": 1}, {})
    index.unregister_owner(dead_owner.owner_id)  # its counters go to the totals
    index.acquire_lock("item-1", "s1", me, mountpoint="/mnt/a", path="/a")
    report = gather(config_for(store.root))
    assert [(m["mountpoint"], m["alive"]) for m in report.mounts] == [("/mnt/a", True)]
    assert report.totals == {"hits": 7, "misses": 1}
    [lock] = report.locks
    assert (lock["itemId"], lock["sessionId"], lock["alive"]) == ("item-1", "s1", True)
    assert lock["_modelType"] == "lock"


def test_evictions_and_failures_are_reported(store: Store, index: Index, me: Owner) -> None:
    index.ensure_entry("k", "item-k", 10, None, "girder:x", "/k")
    index.delete_entry("k", "checksum", me.owner_id)
    index.record_failure("fetch", "k", "HTTP 500 from server", me.owner_id)
    report = gather(config_for(store.root))
    assert [(e["key"], e["reason"]) for e in report.evictions] == [("k", "checksum")]
    assert [(f["kind"], f["cause"]) for f in report.failures] == [("fetch", "HTTP 500 from server")]
