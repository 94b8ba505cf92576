"""`wtfs fsck`'s logic (wtfs/cache/fsck.py) on a real store and index: each kind of damage done
behind wtfs's back is found, `repair` fixes it, and a second pass finds the store clean. Against
both backends where the index is involved; the damaged SQLite file on SQLite alone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from wtfs_index import Index, IndexUnavailable, LockKind, NewEntry, Owner, Ranges, entry_key

from tests.support import owners
from tests.unit.conftest import FillEntry
from wtfs.cache.fsck import fsck, processes_using
from wtfs.cache.store import Store

MiB = 1024 * 1024


def kinds(report: object) -> list[str]:
    return sorted(f.kind for f in report.findings)  # type: ignore[attr-defined]


def test_a_sound_store_is_clean(
    store: Store, index: Index, me: Owner, fill_entry: FillEntry
) -> None:
    fill_entry("a", 100)
    fill_entry("b", MiB)
    report = fsck(store)
    assert report.clean, report.lines()
    assert (report.entries, report.files, report.batches) == (2, 2, 0)
    assert report.lines()[-1] == "clean: no problem found"
    assert report.to_json()["clean"] is True


def test_damage_behind_our_back_is_found_then_repaired(
    store: Store, index: Index, me: Owner, dead_owner: Owner, fill_entry: FillEntry
) -> None:
    gone = fill_entry("gone", 100)
    cut = fill_entry("cut", 100)
    holed = fill_entry("holed", MiB)
    fine = fill_entry("fine", MiB)
    os.unlink(store.path_of(gone.file_name))
    os.truncate(store.path_of(cut.file_name), 40)
    os.truncate(store.path_of(holed.file_name), MiB // 4)  # cut, then extended again
    os.truncate(store.path_of(holed.file_name), MiB)
    (store.data / "ab").mkdir(exist_ok=True)
    (store.data / "ab" / "orphan").write_bytes(b"left by someone")
    (store.data / "link").symlink_to("/etc/passwd")
    # A process that died half way through an eviction, holding a lock on another entry.
    left = fill_entry("left", 10)
    index.delete_entry(left.key, "gc", dead_owner.owner_id)
    index.acquire_lock(fine.item_id, "s", dead_owner, entry_key=fine.key)
    index.unregister_owner(me.owner_id)  # no mount is live: fsck may repair

    found = fsck(store)
    assert kinds(found) == ["dead-owner", "left-batch", "missing-bytes", "missing-file", "orphan",
                            "stray", "wrong-size"], found.lines()  # fmt: skip
    assert not any(f.repaired for f in found.findings)
    assert found.lines()[-1] == "7 problems found; `wtfs fsck --repair` repairs them"
    assert store.path_of(left.file_name).exists()  # checking changed nothing
    assert (store.data / "ab" / "orphan").exists()

    repaired = fsck(store, repair=True)
    assert kinds(repaired) == kinds(found)
    assert all(f.repaired for f in repaired.findings), repaired.lines()
    assert repaired.lines()[-1] == "7 problems found, all repaired"
    assert index.get_entry(gone.key) is None
    assert index.get_entry(cut.key) is None and not store.path_of(cut.file_name).exists()
    after = index.get_entry(holed.key)
    assert after is not None and after.ranges == Ranges([(0, MiB // 4)]) and not after.complete
    assert index.get_entry(fine.key) == fine
    assert not store.path_of(left.file_name).exists()
    assert not (store.data / "ab" / "orphan").exists() and not (store.data / "link").is_symlink()
    assert index.locks(me) == [] and index.unlink_batches() == []
    assert index.usage() == MiB + MiB // 4

    again = fsck(store)
    assert again.clean, again.lines()


def test_verify_finds_a_same_size_overwrite_by_its_checksum(
    store: Store, index: Index, me: Owner
) -> None:
    size = MiB
    good = os.urandom(size)
    entries = {}
    for name in ("zeroed", "kept", "no-checksum"):
        checksum = None if name == "no-checksum" else f"sha256:{hashlib.sha256(good).hexdigest()}"
        source_key = f"item:{name}"
        new = NewEntry(entry_key(source_key, "v1"), source_key, "v1", name, size, "local:///x",
                       f"/{name}", checksum=checksum, content_hash=checksum)  # fmt: skip
        entries[name] = entry = index.ensure_entry(new, by_owner="test")
        fd = store.open_file(entry.file_name, size)
        os.pwrite(fd, good, 0)
        os.close(fd)
        claim = index.reserve(entry.key, 0, size, me, 1 << 40).claim_id
        assert claim is not None
        index.commit_range(claim, entry.key, 0, size)
        assert index.mark_complete(entry.key)
    fd = os.open(store.path_of(entries["zeroed"].file_name), os.O_WRONLY)
    os.pwrite(fd, bytes(size), 0)  # zeros at the same size: only the checksum can tell
    os.close(fd)
    index.unregister_owner(me.owner_id)  # no mount is live: fsck may repair
    assert fsck(store).clean  # without --verify, nothing shows it
    found = fsck(store, verify=True)
    assert [(f.kind, f.path) for f in found.findings] == [("checksum", "/zeroed")]
    assert found.verified == 2
    assert any("1 complete entries have no checksum" in n for n in found.notes)
    fsck(store, verify=True, repair=True)
    assert index.get_entry(entries["zeroed"].key) is None
    assert not store.path_of(entries["zeroed"].file_name).exists()
    assert fsck(store, verify=True).clean


def test_while_a_mount_is_live_fsck_only_checks_unless_forced(store: Store, index: Index) -> None:
    index.register_owner(owners.this_process("live"), "mount", mountpoint="/mnt/live")
    (store.data / "orphan").write_bytes(b"?")
    report = fsck(store, repair=True)
    assert kinds(report) == ["orphan"] and not report.findings[0].repaired
    assert report.live_mounts == ["/mnt/live"]
    assert any("not repaired: 1 mounts are live (/mnt/live)" in n for n in report.notes)
    assert (store.data / "orphan").exists()
    forced = fsck(store, repair=True, force=True)
    assert forced.findings[0].repaired and not (store.data / "orphan").exists()


def test_a_pin_is_no_damage(store: Store, index: Index, me: Owner, fill_entry: FillEntry) -> None:
    entry = fill_entry("pinned", 10)
    index.acquire_lock(entry.item_id, "s", Owner.lease_only("pinner"), kind=LockKind.HOLD,
                       expires_in=3600)  # fmt: skip
    assert fsck(store).clean


# -- the index itself ------------------------------------------------------------------------


def test_a_damaged_sqlite_index_is_moved_aside_and_a_fresh_one_started(
    local_store: Store,
) -> None:
    index = local_store.open_index()
    new = NewEntry(entry_key("girder:f", "v1"), "girder:f", "v1", "i", 4, "girder:x", "/f")
    entry = index.ensure_entry(new, by_owner="test")
    index.close()
    os.close(local_store.open_file(entry.file_name, 4))
    local_store.index_path.write_bytes(b"not a database, whatever it was " * 64)
    found = fsck(local_store)
    assert kinds(found) == ["index-damaged"] and found.files == 1
    assert "file is not a database" in found.findings[0].detail
    assert any("with --repair: the index moved aside" in n for n in found.notes)

    repaired = fsck(local_store, repair=True)
    assert kinds(repaired) == ["index-damaged", "orphan"], repaired.lines()
    assert all(f.repaired for f in repaired.findings)
    [moved] = local_store.root.glob("index.sqlite3.damaged-*")
    assert moved.read_bytes().startswith(b"not a database")
    assert not local_store.path_of(entry.file_name).exists()
    assert fsck(local_store).clean


def test_a_damaged_sqlite_index_another_process_holds_open_is_not_moved_aside(
    local_store: Store,
) -> None:
    local_store.index_path.write_bytes(b"garbage " * 512)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); "
                               "print(flush=True); time.sleep(60)", str(local_store.index_path)],
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        assert processes_using(local_store.index_path) == [holder.pid]
        report = fsck(local_store, repair=True)
        assert kinds(report) == ["index-damaged"] and not report.findings[0].repaired
        assert any(f"processes {holder.pid} have the index open" in n for n in report.notes)
        assert local_store.index_path.read_bytes().startswith(b"garbage")
        forced = fsck(local_store, repair=True, force=True)
        assert forced.findings[0].repaired
    finally:
        holder.kill()
        holder.wait()


def test_a_missing_index_with_data_files_is_found_and_started_afresh(local_store: Store) -> None:
    (local_store.data / "ab").mkdir()
    (local_store.data / "ab" / "left").write_bytes(b"x" * 10)
    found = fsck(local_store)
    assert kinds(found) == ["index-missing"] and not local_store.index_path.exists()
    repaired = fsck(local_store, repair=True)
    assert kinds(repaired) == ["index-missing", "orphan"]
    assert local_store.index_path.exists() and not (local_store.data / "ab" / "left").exists()
    assert fsck(local_store).clean


def test_a_store_with_nothing_yet_is_clean_and_fsck_creates_nothing(local_store: Store) -> None:
    report = fsck(local_store, repair=True)
    assert report.clean and not local_store.index_path.exists()


def test_a_postgresql_database_missing_a_column_is_damage_fsck_does_not_move(
    tmp_path: Path, postgres_url: str
) -> None:
    store = Store(tmp_path / "ps", postgres_url)
    store.prepare()
    store.open_index().close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("ALTER TABLE owners DROP COLUMN expires")
    report = fsck(store, repair=True)
    assert kinds(report) == ["index-damaged"] and not report.findings[0].repaired
    password = urlsplit(postgres_url).password
    assert password and password not in "\n".join(report.lines())  # never the password
    assert any("not for wtfs fsck to move aside" in n for n in report.notes)


def test_a_postgresql_server_that_cannot_be_reached_is_raised_as_such(tmp_path: Path) -> None:
    store = Store(tmp_path / "ps", "postgresql://wtfs:secret@127.0.0.1:9/none?connect_timeout=2")
    store.prepare()
    started = time.monotonic()
    with pytest.raises(IndexUnavailable):
        fsck(store)
    assert time.monotonic() - started < 20
