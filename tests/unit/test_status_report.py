"""`wtfs status`: what the shared index says, in seed 001's transfer vocabulary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from wtfs_index import Index, LockKind, TransferRow, TransferStatus
from wtfs_index.owner import Owner

from tests.unit.conftest import FillEntry, new_entry
from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.status.report import DISCARD_AFTER, gather, transfer_record

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


def config_for(store: Store | Path) -> Config:
    """The config `wtfs status` would read for this store (its index_url included)."""
    if isinstance(store, Path):
        return Config(private_storage_path=store, private_storage_capacity=1000)
    return Config(
        private_storage_path=store.root, private_storage_capacity=1000, index_url=store.index_url
    )


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


def test_status_of_a_store_without_its_sqlite_index(local_store: Store) -> None:
    report = gather(config_for(local_store))
    assert report.store["exists"] is False
    assert report.failed_count == 0
    assert not local_store.index_path.exists()  # looking does not create it


def test_status_of_a_fresh_index(store: Store, index: Index) -> None:
    report = gather(config_for(store))
    assert report.store["exists"] is True
    assert report.store["entries"] == 0
    assert report.transfers == []
    assert report.store["index"] == index.describe()


def test_usage_counts_present_reserved_and_unlinking_bytes(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    c = fill_entry("c", 100)
    a = fill_entry("a", 300)
    b = new_entry(index, "b", 500)
    index.reserve(b.key, 0, 200, me, capacity=1000)
    index.mark_complete(a.key)
    evicted = index.evict_lru(500, me.owner_id, "gc")  # c: its file not yet unlinked
    assert [e.key for e in evicted] == [c.key]
    report = gather(config_for(store))
    assert report.store["present"] == 300
    assert report.store["reserved"] == 200
    assert report.store["unlinking"] == 100
    assert report.store["usage"] == 600
    assert report.store["entries"] == 2
    assert report.store["complete"] == 1


def test_a_transfer_record_has_seed_001s_keys_and_codes(
    store: Store, index: Index, me: Owner
) -> None:
    tid = add_transfer(index, me, status=TransferStatus.DONE, ended_ago=1, transferred=2048)
    [record] = gather(config_for(store)).transfers
    assert set(record) >= SEED_001_TRANSFER_KEYS
    assert record["_id"] == str(tid)
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
    records = gather(config_for(store)).transfers
    assert [(r["status"], r["statusName"]) for r in records] == [
        (0, "INITIALIZING"),
        (1, "QUEUED"),
        (2, "TRANSFERRING"),
        (3, "DONE"),
        (4, "FAILED"),
    ]
    assert gather(config_for(store)).failed_count == 1


def test_discard_old_hides_transfers_that_ended_over_a_minute_ago(
    store: Store, index: Index, me: Owner
) -> None:
    old = add_transfer(index, me, status=TransferStatus.DONE, ended_ago=DISCARD_AFTER + 5)
    recent = add_transfer(index, me, status=TransferStatus.FAILED, ended_ago=10)
    running = add_transfer(index, me, status=TransferStatus.TRANSFERRING)
    shown = [t["_id"] for t in gather(config_for(store)).transfers]
    assert shown == [str(recent), str(running)]
    every = [t["_id"] for t in gather(config_for(store), discard_old=False).transfers]
    assert every == [str(old), str(recent), str(running)]


def test_status_can_be_limited_to_one_session(store: Store, index: Index, me: Owner) -> None:
    mine = add_transfer(index, me, session_id="mine", status=TransferStatus.QUEUED)
    add_transfer(index, me, session_id="theirs", status=TransferStatus.QUEUED)
    index.acquire_lock("item-1", "mine", me)
    index.acquire_lock("item-2", "theirs", me)
    report = gather(config_for(store), session_id="mine")
    assert [t["_id"] for t in report.transfers] == [str(mine)]
    assert [lock["itemId"] for lock in report.locks] == ["item-1"]


def test_the_transfer_rate_is_bytes_per_second() -> None:
    row = TransferRow(
        id=1, key="k", item_id="i", path="/p", session_id="s", owner_id="o",
        source="http://h/x", status=3, size=100, start_offset=0, transferred=100,
        start_time=1000.0, end_time=1004.0, error=None, attempts=1, created=999.0,
        retry_requested=False,
    )  # fmt: skip
    record = transfer_record(row, now=5000.0)
    assert record["rate"] == 25
    assert record["startTime"] == "1970-01-01T00:16:40+00:00"


def test_mounts_locks_and_totals_are_reported(
    store: Store, index: Index, me: Owner, dead_owner: Owner, other_live_owner: Owner
) -> None:
    index.unregister_owner(me.owner_id)  # registered again as the mount of /mnt/a
    index.register_owner(
        me, "mount", mountpoint="/mnt/a", session_id="s1", session_origin="file:/s.yaml"
    )
    index.heartbeat(me, {"hits": 2}, {})
    index.heartbeat(dead_owner, {"hits": 5, "misses": 1}, {})
    index.unregister_owner(dead_owner.owner_id)  # its counters go to the totals
    gone = Owner.current("crashed")  # a mount that died and is not reclaimed yet
    index.register_owner(gone, "mount", mountpoint="/mnt/b")
    index.acquire_lock("item-1", "s1", me, entry_key="girder:a@v1", mountpoint="/mnt/a",
                       path="/a")  # fmt: skip
    index.acquire_lock("item-2", "s1", Owner.lease_only("girder"), kind=LockKind.HOLD,
                       expires_in=60)  # fmt: skip
    report = gather(config_for(store))
    assert [(m["mountpoint"], m["alive"]) for m in report.mounts] == [
        ("/mnt/a", True),
        ("/mnt/b", True),
    ]
    assert report.totals == {"hits": 7, "misses": 1}
    read, hold = report.locks
    assert (read["itemId"], read["sessionId"], read["kind"], read["alive"]) == (
        "item-1", "s1", "read", True,
    )  # fmt: skip
    assert read["_modelType"] == "lock" and read["expires"] is None
    assert (hold["itemId"], hold["kind"], hold["alive"]) == ("item-2", "hold", True)
    assert hold["expires"] is not None and hold["host"] is None


def test_evictions_and_failures_are_reported(store: Store, index: Index, me: Owner) -> None:
    k = new_entry(index, "k", 10).key
    index.delete_entry(k, "checksum", me.owner_id)
    index.record_failure("fetch", k, "HTTP 500 from server", me.owner_id)
    report = gather(config_for(store))
    assert [(e["key"], e["reason"]) for e in report.evictions] == [(k, "checksum")]
    assert [(f["kind"], f["cause"]) for f in report.failures] == [("fetch", "HTTP 500 from server")]
