"""Fixtures for the index's own tests: every behaviour runs against both backends.

`index` (and `second_index`, another connection to the same store: another daemon, or
`wtfs status`) is parametrized over `sqlite` (a file in a fresh store directory) and `postgres`
(a fresh database on the session's real PostgreSQL server, `open_index(postgres_url, root)`).

Tests use the index's interface only. The helpers at the end are the exceptions, each running
one statement on the backend's raw connection to arrange a state the interface cannot reach
(a row's time in the past, an index left by an older version); each says which.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from wtfs_index import DEFAULT_LEASE, EntryRow, Index, NewEntry, Owner, entry_key, open_index
from wtfs_index.postgres import PostgresIndex
from wtfs_index.sqlite import SqliteIndex

from tests.support import owners

BACKENDS = ("sqlite", "postgres")

OpenIndex = Callable[..., Index]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    return root


@pytest.fixture
def index_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the index lives in the store); a fresh database's URL for PostgreSQL."""
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
def open_test_index(index_url: str | None, store_root: Path) -> Iterator[OpenIndex]:
    """`open_test_index(lease=...)`: one more connection to this test's index (closed after)."""
    opened: list[Index] = []

    def open_(*, lease: float = DEFAULT_LEASE) -> Index:
        index = open_index(index_url, store_root, lease=lease)
        opened.append(index)
        return index

    yield open_
    for index in opened:
        index.close()


@pytest.fixture
def index(open_test_index: OpenIndex) -> Index:
    return open_test_index()


@pytest.fixture
def second_index(index: Index, open_test_index: OpenIndex) -> Index:
    """Another connection to the same index (another daemon, or `wtfs status`)."""
    return open_test_index()


# -- owners ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def exited_identity() -> tuple[int, int]:
    return owners.exited_process()


@pytest.fixture
def me(index: Index) -> Owner:
    """This process, registered as a mount daemon (as every daemon is before it fetches)."""
    owner = Owner.current("me")
    assert owner.alive()
    index.register_owner(owner, "mount")
    return owner


@pytest.fixture
def other_live_owner(index: Index) -> Owner:
    """Another live daemon of this host and namespace (this process under another owner id)."""
    owner = owners.this_process("other-live")
    index.register_owner(owner, "mount")
    return owner


@pytest.fixture
def dead_owner(index: Index, exited_identity: tuple[int, int]) -> Owner:
    """A daemon of this host and namespace that registered, then died without cleaning up."""
    owner = owners.dead("dead-owner", exited_identity)
    index.register_owner(owner, "mount")
    return owner


# -- entries --------------------------------------------------------------------------------------


def new_entry(
    index: Index,
    name: str,
    size: int,
    *,
    version: str = "v1",
    item_id: str | None = None,
    by_owner: str = "test",
) -> EntryRow:
    """The entry of version `version` of source `girder:<name>` (created empty if missing)."""
    source_key = f"girder:{name}"
    new = NewEntry(entry_key(source_key, version), source_key, version,
                   item_id or f"item-{name}", size, "girder:x", f"/{name}")  # fmt: skip
    return index.ensure_entry(new, by_owner=by_owner)


def claim(index: Index, key: str, start: int, end: int, owner: Owner, capacity: int) -> int:
    reservation = index.reserve(key, start, end, owner, capacity)
    assert reservation.claim_id is not None, reservation
    return reservation.claim_id


def fetched(index: Index, key: str, start: int, end: int, owner: Owner) -> None:
    """[start, end) of `key` reserved and committed, as a fetch does it."""
    index.commit_range(claim(index, key, start, end, owner, 1 << 40), key, start, end)


def filled(index: Index, name: str, size: int, owner: Owner, **kwargs: Any) -> EntryRow:
    """An entry whose every byte is present."""
    entry = new_entry(index, name, size, **kwargs)
    fetched(index, entry.key, 0, size, owner)
    return entry


def new_transfer(index: Index, owner: Owner, *, key: str = "k", session_id: str = "s") -> int:
    return index.transfer_create(
        key=key,
        item_id="i",
        path=f"/{key}",
        session_id=session_id,
        owner_id=owner.owner_id,
        source="girder:x",
        size=10,
        start_offset=0,
    )


# -- raw statements: states the interface cannot reach ----------------------------------------


def raw(index: Index, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the backend's own connection (SQL with `?` placeholders)."""
    if isinstance(index, SqliteIndex):
        with index._lock:
            return [tuple(r) for r in index._db.execute(sql, params).fetchall()]
    assert isinstance(index, PostgresIndex), index
    with psycopg.connect(index.url, connect_timeout=5) as conn:
        cursor = conn.execute(sql.replace("?", "%s"), params)
        return list(cursor.fetchall()) if cursor.description else []


def backdate(index: Index, table: str, column: str, seconds: float, **where: Any) -> None:
    """Move `column` of the rows of `table` matching `where` `seconds` into the past: a lease
    that ran out, a transfer created days ago. Time only passes, the interface cannot move it."""
    condition = " AND ".join(f"{name} = ?" for name in where) or "1=1"
    raw(
        index,
        f"UPDATE {table} SET {column} = {column} - ? WHERE {condition}",
        (seconds, *where.values()),
    )


def server_uptime(index: Index) -> float:
    """Seconds since the PostgreSQL server started, by its own clock (its leases' clock)."""
    [(uptime,)] = raw(
        index, "SELECT EXTRACT(EPOCH FROM clock_timestamp() - pg_postmaster_start_time())"
    )
    return float(uptime)


def past_server_grace(index: Index) -> None:
    """PostgreSQL judges no lease run out within one lease of the server's start: wait until
    that grace is over, so that a lease that ran out counts as such. (SQLite has no grace.)"""
    if isinstance(index, PostgresIndex):
        wait = index.lease - server_uptime(index) + 0.1
        if wait > 0:
            time.sleep(wait)


def write_schema_version(index: Index, version: int) -> None:
    """Mark the index as made by another version of wtfs (a newer one, say)."""
    raw(index, "UPDATE meta SET v = ? WHERE k = 'schema_version'", (str(version),))


def sqlite_pragma(index: Index, name: str) -> Any:
    """A PRAGMA's value on the SQLite index's own connection."""
    [(value,)] = raw(index, f"PRAGMA {name}")
    return value


# The index as schema 1 left it (git show b1e54f8:wtfs/cache/index.py): entries keyed by file id
# alone, owners, locks, claims and unlinking batches by pid. The migration test builds one.
SCHEMA_1 = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE entries (
    key TEXT PRIMARY KEY, item_id TEXT NOT NULL, file_name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL, checksum TEXT, source TEXT NOT NULL, path TEXT NOT NULL DEFAULT '',
    ranges TEXT NOT NULL DEFAULT '[]', present INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0, atime REAL NOT NULL, created REAL NOT NULL
);
CREATE INDEX entries_atime_key_present ON entries(atime, key, present);
CREATE TABLE owners (
    owner_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    host TEXT NOT NULL, kind TEXT NOT NULL, mountpoint TEXT, session_id TEXT,
    session_origin TEXT, started REAL NOT NULL, heartbeat REAL NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE locks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, session_id TEXT NOT NULL,
    owner_id TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL, mountpoint TEXT,
    path TEXT, created REAL NOT NULL
);
CREATE INDEX locks_item ON locks(item_id);
CREATE TABLE claims (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, start INTEGER NOT NULL,
    end INTEGER NOT NULL, bytes INTEGER NOT NULL, owner_id TEXT NOT NULL, pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL, expires REAL NOT NULL
);
CREATE INDEX claims_key ON claims(key);
CREATE TABLE transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, item_id TEXT NOT NULL,
    path TEXT NOT NULL, session_id TEXT NOT NULL, owner_id TEXT NOT NULL, source TEXT NOT NULL,
    status INTEGER NOT NULL, size INTEGER NOT NULL, start_offset INTEGER NOT NULL DEFAULT 0,
    transferred INTEGER NOT NULL DEFAULT 0, start_time REAL, end_time REAL, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    retry_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE evictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, item_id TEXT NOT NULL,
    path TEXT NOT NULL, bytes INTEGER NOT NULL, time REAL NOT NULL, reason TEXT NOT NULL,
    by_owner TEXT NOT NULL
);
CREATE TABLE unlinking (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    bytes INTEGER NOT NULL, files TEXT NOT NULL, time REAL NOT NULL
);
CREATE TABLE failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, key TEXT,
    cause TEXT NOT NULL, owner_id TEXT NOT NULL
);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def schema_1_index(
    path: Path,
    *,
    owner: tuple[int, int],
    entries: dict[str, int],
    unlinking: dict[str, int] | None = None,
) -> None:
    """Write an index as schema 1 left it: one mount owner with process identity `owner`
    holding a lock and a claim, entries (file name → bytes present, each with its file in
    `data/`), a finished transfer, and optionally an unlinking batch (file name → bytes)."""
    pid, start = owner
    now = time.time()
    db = sqlite3.connect(path)
    try:
        db.executescript(SCHEMA_1)
        db.execute(
            "INSERT INTO owners VALUES ('old-mount', ?, ?, 'host', 'mount', '/mnt/old', 's', NULL,"
            " ?, ?, '{\"hits\": 4}')",
            (pid, start, now, now),
        )
        for n, (file_name, present) in enumerate(entries.items()):
            db.execute(
                "INSERT INTO entries (key, item_id, file_name, size, source, ranges, present,"
                " atime, created) VALUES (?, ?, ?, ?, 'girder:x', ?, ?, ?, ?)",
                (f"file-{n}", f"item-{n}", file_name, present, f"[[0, {present}]]", present,
                 now, now),
            )  # fmt: skip
            (path.parent / "data" / file_name).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "data" / file_name).write_bytes(b"x" * present)
        db.execute(
            "INSERT INTO locks (item_id, session_id, owner_id, pid, pid_start, created)"
            " VALUES ('item-0', 's', 'old-mount', ?, ?, ?)",
            (pid, start, now),
        )
        db.execute(
            "INSERT INTO claims (key, start, end, bytes, owner_id, pid, pid_start, expires)"
            " VALUES ('file-0', 0, 10, 10, 'old-mount', ?, ?, ?)",
            (pid, start, now + 60),
        )
        db.execute(
            "INSERT INTO transfers (key, item_id, path, session_id, owner_id, source, status,"
            " size, transferred, created) VALUES ('file-0', 'item-0', '/a', 's', 'old-mount',"
            " 'girder:x', 3, 10, 10, ?)",
            (now,),
        )
        for file_name, size in (unlinking or {}).items():
            db.execute(
                "INSERT INTO unlinking (pid, pid_start, bytes, files, time) VALUES (?,?,?,?,?)",
                (pid, start, size, f'["{file_name}"]', now),
            )
        db.commit()
    finally:
        db.close()


def present_sums(index: Index) -> tuple[int, int]:
    """(the store's present bytes as `present_total` keeps them, the entries' own sum): the
    sum is what the kept row spares every reservation, so only a test asks for it."""
    [(kept,)] = raw(index, "SELECT bytes FROM present_total")
    [(summed,)] = raw(index, "SELECT COALESCE(SUM(present), 0) FROM entries")
    return int(kept), int(summed)


def forget_present_total(index: Index) -> None:
    """Drop `present_total` and its triggers: an index as a wtfs from before them left it."""
    on = " ON entries" if isinstance(index, PostgresIndex) else ""
    for trigger in ("present_insert", "present_update", "present_delete"):
        raw(index, f"DROP TRIGGER {trigger}{on}")
    raw(index, "DROP TABLE present_total")
