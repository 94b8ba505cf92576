"""The persistent index of the private store, shared by every wtfs process using it.

SQLite in WAL mode: many readers, one writer at a time, safe across processes. Every state change
is one `BEGIN IMMEDIATE` transaction, so capacity checks and lock checks cannot race between
daemons. Ordering rules that make crashes harmless:
- data bytes are written to the store file *before* their range is committed here;
- an entry is deleted here *before* its file is unlinked (a crash leaves an orphan file for the
  start-up sweep, never a row pointing at a missing file);
- claims (in-flight fetch reservations) and locks belong to an owner (pid + start time); rows of
  dead owners are reclaimed at start-up, on every GC pass and before ENOSPC is returned.

This module is synchronous; async callers hop to a thread (see `manager.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

from wtfs_index.owner import Owner, is_alive, process_start_time
from wtfs_index.ranges import Ranges

SCHEMA_VERSION = 1
CLAIM_LEASE = 60.0  # seconds; renewed by the owner's heartbeat while it fetches
EVICT_CACHE_KIB = 16 * 1024  # SQLite page cache during an eviction (see evict_lru)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    file_name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    checksum TEXT,
    source TEXT NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    ranges TEXT NOT NULL DEFAULT '[]',
    present INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    atime REAL NOT NULL,
    created REAL NOT NULL
);
-- The LRU order of eviction, and present for usage() (SUM(present) reads this index, not the
-- table). It replaces earlier versions' entries_atime(atime) and entries_lru(atime, key). No query
-- looks entries up by item_id: earlier versions' entries_item only slowed writes and evictions.
CREATE INDEX IF NOT EXISTS entries_atime_key_present ON entries(atime, key, present);
DROP INDEX IF EXISTS entries_atime;
DROP INDEX IF EXISTS entries_lru;
DROP INDEX IF EXISTS entries_item;
CREATE TABLE IF NOT EXISTS owners (
    owner_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    mountpoint TEXT,
    session_id TEXT,
    session_origin TEXT,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    mountpoint TEXT,
    path TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS locks_item ON locks(item_id);
CREATE TABLE IF NOT EXISTS claims (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    owner_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_key ON claims(key);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    path TEXT NOT NULL,
    session_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    source TEXT NOT NULL,
    status INTEGER NOT NULL,
    size INTEGER NOT NULL,
    start_offset INTEGER NOT NULL DEFAULT 0,
    transferred INTEGER NOT NULL DEFAULT 0,
    start_time REAL,
    end_time REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    retry_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transfers_status ON transfers(status);
CREATE TABLE IF NOT EXISTS evictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    time REAL NOT NULL,
    reason TEXT NOT NULL,
    by_owner TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unlinking (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    files TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    cause TEXT NOT NULL,
    owner_id TEXT NOT NULL
);
"""


class TransferStatus(IntEnum):
    """Seed 001's codes, exactly."""

    INITIALIZING = 0
    QUEUED = 1
    TRANSFERRING = 2
    DONE = 3
    FAILED = 4


@dataclass(frozen=True)
class EntryRow:
    key: str
    item_id: str
    file_name: str
    size: int
    checksum: str | None
    source: str
    path: str
    ranges: Ranges
    present: int
    complete: bool
    atime: float
    replaced_file: str | None = None


@dataclass(frozen=True)
class Reservation:
    """Outcome of `reserve`: a claim id, or why not."""

    claim_id: int | None = None
    ranges: Ranges | None = None  # the entry's ranges as committed now
    busy: bool = False  # another live owner is fetching an overlapping span
    no_room: bool = False
    stale: bool = False  # the entry was replaced or dropped since the caller loaded it
    usage: int = 0


class Eviction(list["Evicted"]):
    """The entries one eviction removed; `unlink_id` is its pending-unlink batch, if any."""

    unlink_id: int | None = None


class Evicted(NamedTuple):  # a tuple: a pass builds tens of thousands of them
    key: str
    item_id: str
    file_name: str
    bytes: int
    path: str = ""


class Index:
    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        # check_same_thread=False: async callers run us on worker threads, one at a time.
        self._db = sqlite3.connect(
            str(path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        # One connection, possibly used from several worker threads: one statement at a time.
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose the
        # last transactions, and then the start-up check makes files and index agree again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- owners -------------------------------------------------------------------------------

    def register_owner(
        self,
        owner: Owner,
        kind: str,
        *,
        mountpoint: str | None = None,
        session_id: str | None = None,
        session_origin: str | None = None,
    ) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO owners (owner_id, pid, pid_start, host, kind, mountpoint,"
                " session_id, session_origin, started, heartbeat) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    owner.owner_id,
                    owner.pid,
                    owner.pid_start,
                    owner.host,
                    kind,
                    mountpoint,
                    session_id,
                    session_origin,
                    now,
                    now,
                ),
            )

    def unregister_owner(self, owner_id: str) -> None:
        """A clean exit: drop the owner's locks and claims with it."""
        with self.transaction() as db:
            db.execute("DELETE FROM locks WHERE owner_id = ?", (owner_id,))
            db.execute("DELETE FROM claims WHERE owner_id = ?", (owner_id,))
            row = db.execute("SELECT stats FROM owners WHERE owner_id = ?", (owner_id,)).fetchone()
            if row is not None:  # keep its counters in the store-wide totals
                totals = json.loads(
                    (db.execute("SELECT v FROM meta WHERE k = 'totals'").fetchone() or ["{}"])[0]
                )
                for key, value in json.loads(row["stats"]).items():
                    totals[key] = totals.get(key, 0) + value
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('totals', ?)", (json.dumps(totals),)
                )
            db.execute("DELETE FROM owners WHERE owner_id = ?", (owner_id,))

    def heartbeat(
        self, owner: Owner, stats: Mapping[str, int], atimes: Mapping[str, float]
    ) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE owners SET heartbeat = ?, stats = ? WHERE owner_id = ?",
                (now, json.dumps(dict(stats)), owner.owner_id),
            )
            db.execute(
                "UPDATE claims SET expires = ? WHERE owner_id = ?",
                (now + CLAIM_LEASE, owner.owner_id),
            )
            db.executemany(
                "UPDATE entries SET atime = MAX(atime, ?) WHERE key = ?",
                [(t, k) for k, t in atimes.items()],
            )

    def live_mount(self, mountpoint: str) -> sqlite3.Row | None:
        """The owner row of the live daemon serving `mountpoint` from this store, if any."""
        for row in self.query(
            "SELECT * FROM owners WHERE kind = 'mount' AND mountpoint = ?", (mountpoint,)
        ):
            if is_alive(row["pid"], row["pid_start"]):
                return row
        return None

    def reclaim_dead(self) -> dict[str, int]:
        """Delete locks, claims and owner rows whose process is gone. Returns counts."""
        now = time.time()
        counts = {"locks": 0, "claims": 0, "owners": 0}
        with self.transaction() as db:
            for table in ("locks", "claims", "owners"):
                rows = db.execute(f"SELECT rowid, pid, pid_start FROM {table}").fetchall()
                dead = [(r[0],) for r in rows if not is_alive(r["pid"], r["pid_start"])]
                db.executemany(f"DELETE FROM {table} WHERE rowid = ?", dead)
                counts[table] = len(dead)
            expired = db.execute("DELETE FROM claims WHERE expires < ?", (now,)).rowcount
            counts["claims"] += expired
            # Transfers left TRANSFERRING/QUEUED by a dead owner will never finish.
            live = {r[0] for r in db.execute("SELECT owner_id FROM owners")}
            stuck = db.execute(
                "SELECT id, owner_id FROM transfers WHERE status IN (0, 1, 2)"
            ).fetchall()
            orphaned = [(now, r["id"]) for r in stuck if r["owner_id"] not in live]
            db.executemany(
                "UPDATE transfers SET status = 4, end_time = ?, "
                "error = 'interrupted: the wtfs process fetching it died' WHERE id = ?",
                orphaned,
            )
            counts["transfers"] = len(orphaned)
        return counts

    # -- locks --------------------------------------------------------------------------------

    def acquire_lock(
        self,
        item_id: str,
        session_id: str,
        owner: Owner,
        *,
        mountpoint: str | None = None,
        path: str | None = None,
    ) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO locks (item_id, session_id, owner_id, pid, pid_start, mountpoint,"
                " path, created) VALUES (?,?,?,?,?,?,?,?)",
                (
                    item_id,
                    session_id,
                    owner.owner_id,
                    owner.pid,
                    owner.pid_start,
                    mountpoint,
                    path,
                    time.time(),
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def release_lock(self, lock_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM locks WHERE id = ?", (lock_id,))

    def lock_count(self, item_id: str) -> int:
        return int(self.query("SELECT COUNT(*) FROM locks WHERE item_id = ?", (item_id,))[0][0])

    # -- entries ------------------------------------------------------------------------------

    def get_entry(self, key: str) -> EntryRow | None:
        rows = self.query("SELECT * FROM entries WHERE key = ?", (key,))
        return _entry(rows[0]) if rows else None

    def ensure_entry(
        self, key: str, item_id: str, size: int, checksum: str | None, source: str, path: str
    ) -> EntryRow:
        """The entry for `key`, created empty if missing (a new unique file name each time).

        When it replaces an entry (the source changed size: its old bytes are worthless), the
        result's `replaced_file` names the old file, for the caller to unlink after this commit.
        """
        stale: str | None = None
        with self.transaction() as db:
            row = db.execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone()
            if row is not None and row["size"] == size:
                return _entry(row)
            if row is not None:
                stale = row["file_name"]
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                db.execute("DELETE FROM claims WHERE key = ?", (key,))
            now = time.time()
            file_name = f"{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}"
            db.execute(
                "INSERT INTO entries (key, item_id, file_name, size, checksum, source, path,"
                " atime, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (key, item_id, file_name, size, checksum, source, path, now, now),
            )
            created = db.execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone()
            return dataclasses.replace(_entry(created), replaced_file=stale)

    def usage(self, db: sqlite3.Connection | None = None) -> int:
        if db is None:
            with self.transaction() as txn:
                return self.usage(txn)
        present = db.execute("SELECT COALESCE(SUM(present), 0) FROM entries").fetchone()[0]
        claimed = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM claims").fetchone()[0]
        unlinking = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM unlinking").fetchone()[0]
        return int(present) + int(claimed) + int(unlinking)

    def reserve(
        self,
        key: str,
        start: int,
        end: int,
        owner: Owner,
        capacity: int,
        *,
        file_name: str | None = None,
    ) -> Reservation:
        """Claim [start, end) of `key` for fetching, reserving its missing bytes of capacity.

        `file_name` names the store file the caller writes into: if the entry was replaced
        meanwhile (its source changed size), the answer is `stale`.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT ranges, file_name FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None or file_name not in (None, row["file_name"]):
                return Reservation(ranges=Ranges(), stale=True)
            ranges = Ranges.from_json(row["ranges"])
            needed = (end - start) - ranges.overlap(start, end)
            if needed == 0:
                return Reservation(ranges=ranges)
            for claim in db.execute(
                "SELECT id, owner_id, pid, pid_start, expires FROM claims"
                " WHERE key = ? AND start < ? AND end > ?",
                (key, end, start),
            ).fetchall():
                if claim["expires"] < now or not is_alive(claim["pid"], claim["pid_start"]):
                    db.execute("DELETE FROM claims WHERE id = ?", (claim["id"],))
                elif claim["owner_id"] != owner.owner_id:
                    return Reservation(ranges=ranges, busy=True)
            usage = self.usage(db)
            if usage + needed > capacity:
                return Reservation(ranges=ranges, no_room=True, usage=usage)
            cursor = db.execute(
                "INSERT INTO claims (key, start, end, bytes, owner_id, pid, pid_start, expires)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    key,
                    start,
                    end,
                    needed,
                    owner.owner_id,
                    owner.pid,
                    owner.pid_start,
                    now + CLAIM_LEASE,
                ),
            )
            return Reservation(claim_id=cursor.lastrowid, ranges=ranges, usage=usage + needed)

    def commit_range(
        self,
        claim_id: int,
        key: str,
        start: int,
        end: int,
        transfer: tuple[int, int] | None = None,
        *,
        file_name: str | None = None,
    ) -> Ranges:
        """The bytes of [start, end) are in the store file: record them, free the claim.

        `transfer` = (transfer id, bytes transferred so far) is written in the same transaction.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT ranges, file_name FROM entries WHERE key = ?", (key,)
            ).fetchone()
            db.execute("DELETE FROM claims WHERE id = ?", (claim_id,))
            if transfer is not None:
                db.execute(
                    "UPDATE transfers SET transferred = ? WHERE id = ?", (transfer[1], transfer[0])
                )
            if row is None or file_name not in (None, row["file_name"]):
                # The entry was replaced (its source changed size): these bytes went into the
                # old file and must not be claimed for the new one.
                return Ranges()
            ranges = Ranges.from_json(row["ranges"])
            ranges.insert(start, end)
            db.execute(
                "UPDATE entries SET ranges = ?, present = ?, atime = ? WHERE key = ?",
                (ranges.to_json(), ranges.total, time.time(), key),
            )
            return ranges

    def release_claim(self, claim_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM claims WHERE id = ?", (claim_id,))

    def mark_complete(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE entries SET complete = 1 WHERE key = ? AND present = size", (key,))

    def drop_ranges(self, key: str, start: int, end: int) -> Ranges:
        """Forget [start, end) of an entry (its owner punched that hole in the file)."""
        with self.transaction() as db:
            row = db.execute("SELECT ranges FROM entries WHERE key = ?", (key,)).fetchone()
            ranges = Ranges.from_json(row["ranges"] if row else "[]")
            ranges.remove(start, end)
            db.execute(
                "UPDATE entries SET ranges = ?, present = ?, complete = 0 WHERE key = ?",
                (ranges.to_json(), ranges.total, key),
            )
            return ranges

    def delete_entry(self, key: str, reason: str, by_owner: str) -> Evicted | None:
        """Remove an entry (e.g. a checksum mismatch); the caller then unlinks its file."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO evictions (key, item_id, path, bytes, time, reason, by_owner)"
                " VALUES (?,?,?,?,?,?,?)",
                (key, row["item_id"], row["path"], row["present"], time.time(), reason, by_owner),
            )
            return Evicted(key, row["item_id"], row["file_name"], row["present"], row["path"])

    # -- eviction -----------------------------------------------------------------------------

    def evict_lru(self, target_usage: int, by_owner: str, reason: str) -> Eviction:
        """Delete unlocked, unclaimed entries, least recently used first, until usage ≤ target.

        One transaction: a lock taken by any process either committed before (and the entry
        stays) or will see the entry gone and fetch it again.
        """
        with self._lock:
            # Deleting tens of thousands of entries touches pages of the table and of each index
            # all over: with SQLite's default cache (2 MiB) they are read and spilled again and
            # again. A larger cache for this transaction only (bench: 15 % less CPU time); SQLite
            # frees it after, to the allocator, which keeps it for reuse.
            default_cache = self._db.execute("PRAGMA cache_size").fetchone()[0]
            self._db.execute(f"PRAGMA cache_size = -{EVICT_CACHE_KIB}")
            try:
                return self._evict_lru(target_usage, by_owner, reason)
            finally:
                self._db.execute(f"PRAGMA cache_size = {int(default_cache)}")

    def _evict_lru(self, target_usage: int, by_owner: str, reason: str) -> Eviction:
        now = time.time()
        with self.transaction() as db:
            excess = self.usage(db) - target_usage
            if excess <= 0:
                return Eviction()
            # A pass may evict tens of thousands of entries (bench: ~47k of 100k): choose them
            # in one walk of the LRU index that stops once enough bytes are found, then insert
            # and delete set-based, by rowid.
            chosen = _least_recently_used(db, excess)
            if not chosen:
                return Eviction()
            rowids = json.dumps([row[5] for row in chosen])
            db.execute(
                "INSERT INTO evictions (key, item_id, path, bytes, time, reason, by_owner)"
                " SELECT e.key, e.item_id, e.path, e.present, ?, ?, ?"
                " FROM json_each(?) AS j JOIN entries AS e ON e.rowid = j.value ORDER BY j.key",
                (now, reason, by_owner, rowids),
            )
            db.execute(
                "DELETE FROM entries WHERE rowid IN (SELECT value FROM json_each(?))", (rowids,)
            )
            evicted = Eviction(Evicted(r[0], r[1], r[2], r[3], r[4]) for r in chosen)
            # Their bytes stay counted until the files are gone (finish_unlink): until then
            # no reservation, by any process, may use the space they still take on disk.
            me = os.getpid()
            cursor = db.execute(
                "INSERT INTO unlinking (pid, pid_start, bytes, files, time) VALUES (?,?,?,?,?)",
                (me, process_start_time(me), sum(e.bytes for e in evicted),
                 json.dumps([e.file_name for e in evicted]), now),
            )  # fmt: skip
            evicted.unlink_id = cursor.lastrowid
        return evicted

    def finish_unlink(self, unlink_id: int) -> None:
        """The evicted files of a batch are gone from disk: stop counting their bytes."""
        with self.transaction() as db:
            db.execute("DELETE FROM unlinking WHERE id = ?", (unlink_id,))

    def dead_unlinks(self) -> list[tuple[int, list[str]]]:
        """Batches whose evicting process died before unlinking: (id, file names) to finish."""
        return [
            (r["id"], json.loads(r["files"]))
            for r in self.query("SELECT id, pid, pid_start, files FROM unlinking")
            if not is_alive(r["pid"], r["pid_start"])
        ]

    def file_names(self) -> set[str]:
        return {r[0] for r in self.query("SELECT file_name FROM entries")}

    def forget_missing(self, missing: Iterable[str]) -> int:
        """Drop entries whose file vanished (after a crash or a hand-deleted file)."""
        with self.transaction() as db:
            return sum(
                db.execute("DELETE FROM entries WHERE file_name = ?", (name,)).rowcount
                for name in missing
            )

    # -- transfers ----------------------------------------------------------------------------

    def transfer_create(
        self,
        *,
        key: str,
        item_id: str,
        path: str,
        session_id: str,
        owner_id: str,
        source: str,
        size: int,
        start_offset: int,
    ) -> int:
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO transfers (key, item_id, path, session_id, owner_id, source, status,"
                " size, start_offset, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (key, item_id, path, session_id, owner_id, source,
                 int(TransferStatus.INITIALIZING), size, start_offset, now),
            )  # fmt: skip
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def request_retry(
        self, transfer_ids: Iterable[int] = (), *, all_failed: bool = False
    ) -> list[sqlite3.Row]:
        """Re-queue FAILED transfers; a running mount of their session picks them up."""
        with self.transaction() as db:
            if all_failed:
                rows = db.execute("SELECT * FROM transfers WHERE status = 4").fetchall()
            else:
                ids = list(transfer_ids)
                marks = ",".join("?" * len(ids))
                rows = db.execute(f"SELECT * FROM transfers WHERE id IN ({marks})", ids).fetchall()
            failed = [r for r in rows if r["status"] == TransferStatus.FAILED]
            db.executemany(
                "UPDATE transfers SET status = 1, retry_requested = 1, error = NULL,"
                " start_time = NULL, end_time = NULL, transferred = 0 WHERE id = ?",
                [(r["id"],) for r in failed],
            )
            return rows

    def claim_retries(self, owner_id: str, session_id: str) -> list[sqlite3.Row]:
        """Take the re-queued transfers of this session for this owner to run."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT * FROM transfers WHERE retry_requested = 1 AND status = 1"
                " AND session_id = ?",
                (session_id,),
            ).fetchall()
            db.executemany(
                "UPDATE transfers SET retry_requested = 0, owner_id = ? WHERE id = ?",
                [(owner_id, r["id"]) for r in rows],
            )
            return rows

    def transfer_update(self, transfer_id: int, **fields: Any) -> None:
        allowed = {"status", "transferred", "start_time", "end_time", "error", "attempts", "size"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE transfers SET {sets} WHERE id = ?", (*fields.values(), transfer_id))

    def record_failure(self, kind: str, key: str | None, cause: str, owner_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO failures (time, kind, key, cause, owner_id) VALUES (?,?,?,?,?)",
                (time.time(), kind, key, cause, owner_id),
            )

    def prune_history(self, max_count: int, max_age_days: float) -> int:
        cutoff = time.time() - max_age_days * 86400
        with self.transaction() as db:
            removed = 0
            for table, column in (
                ("transfers", "created"),
                ("evictions", "time"),
                ("failures", "time"),
            ):
                active = " AND status IN (3, 4)" if table == "transfers" else ""
                removed += db.execute(
                    f"DELETE FROM {table} WHERE {column} < ?{active}", (cutoff,)
                ).rowcount
                removed += db.execute(
                    f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC"
                    f" LIMIT 1 OFFSET ?){active}",
                    (max_count,),
                ).rowcount
            return removed


def _least_recently_used(db: sqlite3.Connection, excess: int) -> list[tuple[Any, ...]]:
    """The evictable entries, least recently used first, until their bytes reach `excess`:
    (key, item_id, file_name, present, path, rowid) each. Reads no further than it takes.
    """
    cursor = db.cursor()
    cursor.row_factory = None  # plain tuples: cheaper than sqlite3.Row by the ten thousand
    cursor.execute(
        "SELECT key, item_id, file_name, present, path, rowid FROM entries"
        " WHERE present > 0"
        " AND item_id NOT IN (SELECT item_id FROM locks)"
        " AND key NOT IN (SELECT key FROM claims)"
        " ORDER BY atime, key"
    )
    chosen: list[tuple[Any, ...]] = []
    freed = 0
    try:
        while freed < excess:
            batch = cursor.fetchmany(4096)
            if not batch:
                break
            for row in batch:
                chosen.append(row)
                freed += row[3]
                if freed >= excess:
                    break
    finally:
        cursor.close()
    return chosen


def _entry(row: sqlite3.Row) -> EntryRow:
    return EntryRow(
        key=row["key"],
        item_id=row["item_id"],
        file_name=row["file_name"],
        size=row["size"],
        checksum=row["checksum"],
        source=row["source"],
        path=row["path"],
        ranges=Ranges.from_json(row["ranges"]),
        present=row["present"],
        complete=bool(row["complete"]),
        atime=row["atime"],
    )
