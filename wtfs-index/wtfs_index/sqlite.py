"""The embedded backend: one SQLite file in WAL mode inside the store, for one host.

Many readers and one writer at a time, safe between processes of one host, whatever PID
namespaces they run in (liveness across namespaces goes by leases, see `owner`). SQLite's WAL
needs shared memory between its users, so it does not work on a network filesystem, nor on a
FUSE one: `SqliteIndex` refuses such a path (a store shared between hosts needs PostgreSQL).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from wtfs_index.base import DEFAULT_LEASE, SCHEMA_VERSION, SMALL_CALLS, Dialect, Index, Tx
from wtfs_index.errors import (
    IndexBusy,
    IndexDamaged,
    IndexFailure,
    IndexFull,
    IndexRefused,
    IndexUnavailable,
)
from wtfs_index.owner import is_alive
from wtfs_index.schema import statements

INDEX_FILE = "index.sqlite3"
EVICT_CACHE_KIB = 16 * 1024  # SQLite page cache during an eviction (see evict_lru)
#: The write-ahead log's size on disk, beyond the tables: SQLite checkpoints it at 1000 pages
#: (~4 MiB; it stays that long, reused from its start), and truncates it back to this after a
#: checkpoint that a long reader had let it grow past. A store's disk must keep room for it
#: (`wtfs.cache.space.auto_reserve`).
WAL_LIMIT = 4 * 1024 * 1024 + 64 * 1024

#: statfs f_type magics of filesystems SQLite's WAL cannot work on (linux/magic.h)
SHARED_FILESYSTEMS = {
    0x6969: "NFS",
    0x517B: "SMB",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x65735546: "FUSE",
    0x00C36400: "Ceph",
    0x5346414F: "AFS",
    0x01021997: "9p",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
}


class SqliteDialect(Dialect):
    name = "sqlite"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    greatest = "MAX"
    #: the column types `wtfs_index.schema` leaves to the backend
    types: ClassVar[Mapping[str, str]] = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "real": "REAL",
        "big": "INTEGER",
        "small": "INTEGER",
    }

    def in_list(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def list_param(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))


def filesystem_type(path: Path) -> int | None:
    """statfs(2)'s f_type of the filesystem holding `path` (None when it cannot be read)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64/aarch64
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


#: /proc/self/mountinfo's type names of the same filesystems (fuse.<name> is FUSE too)
SHARED_FSTYPES = {
    "fuse": "FUSE",
    "fuseblk": "FUSE",
    "nfs": "NFS",
    "nfs4": "NFS",
    "smb3": "SMB",
    "smbfs": "SMB",
    "cifs": "CIFS",
    "ceph": "Ceph",
    "afs": "AFS",
    "9p": "9p",
    "lustre": "Lustre",
    "gpfs": "GPFS",
}


def mount_type(path: Path) -> str | None:
    """The type /proc/self/mountinfo gives the mount holding `path` (its longest mount point
    prefix), or None when it cannot be read."""
    target = os.path.realpath(path)
    best, fstype = -1, None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields[5:]:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), fields[fields.index("-", 5) + 1]
    return fstype


def shared_filesystem(directory: Path) -> str | None:
    """The kind of network or FUSE filesystem holding `directory`, if it is one. statfs(2)
    first; when it fails (a FUSE filesystem need not answer it), the mount table."""
    magic = filesystem_type(directory)
    if magic is not None:
        return SHARED_FILESYSTEMS.get(magic)
    fstype = mount_type(directory)
    if fstype is None:
        return None
    return "FUSE" if fstype.startswith("fuse.") else SHARED_FSTYPES.get(fstype)


def refuse_shared_filesystem(directory: Path) -> None:
    kind = shared_filesystem(directory)
    if kind is not None:
        raise IndexRefused(
            f"private_storage_path: {directory} is on a {kind} filesystem, where SQLite's "
            "index cannot be shared safely; set index_url to a PostgreSQL database "
            "(postgresql://...) to share a store between hosts"
        )


class SqliteIndex(Index):
    dialect = SqliteDialect()
    quick_calls = SMALL_CALLS

    def __init__(self, path: Path, *, timeout: float = 30.0, lease: float = DEFAULT_LEASE) -> None:
        super().__init__(lease=lease)
        self.path = path
        self._timeout_ms = int(timeout * 1000)
        self._no_wait = threading.local()
        refuse_shared_filesystem(path.parent)
        # check_same_thread=False: async callers run us on worker threads, one at a time.
        try:
            self._db = sqlite3.connect(
                str(path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            # One connection, possibly used from several worker threads: one statement at a time.
            self._lock = threading.RLock()
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # Without WAL a commit may wait for readers: no call is quick then.
                self.quick_calls = frozenset()
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose
            # the last transactions, and then the start-up check makes files and index agree.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        except sqlite3.DatabaseError as exc:
            raise _translate(exc, path) from None
        with self._write() as tx:
            version = _schema_version(tx)
            if version > SCHEMA_VERSION:
                raise IndexRefused(
                    f"{path}: index schema {version} is newer than this wtfs knows "
                    f"({SCHEMA_VERSION}); upgrade wtfs"
                )
            if version == 1:
                _migrate_from_1(tx)
            for statement in statements(SqliteDialect.types):
                tx.execute(statement)
            self._keep_present_total(tx)
            self._set_meta(tx, "schema_version", str(SCHEMA_VERSION))

    def close(self) -> None:
        self._db.close()

    def describe(self) -> str:
        return str(self.path)

    @contextmanager
    def without_waiting(self) -> Iterator[None]:
        self._no_wait.on = True
        try:
            yield
        finally:
            self._no_wait.on = False

    def _waits(self) -> bool:
        """Whether the calling thread may wait (it is not inside `without_waiting`)."""
        return not getattr(self._no_wait, "on", False)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This connection, for one statement or transaction; at once or `IndexBusy` when the
        calling thread asked not to wait."""
        if not self._lock.acquire(blocking=self._waits()):
            raise IndexBusy(f"{self.path}: in use by another thread")
        try:
            yield
        finally:
            self._lock.release()

    def _begin_write(self) -> None:
        if self._waits():
            self._db.execute("BEGIN IMMEDIATE")
            return
        # No busy handler for this one BEGIN: another process's write lock is IndexBusy now,
        # not a wait of up to `timeout` on the caller's thread. Nothing is done before it.
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise IndexBusy(f"{self.path}: the write lock is taken ({exc})") from None
            raise
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._locked():
            try:
                self._begin_write()
                try:
                    yield Tx(self._db.cursor(), self.dialect, self._sql_cache, self._db.cursor)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise _translate(exc, self.path) from None

    @contextmanager
    def _read(self) -> Iterator[Tx]:
        with self._locked():
            try:
                self._db.execute("BEGIN")
                try:
                    yield Tx(self._db.cursor(), self.dialect, self._sql_cache, self._db.cursor)
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise _translate(exc, self.path) from None

    def evict_lru(self, target_usage: int, by_owner: str, reason: str) -> Any:
        """As `Index.evict_lru`, with a larger page cache for the transaction.

        Deleting tens of thousands of entries touches pages of the table and of each index all
        over: with SQLite's default cache (2 MiB) they are read and spilled again and again
        (bench: 15 % less CPU time with 16 MiB). SQLite frees it after.
        """
        with self._lock:
            default_cache = self._db.execute("PRAGMA cache_size").fetchone()[0]
            self._db.execute(f"PRAGMA cache_size = -{EVICT_CACHE_KIB}")
            try:
                return super().evict_lru(target_usage, by_owner, reason)
            finally:
                self._db.execute(f"PRAGMA cache_size = {int(default_cache)}")

    def integrity_problems(self) -> list[str]:
        """SQLite's own check of the whole file (`PRAGMA integrity_check`: every page, every
        index against its table); empty when it says ok. Reads all of it: for `wtfs fsck`."""
        with self._lock:
            try:
                rows = [str(r[0]) for r in self._db.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:
                raise _translate(exc, self.path) from None
        return [] if rows == ["ok"] else rows

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file (before copying it)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def query_plan(self, sql: str) -> list[str]:
        """SQLite's plan for a query (tests of the indexes)."""
        with self._lock:
            return [str(r[3]) for r in self._db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def _translate(exc: sqlite3.DatabaseError, path: Path) -> IndexFailure:
    text = str(exc)
    if "disk is full" in text or ("disk I/O error" in text and _disk_full(path)):
        return IndexFull(f"{path}: the disk is full ({text})")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return IndexUnavailable(f"{path}: the index stayed locked by another process ({text})")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return IndexDamaged(
            f"{path}: the index is damaged ({text}); `wtfs fsck --repair` moves it aside and "
            "starts a fresh one"
        )
    return IndexFailure(f"{path}: {text}")


def _disk_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return False
    return stats.f_bavail == 0


def _schema_version(tx: Tx) -> int:
    if tx.one("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'") is None:
        return 0
    value = tx.scalar("SELECT v FROM meta WHERE k = 'schema_version'")
    return int(value or 0)


def _migrate_from_1(tx: Tx) -> None:
    """Schema 1 (entries keyed by file id alone, owners by pid) to 2.

    Entries of schema 1 carry no version fingerprint, so they cannot be told fresh: their files
    go into an unlinking batch that the next start-up or GC pass finishes. Locks, claims and
    owners of schema 1 belong to processes that must be gone: an older wtfs still running on
    this store is refused.
    """
    for row in tx.all("SELECT pid, pid_start, mountpoint FROM owners"):
        if is_alive(int(row["pid"]), int(row["pid_start"])):
            raise IndexRefused(
                f"the store's index is used by an older wtfs (pid {row['pid']}, mount "
                f"{row['mountpoint']}): unmount it before starting this version"
            )
    files = [str(r["file_name"]) for r in tx.all("SELECT file_name FROM entries")]
    present = int(tx.scalar("SELECT COALESCE(SUM(present), 0) FROM entries"))
    old_batches = tx.all("SELECT bytes, files FROM unlinking")
    for statement in (
        "DROP TABLE entries",
        "DROP TABLE owners",
        "DROP TABLE locks",
        "DROP TABLE claims",
        "DROP TABLE unlinking",
    ):
        tx.execute(statement)
    for statement in statements(SqliteDialect.types):
        tx.execute(statement)
    batches = [(present, files), *((int(b["bytes"]), json.loads(b["files"])) for b in old_batches)]
    for size, names in batches:
        if names:
            tx.execute(
                "INSERT INTO unlinking (owner_id, bytes, files, punches, time)"
                " VALUES ('schema-1', ?, ?, '[]', ?)",
                (size, json.dumps(names), time.time()),
            )
