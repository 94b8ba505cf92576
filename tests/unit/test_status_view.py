"""The plain-text `wtfs status` (for pipes and files): every column and cell whole, on the real
report of a real index."""

from __future__ import annotations

import time
from pathlib import Path

from wtfs_index import Index, LockKind, Owner, TransferStatus

from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.status.report import gather
from wtfs.status.view import LOCK_COLUMNS, TRANSFER_COLUMNS, plain

LONG_ERROR = (
    "broken.bin: no provider for URL scheme 'nosuch' (installed: girder, http, local, sftp); "
    + "the rest of a long cause, " * 12
    + "end."
)


def transfer(index: Index, owner: Owner, path: str, **fields: object) -> int:
    tid = index.transfer_create(key=path, item_id="item-" + path, path=path, session_id="s1",
                                owner_id=owner.owner_id, source="girder:file/1", size=4096,
                                start_offset=0)  # fmt: skip
    index.transfer_update(tid, **fields)
    return tid


def test_plain_status_keeps_every_column_and_the_whole_error(
    store: Store, index: Index, me: Owner
) -> None:
    deep = "/data/" + "/".join(["a-rather-long-directory-name"] * 6) + "/measurements.csv"
    transfer(index, me, deep, status=int(TransferStatus.TRANSFERRING), transferred=1024,
             start_time=time.time() - 10)  # fmt: skip
    transfer(index, me, "/broken.bin", status=int(TransferStatus.FAILED), error=LONG_ERROR)
    text = plain(
        gather(
            Config(
                private_storage_path=store.root,
                index_url=store.index_url,
                private_storage_capacity=10**9,
            )
        )
    )
    lines = text.splitlines()
    header = lines[lines.index("transfers") + 1]
    assert header.split() == list(TRANSFER_COLUMNS)
    [running] = [line for line in lines if deep in line]
    assert "TRANSFERRING" in running and "25%" in running and "1.0 KiB / 4.0 KiB" in running
    assert "B/s" in running  # the rate column is there
    [failed] = [line for line in lines if "/broken.bin" in line]
    assert failed.endswith(LONG_ERROR)  # whole, and the error column is the last
    assert "FAILED" in failed
    # Columns line up under their headers, however long the cells.
    assert running.index("TRANSFERRING") == header.index("status") == failed.index("FAILED")
    assert failed.index("broken.bin: no provider") == header.index("error")
    assert all(line == line.rstrip() for line in lines)


def test_plain_status_of_an_empty_store_says_so(tmp_path: Path) -> None:
    text = plain(gather(Config(private_storage_path=tmp_path / "none")))
    assert text.splitlines()[:2] == ["wtfs", f"store  {tmp_path / 'none'}"]
    assert "no mount running" in text and "no recent transfers (--all shows history)" in text


def test_a_newline_in_a_cause_does_not_break_its_row(store: Store, index: Index, me: Owner) -> None:
    transfer(index, me, "/x", status=int(TransferStatus.FAILED), error="HTTP 500\nfrom the proxy")
    text = plain(gather(Config(private_storage_path=store.root, index_url=store.index_url)))
    [row] = [line for line in text.splitlines() if "/x" in line]
    assert row.endswith("HTTP 500 from the proxy")


def test_locks_show_their_owner_and_a_pin_until_when_it_holds(
    store: Store, index: Index, me: Owner
) -> None:
    index.register_owner(me, "mount", mountpoint="/mnt", session_id="s1")
    index.acquire_lock("item-read", "s1", me, entry_key="girder:f@1", path="/data/a.csv")
    index.acquire_lock("item-pinned", "s1", Owner.lease_only("pinner"), kind=LockKind.HOLD,
                       expires_in=3600)  # fmt: skip
    lines = plain(
        gather(Config(private_storage_path=store.root, index_url=store.index_url))
    ).splitlines()
    header = lines[lines.index("locks") + 1]
    assert header.split() == list(LOCK_COLUMNS)
    [read] = [line for line in lines if "item-read" in line]
    assert "/data/a.csv" in read and me.owner_id in read and read.endswith("yes")
    [pinned] = [line for line in lines if "item-pinned" in line]
    assert "pinner" in pinned and "pinned until 20" in pinned
