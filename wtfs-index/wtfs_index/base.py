"""The index's interface and every query behind it, shared by both backends.

Every state change is one serialised write transaction (`_write`): SQLite's `BEGIN IMMEDIATE`,
or PostgreSQL with a per-store advisory lock, so capacity checks and lock checks cannot race
between daemons, wherever they run. The queries are written once, in SQL both backends accept;
a `Dialect` fills in what differs (placeholders, the clock, list parameters).

Ordering rules that make crashes harmless:
- data bytes are written to a store file *before* their range is committed here;
- an entry (or a span of a windowed one) is deleted here *before* its file is unlinked (or the
  span punched out), and its bytes stay counted in an `unlinking` batch until that is done: a
  crash leaves an orphan file or a batch to finish, never a row pointing at missing bytes, and
  never space another process may reuse while it is still taken on disk;
- claims (fetches in flight, with the bytes they reserved), locks and batches belong to an owner;
  rows of dead owners (`owner.Owner.judges_alive`) are reclaimed by whoever notices;
- a batch's owner is the one process carrying it out: the one that made it, or one that took it
  (`orphan_unlinks`) once nobody was (`LEFT`). Its spans must be punched while it is counted
  (its `punching` rows keep them from being fetched again), never after: a second process
  punching the same batch late would make holes in bytes fetched again since, which the index
  takes for present (served as zeros).

Windows (a store smaller than what its readers have open): a read lock keeps every byte of its
entry, until the entry is *windowed* by a process that needs room for a block a reader waits
for and finds nothing unlocked left to evict. From then on each reader of that entry names, in
its lock, the span it needs now (its pin: the current and next blocks), and re-reads the entry's
ranges when it pins. Only bytes outside every pin and every claim may be dropped, and only once
every lock on the entry has a pin: a lock without one still keeps every byte. So a reader
trusts what it knows of an entry only inside its pin, and learns of drops made by any other
process when it pins again. A hold lock (a pin through Girder, a prefetch) is never windowed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from itertools import accumulate
from typing import Any, Protocol, TypeVar

from wtfs_index.errors import IndexBusy
from wtfs_index.model import (
    ClaimRow,
    EntryRow,
    Evicted,
    Eviction,
    EvictionRow,
    FailureRow,
    Heartbeat,
    LockKind,
    LockRow,
    NewEntry,
    OwnerRow,
    PinState,
    PrefetchFileRow,
    PrefetchRow,
    PrefetchState,
    Punch,
    Reservation,
    StoreSummary,
    TransferRow,
    TransferStatus,
    UnlinkBatch,
    WindowResult,
)
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges
from wtfs_index.schema import PRESENT_TOTAL_ROW, present_total_triggers

SCHEMA_VERSION = 2
#: the owner of an unlinking batch nobody carries out: its owner died or exited, or the batch
#: was made for whoever reclaims next (`orphan_unlinks` takes it)
LEFT = ""
#: seconds an owner that cannot be judged by /proc stays alive without a heartbeat
DEFAULT_LEASE = 20.0
#: transfers that ended longer ago than this are hidden unless asked for (the DM's discardOld)
DISCARD_AFTER = 60.0

Row = Mapping[str, Any]
R = TypeVar("R")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Dialect:
    """What the backends spell differently. Queries use `?` placeholders and `{now}`."""

    name = "sql"
    #: seconds since the epoch by the index's own clock
    now = "0"
    greatest = "MAX"

    def fresh(self, column: str) -> str:
        """SQL truth of "the lease in `column` has not run out"."""
        return f"({column} > {self.now})"

    def translate(self, sql: str) -> str:
        return sql.replace("{now}", self.now)

    def in_list(self, column: str) -> str:
        """SQL truth of "`column` is one of the list bound at this placeholder"."""
        raise NotImplementedError

    def list_param(self, values: Sequence[Any]) -> Any:
        raise NotImplementedError

    def next_id(self, table: str) -> str | None:
        """SQL of the id the next row of `table` takes, drawn by a query already on its way,
        so that an INSERT needing its id goes with the COMMIT instead of a round trip of its
        own; inserted under it with `explicit_id`. None: an INSERT's answer costs nothing
        (SQLite, in-process)."""
        return None

    #: what lets an INSERT name the id `next_id` drew
    explicit_id = ""


class Tx:
    """A transaction's cursor with the dialect applied: `?` and `{now}` in, rows by name out."""

    def __init__(
        self,
        cursor: Cursor,
        dialect: Dialect,
        cache: dict[str, str],
        new_cursor: Callable[[], Any],
    ) -> None:
        self._cursor = cursor
        self._new_cursor = new_cursor
        self._dialect = dialect
        self._cache = cache

    def _sql(self, sql: str) -> str:
        text = self._cache.get(sql)
        if text is None:
            text = self._cache[sql] = self._dialect.translate(sql)
        return text

    def _run(self, cursor: Cursor, sql: str, params: Sequence[Any]) -> None:
        """Every statement goes through here (`PostgresTx` sends deferred writes with it)."""
        cursor.execute(self._sql(sql), tuple(params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._run(self._cursor, sql, params)
        return int(self._cursor.rowcount)

    def flush(self) -> None:
        """Send the deferred writes now (see `write`)."""

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose outcome the caller never reads, neither rows nor a count: a
        backend whose every statement is a round trip may send it with the next statement
        (so its error, if any, is raised there: the transaction fails either way)."""
        self.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(p) for p in params]
        if rows:
            self.flush()
            self._cursor.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._run(self._cursor, sql, params)
        row: Row | None = self._cursor.fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._run(self._cursor, sql, params)
        return list(self._cursor.fetchall())

    def chunks(
        self, sql: str, params: Sequence[Any] = (), batch: int = 4096
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Rows as plain tuples, fetched and handed over `batch` at a time: a caller may stop
        early, and works on a list at a time (a pass's tens of thousands of rows, each through
        a generator and a loop body of its own, cost ~0.1 s of Python)."""
        self.flush()  # deferred writes first: the cursor may be one of its own (PostgreSQL's)
        cursor = self._new_cursor()
        try:
            self._run(cursor, sql, params)
            while rows := cursor.fetchmany(batch):
                yield rows
        finally:
            cursor.close()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[next(iter(row.keys()))]

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT and return the new row's id."""
        return int(self.scalar(f"{sql} RETURNING id", params))

    @property
    def dialect(self) -> Dialect:
        return self._dialect


#: The small transactions on a reader's way (an open, a fetch's claims and commits, a close,
#: transfer records): not the GC's passes, listings or reclaims. `reserve` sums the store's
#: usage, so its cost grows with the entries: a caller that runs these on its own thread
#: measures them (`wtfs.cache.aindex`).
SMALL_CALLS = frozenset({
    "open_entry", "reserve", "commit_range", "commit_and_reserve", "release_lock",
    "transfer_create", "transfer_update",
})  # fmt: skip
#: bytes taken: present (kept by triggers: `wtfs_index.schema`), reserved and unlinking
_USAGE = (
    "(SELECT bytes FROM present_total)"
    " + (SELECT COALESCE(SUM(bytes), 0) FROM claims)"
    " + (SELECT COALESCE(SUM(bytes), 0) FROM unlinking)"
)
#: what `reserve` and `commit_range` read of an entry
_ENTRY_RANGES = "SELECT ranges, gen, file_name, windowed FROM entries WHERE key = ?"


def _look(tx: Tx, key: str, start: int, end: int, *, own: int | None = None) -> list[Row]:
    """What a claim of [start, end) of `key` depends on, in one statement (one round trip):
    the entry (`_ENTRY_RANGES` and its present bytes; NULLs if there is none), the store's
    usage, whether the span is being punched, the claims overlapping it (a row each, or one row
    of NULLs), `own`'s bytes (a claim the caller is about to delete) and, where an INSERT's
    answer is a round trip of its own (PostgreSQL), the id the claim will take: the claim then
    goes with the COMMIT. A claim not made leaves a gap in the ids, harmless."""
    next_id = tx.dialect.next_id("claims") or "NULL"
    return tx.all(
        "SELECT e.ranges, e.gen, e.file_name, e.windowed, e.present, u.usage, u.punched,"
        " u.next_id, u.own_bytes, c.id, c.owner_id, c.bytes, o.owner_id AS known, o.boot_id,"
        f" o.pidns, o.pid, o.pid_start, {tx.dialect.fresh('o.expires')} AS fresh"
        f" FROM (SELECT {_USAGE} AS usage, CASE WHEN EXISTS (SELECT 1 FROM punching"
        "  WHERE key = ? AND span_start < ? AND span_end > ?) THEN 1 ELSE 0 END AS punched,"
        f" {next_id} AS next_id, (SELECT bytes FROM claims WHERE id = ?) AS own_bytes) u"
        " LEFT JOIN entries e ON e.key = ?"
        " LEFT JOIN claims c ON c.key = ? AND c.span_start < ? AND c.span_end > ?"
        " LEFT JOIN owners o ON o.owner_id = c.owner_id",
        (key, end, start, own, key, key, end, start),
    )


class Index(ABC):
    """The index of one private store. Synchronous: async callers hop to a worker thread.

    Every public method is one transaction. Methods that judge liveness take `me`, the calling
    process, because whether an owner can be judged by /proc depends on who looks.
    """

    dialect: Dialect

    #: The calls a caller may make `without_waiting` on its own thread. None here: every call
    #: may wait for a server. A local backend names its `SMALL_CALLS`.
    quick_calls: frozenset[str] = frozenset()

    def __init__(self, *, lease: float = DEFAULT_LEASE) -> None:
        self.lease = lease
        self._sql_cache: dict[str, str] = {}

    # -- backend hooks -----------------------------------------------------------------------

    @abstractmethod
    def _write(self) -> AbstractContextManager[Tx]:
        """A serialised write transaction (committed on success, rolled back on error)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Tx]:
        """A consistent read."""

    @abstractmethod
    def close(self) -> None: ...

    def without_waiting(self) -> AbstractContextManager[None]:
        """Inside it, one of the `quick_calls` raises `IndexBusy` rather than wait, before doing
        anything.

        For a backend whose uncontended transaction takes microseconds (SQLite, a local file),
        so that a caller can make it on its own thread and skip the hop to a worker thread
        (0.3-0.9 ms each on a loaded 2-core machine, against 0.05-0.1 ms of SQL).
        """
        raise IndexBusy(f"{self.describe()}: every call may wait for the server")

    @abstractmethod
    def describe(self) -> str:
        """Where the index lives, for messages (a path, or a URL without its password)."""

    def _evict(self, tx: Tx, evicted: Sequence[Evicted], reason: str, by: str) -> None:
        """Record the chosen entries, given least recently used first, as one batch, and
        delete them."""
        record_evictions(tx, [(e.key, e.item_id, e.path, e.bytes) for e in evicted], reason, by)
        param = tx.dialect.list_param([e.key for e in evicted])
        tx.execute(f"DELETE FROM entries WHERE {tx.dialect.in_list('key')}", (param,))

    # -- owners ------------------------------------------------------------------------------

    def register_owner(
        self,
        owner: Owner,
        kind: str,
        *,
        mountpoint: str | None = None,
        session_id: str | None = None,
        session_origin: str | None = None,
    ) -> None:
        with self._write() as tx:
            tx.execute(
                "INSERT INTO owners (owner_id, kind, host, boot_id, pidns, pid, pid_start,"
                " mountpoint, session_id, session_origin, started, heartbeat, expires, stats)"
                " VALUES (?,?,?,?,?,?,?,?,?,?, {now}, {now}, {now} + ?, '{}')"
                " ON CONFLICT (owner_id) DO UPDATE SET heartbeat = excluded.heartbeat,"
                " expires = excluded.expires",
                (owner.owner_id, kind, owner.host, owner.boot_id, owner.pidns, owner.pid,
                 owner.pid_start, mountpoint, session_id, session_origin, self.lease),
            )  # fmt: skip

    def unregister_owner(self, owner_id: str) -> None:
        """A clean exit: drop the owner's locks and claims with it, keep its counters."""
        with self._write() as tx:
            tx.execute("DELETE FROM locks WHERE owner_id = ? AND expires IS NULL", (owner_id,))
            tx.execute("DELETE FROM claims WHERE owner_id = ?", (owner_id,))
            self._retire_owners(tx, [owner_id])
            self._unwindow_unlocked(tx)
            # Old versions it held go now; their batch has no owner left: whoever reclaims
            # next finishes it (`orphan_unlinks`).
            self._drop_superseded(tx, owner_id, left=True)

    def heartbeat(
        self, owner: Owner, stats: Mapping[str, int], atimes: Mapping[str, float]
    ) -> Heartbeat:
        """Renew the owner's lease, save its counters and the access times it saw."""
        with self._write() as tx:
            renewed = tx.execute(
                "UPDATE owners SET heartbeat = {now}, expires = {now} + ?, stats = ?"
                " WHERE owner_id = ?",
                (self.lease, json.dumps(dict(stats)), owner.owner_id),
            )
            tx.executemany(
                f"UPDATE entries SET atime = {tx.dialect.greatest}(atime, ?) WHERE key = ?",
                [(t, k) for k, t in atimes.items()],
            )
            if not renewed:
                return Heartbeat(registered=False)
            to_pin = tx.all(
                "SELECT l.id, l.entry_key FROM locks l JOIN entries e ON e.key = l.entry_key"
                " WHERE l.owner_id = ? AND l.kind = ? AND l.pin_start IS NULL AND e.windowed = 1",
                (owner.owner_id, LockKind.READ),
            )
            return Heartbeat(True, [(int(r["id"]), str(r["entry_key"])) for r in to_pin])

    def owners(self, me: Owner) -> list[OwnerRow]:
        with self._read() as tx:
            rows = tx.all(
                f"SELECT *, {tx.dialect.fresh('expires')} AS fresh FROM owners ORDER BY started"
            )
        return [_owner(r, me) for r in rows]

    def live_mount(self, mountpoint: str, me: Owner) -> OwnerRow | None:
        """The live mount daemon serving `mountpoint` that `me` can signal (same host and PID
        namespace), if any: another container's mount of the same path is not ours to stop."""
        for row in self.owners(me):
            mine = me.sees(row.boot_id, row.pidns)
            if row.kind == "mount" and row.mountpoint == mountpoint and row.alive and mine:
                return row
        return None

    def reclaim_dead(self, me: Owner) -> dict[str, int]:
        """Delete the rows of dead owners and of expired locks; leave their unlinking batches
        to whoever takes them next (`orphan_unlinks`); drop the old versions only they held;
        fail the transfers they left running."""
        counts = {"owners": 0, "locks": 0, "claims": 0, "transfers": 0, "unlinking": 0}
        with self._write() as tx:
            rows = tx.all(
                "SELECT owner_id, boot_id, pidns, pid, pid_start,"
                f" {tx.dialect.fresh('expires')} AS fresh FROM owners"
            )
            dead = [str(r["owner_id"]) for r in rows if not _judge(r, me)]
            counts["owners"] = len(dead)
            self._retire_owners(tx, dead)
            counts["locks"] = tx.execute(
                "DELETE FROM locks WHERE (expires IS NULL AND owner_id NOT IN"
                " (SELECT owner_id FROM owners))"
                f" OR (expires IS NOT NULL AND NOT {tx.dialect.fresh('expires')})"
            )
            counts["claims"] = tx.execute(
                "DELETE FROM claims WHERE owner_id NOT IN (SELECT owner_id FROM owners)"
            )
            counts["unlinking"] = tx.execute(
                "UPDATE unlinking SET owner_id = ? WHERE owner_id <> ? AND owner_id NOT IN"
                " (SELECT owner_id FROM owners)",
                (LEFT, LEFT),
            )
            counts["transfers"] = tx.execute(
                "UPDATE transfers SET status = ?, end_time = ?, error = ? WHERE status IN"
                " (?, ?, ?) AND owner_id NOT IN (SELECT owner_id FROM owners)",
                (int(TransferStatus.FAILED), time.time(),
                 "interrupted: the wtfs process fetching it died",
                 int(TransferStatus.INITIALIZING), int(TransferStatus.QUEUED),
                 int(TransferStatus.TRANSFERRING)),
            )  # fmt: skip
            tx.execute(
                "UPDATE prefetches SET state = ?, ended = ?, updated = ?, error = ?"
                " WHERE state = ? AND owner_id NOT IN (SELECT owner_id FROM owners)",
                (PrefetchState.FAILED, time.time(), time.time(),
                 "interrupted: the wtfs process running it died", PrefetchState.RUNNING),
            )  # fmt: skip
            if counts["locks"]:
                self._unwindow_unlocked(tx)
            if counts["locks"] or counts["claims"]:
                # Old versions that only the dead held go now, in a batch left for
                # `orphan_unlinks`, which the reclaimer calls next.
                self._drop_superseded(tx, me.owner_id, left=True)
        return counts

    def _retire_owners(self, tx: Tx, owner_ids: list[str]) -> None:
        """Fold the owners' counters into the store-wide totals, then delete their rows."""
        if not owner_ids:
            return
        param = tx.dialect.list_param(owner_ids)
        totals = self._totals(tx)
        for row in tx.all(
            f"SELECT stats FROM owners WHERE {tx.dialect.in_list('owner_id')}", (param,)
        ):
            for key, value in json.loads(row["stats"]).items():
                totals[key] = totals.get(key, 0) + value
        self._set_meta(tx, "totals", json.dumps(totals))
        tx.execute(f"DELETE FROM owners WHERE {tx.dialect.in_list('owner_id')}", (param,))

    # -- locks -------------------------------------------------------------------------------

    def acquire_lock(
        self,
        item_id: str,
        session_id: str,
        owner: Owner,
        *,
        entry_key: str | None = None,
        kind: str = LockKind.READ,
        mountpoint: str | None = None,
        path: str | None = None,
        expires_in: float | None = None,
    ) -> int:
        """A lock on an item (`entry_key` None: every entry of it), or on one entry.

        `expires_in` gives the lock a lease of its own (a pin set through Girder), renewed with
        `renew_lock`; without it the lock lives as long as its owner.
        """
        expires = "{now} + ?" if expires_in is not None else "NULL"
        extra = (expires_in,) if expires_in is not None else ()
        with self._write() as tx:
            return tx.insert(
                "INSERT INTO locks (item_id, entry_key, session_id, owner_id, kind, mountpoint,"
                f" path, created, expires) VALUES (?,?,?,?,?,?,?, {{now}}, {expires})",
                (item_id, entry_key, session_id, owner.owner_id, kind, mountpoint, path, *extra),
            )

    def hold_item(
        self, item_id: str, session_id: str, owner: Owner, *, expires_in: float
    ) -> tuple[int, bool]:
        """Pin every entry of an item for `expires_in` seconds: (lock id, renewed).

        A pin is a `hold` lock on the item (`entry_key` None) with a lease of its own, held by
        an owner with no process (`Owner.lease_only`: a client of the Girder plugin). While it
        lasts, no entry of the item is evicted or windowed; once it runs out, `reclaim_dead`
        deletes it like any lease. The owner's pin of the same item under the same session is
        renewed (same id, new expiry) rather than stacked: one transaction, so two calls at once
        cannot make two pins.
        """
        with self._write() as tx:
            row = tx.one(
                "SELECT id FROM locks WHERE item_id = ? AND session_id = ? AND owner_id = ?"
                " AND entry_key IS NULL AND kind = ? AND expires IS NOT NULL ORDER BY id",
                (item_id, session_id, owner.owner_id, LockKind.HOLD),
            )
            if row is not None:
                tx.execute(
                    "UPDATE locks SET expires = {now} + ? WHERE id = ?", (expires_in, row["id"])
                )
                return int(row["id"]), True
            lock_id = tx.insert(
                "INSERT INTO locks (item_id, entry_key, session_id, owner_id, kind, created,"
                " expires) VALUES (?, NULL, ?, ?, ?, {now}, {now} + ?)",
                (item_id, session_id, owner.owner_id, LockKind.HOLD, expires_in),
            )
            return lock_id, False

    def renew_lock(self, lock_id: int, expires_in: float) -> bool:
        with self._write() as tx:
            return bool(
                tx.execute(
                    "UPDATE locks SET expires = {now} + ? WHERE id = ? AND expires IS NOT NULL",
                    (expires_in, lock_id),
                )
            )

    def release_lock(self, lock_id: int, by_owner: str = "") -> Eviction:
        """Release a lock. An entry of an older version (`superseded`) goes with its last lock:
        the result names its file, for the caller to unlink and then `finish_unlink`."""
        with self._write() as tx:
            row = tx.one("SELECT entry_key, owner_id FROM locks WHERE id = ?", (lock_id,))
            tx.execute("DELETE FROM locks WHERE id = ?", (lock_id,))
            if row is None:
                return Eviction()
            self._unwindow_unlocked(tx)
            return self._drop_superseded(tx, by_owner or str(row["owner_id"]))

    def release_locks(self, *, session_id: str, by_owner: str = "") -> int:
        """Release every lock taken under a session (the session was deleted). Old versions
        they held go in a batch left for the next `orphan_unlinks` (the caller unlinks
        nothing)."""
        with self._write() as tx:
            count = tx.execute("DELETE FROM locks WHERE session_id = ?", (session_id,))
            self._unwindow_unlocked(tx)
            self._drop_superseded(tx, by_owner, left=True)
            return count

    def lock_total(self) -> int:
        with self._read() as tx:
            return int(tx.scalar("SELECT COUNT(*) FROM locks"))

    def lock_count(self, item_id: str) -> int:
        with self._read() as tx:
            return int(tx.scalar("SELECT COUNT(*) FROM locks WHERE item_id = ?", (item_id,)))

    def get_lock(self, lock_id: int, me: Owner) -> LockRow | None:
        rows = self._locks(me, "l.id = ?", [lock_id])
        return rows[0] if rows else None

    def locks(
        self,
        me: Owner,
        *,
        session_id: str | None = None,
        item_id: str | None = None,
        owner_id: str | None = None,
    ) -> list[LockRow]:
        where: list[str] = ["1=1"]
        params: list[Any] = []
        for column, value in (("session_id", session_id), ("item_id", item_id),
                              ("owner_id", owner_id)):  # fmt: skip
            if value is not None:
                where.append(f"l.{column} = ?")
                params.append(value)
        return self._locks(me, " AND ".join(where), params)

    def _locks(self, me: Owner, where: str, params: list[Any]) -> list[LockRow]:
        with self._read() as tx:
            rows = tx.all(
                "SELECT l.*, o.host, o.boot_id, o.pidns, o.pid, o.pid_start,"
                f" {tx.dialect.fresh('o.expires')} AS fresh,"
                f" {tx.dialect.fresh('l.expires')} AS own_fresh"
                f" FROM locks l LEFT JOIN owners o ON o.owner_id = l.owner_id WHERE {where}"
                " ORDER BY l.id",
                params,
            )
        return [_lock(r, me) for r in rows]

    def set_pins(self, key: str, pins: Sequence[tuple[int, int | None, int | None]]) -> PinState:
        """Set the pins of some of the caller's read locks on entry `key` ((lock id, start, end);
        None, None: every byte again), and read the entry as it is now, in one transaction.

        A reader trusts what it knows of a windowed entry only inside its pin: the ranges
        returned here are the truth for it, since nobody drops pinned bytes.
        """
        with self._write() as tx:
            tx.executemany(
                "UPDATE locks SET pin_start = ?, pin_end = ? WHERE id = ?",
                [(start, end, lock_id) for lock_id, start, end in pins],
            )
            row = tx.one(
                "SELECT file_name, ranges, gen, windowed, complete FROM entries WHERE key = ?",
                (key,),
            )
        if row is None:
            return PinState(None, Ranges(), False, False)
        return PinState(
            str(row["file_name"]),
            _ranges(row),
            bool(row["windowed"]),
            bool(row["complete"]),
        )

    def _unwindow_unlocked(self, tx: Tx) -> None:
        """An entry no read lock holds any more is whole again (its bytes are evictable)."""
        tx.execute(
            "UPDATE entries SET windowed = 0 WHERE windowed = 1 AND key NOT IN"
            " (SELECT entry_key FROM locks WHERE entry_key IS NOT NULL)"
        )

    # -- entries -----------------------------------------------------------------------------

    def get_entry(self, key: str) -> EntryRow | None:
        with self._read() as tx:
            row = tx.one("SELECT * FROM entries WHERE key = ?", (key,))
        return _entry(row) if row else None

    def current_entries(self, item_id: str) -> list[EntryRow]:
        """The entries of an item's current versions (one per source: a file of the item), by
        key: what a reader of the item now gets. Older versions still held open
        (`superseded`) are left out."""
        with self._read() as tx:
            rows = tx.all(
                "SELECT * FROM entries WHERE item_id = ? AND superseded = 0 ORDER BY key",
                (item_id,),
            )
        return [_entry(r) for r in rows]

    def ensure_entry(self, new: NewEntry, *, by_owner: str) -> EntryRow:
        """The entry `new` describes, created empty if missing (with a new, unique file name).

        Creating one supersedes the other versions of the same source: those no lock holds are
        dropped now (the result's `unlink` names their files), the others when their last lock
        goes (`release_lock` returns them; `release_locks`, `unregister_owner` and
        `reclaim_dead` leave them in a batch for `orphan_unlinks`).
        """
        with self._write() as tx:
            return self._ensure(tx, new, by_owner)

    def open_entry(
        self, new: NewEntry, *, session_id: str, owner: Owner, mountpoint: str | None = None
    ) -> tuple[int, EntryRow]:
        """A reader's open in one transaction: a read lock on the entry `new` describes, then
        the entry (`ensure_entry`). Returns (lock id, entry as the lock found it)."""
        with self._write() as tx:
            lock_id = tx.insert(
                "INSERT INTO locks (item_id, entry_key, session_id, owner_id, kind, mountpoint,"
                " path, created, expires) VALUES (?,?,?,?,?,?,?, {now}, NULL)",
                (new.item_id, new.key, session_id, owner.owner_id, LockKind.READ, mountpoint,
                 new.path),
            )  # fmt: skip
            entry = self._ensure(tx, new, owner.owner_id)
            return lock_id, entry

    def _ensure(self, tx: Tx, new: NewEntry, by_owner: str) -> EntryRow:
        key = new.key
        row = tx.one("SELECT * FROM entries WHERE key = ?", (key,))
        if row is not None:
            return _entry(row)
        file_name = f"{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}"
        tx.execute(
            "INSERT INTO entries (key, source_key, version, content_hash, item_id, file_name,"
            " size, checksum, source, path, atime, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, new.source_key, new.version, new.content_hash, new.item_id, file_name,
             new.size, new.checksum, new.source, new.path, time.time(), time.time()),
        )  # fmt: skip
        tx.execute(
            "UPDATE entries SET superseded = 1 WHERE source_key = ? AND key <> ?",
            (new.source_key, key),
        )
        unlink = self._drop_superseded(tx, by_owner)
        created = tx.one("SELECT * FROM entries WHERE key = ?", (key,))
        assert created is not None
        return dataclasses.replace(_entry(created), unlink=unlink if unlink else None)

    def _drop_superseded(self, tx: Tx, by_owner: str, *, left: bool = False) -> Eviction:
        """Drop the superseded entries nothing holds any more, in a batch of `by_owner`'s
        (the caller carries it out) or, `left`, one for the next `orphan_unlinks`."""
        rows = tx.all(
            "SELECT key, item_id, file_name, present, path FROM entries e WHERE superseded = 1"
            " AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.entry_key = e.key)"
            " AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.key = e.key)"
        )
        evicted = Eviction(
            Evicted(r["key"], r["item_id"], r["file_name"], r["present"], r["path"]) for r in rows
        )
        if evicted:
            self._evict(tx, evicted, "replaced", by_owner)
            evicted.unlink_id = self._batch(tx, LEFT if left else by_owner, evicted)
        return evicted

    def summary(self) -> StoreSummary:
        with self._read() as tx:
            return self._summary(tx)

    def usage(self) -> int:
        with self._read() as tx:
            return self._usage(tx)

    def _summary(self, tx: Tx) -> StoreSummary:
        row = tx.one(
            "SELECT (SELECT bytes FROM present_total) AS present, COUNT(*) AS entries,"
            " COALESCE(SUM(complete), 0) AS complete FROM entries"
        )
        assert row is not None
        reserved = tx.scalar("SELECT COALESCE(SUM(bytes), 0) FROM claims")
        unlinking = tx.scalar("SELECT COALESCE(SUM(bytes), 0) FROM unlinking")
        return StoreSummary(
            int(row["present"]), int(reserved), int(unlinking), int(row["entries"]),
            int(row["complete"]),
        )  # fmt: skip

    def _usage(self, tx: Tx) -> int:
        """Bytes taken: present, reserved and unlinking. Every reservation asks: one statement,
        which reads no entry (`_USAGE`)."""
        return int(tx.scalar(f"SELECT {_USAGE} AS usage"))

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

        `file_name` names the store file the caller writes into: if the entry was replaced or
        dropped meanwhile, the answer is `stale`. An overlapping claim of another live owner
        makes the answer `busy` (wait for its bytes rather than fetch them twice).
        """
        with self._write() as tx:
            rows = _look(tx, key, start, end)
            row = rows[0]
            if row["file_name"] is None or file_name not in (None, row["file_name"]):
                return Reservation(ranges=Ranges(), stale=True)
            windowed = bool(row["windowed"])
            usage = int(row["usage"])
            return self._reserve(tx, rows, key, _ranges(row), windowed, start, end, owner,
                                 capacity, usage)  # fmt: skip

    def _reserve(
        self,
        tx: Tx,
        rows: list[Row],
        key: str,
        ranges: Ranges,
        windowed: bool,
        start: int,
        end: int,
        owner: Owner,
        capacity: int,
        usage: int,
        *,
        freed: int | None = None,
    ) -> Reservation:
        """Decide on the claim of [start, end) from what `_look` found (`rows`), `usage` being
        the store's usage now; `freed`: a claim this transaction deletes (not a rival)."""
        needed = (end - start) - ranges.overlap(start, end)
        if needed == 0:
            return Reservation(ranges=ranges, windowed=windowed)
        for claim in rows:
            if claim["id"] is None or claim["id"] == freed:
                continue
            if claim["known"] is None or not _judge(claim, owner):
                tx.write("DELETE FROM claims WHERE id = ?", (claim["id"],))
                usage -= int(claim["bytes"])
            elif claim["owner_id"] != owner.owner_id:
                return Reservation(ranges=ranges, busy=True, windowed=windowed)
        if rows[0]["punched"]:
            return Reservation(ranges=ranges, busy=True, windowed=windowed)  # being punched
        if usage + needed > capacity:
            return Reservation(ranges=ranges, no_room=True, usage=usage, windowed=windowed)
        values = (key, start, end, needed, owner.owner_id)
        if rows[0]["next_id"] is None:
            claim_id = tx.insert(
                "INSERT INTO claims (key, span_start, span_end, bytes, owner_id)"
                " VALUES (?,?,?,?,?)",
                values,
            )
        else:
            claim_id = int(rows[0]["next_id"])
            tx.write(
                "INSERT INTO claims (id, key, span_start, span_end, bytes, owner_id)"
                f"{tx.dialect.explicit_id} VALUES (?,?,?,?,?,?)",
                (claim_id, *values),
            )
        return Reservation(claim_id, ranges, usage=usage + needed, windowed=windowed)

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
        Returns the entry's ranges now (empty when the entry was replaced or dropped: bytes
        written into an older file must not count for the new one).
        """
        with self._write() as tx:
            row = tx.one(_ENTRY_RANGES, (key,))
            done = self._commit(tx, row, claim_id, key, start, end, transfer, file_name)
            return Ranges() if done is None else done[0]

    def commit_and_reserve(
        self,
        claim_id: int,
        key: str,
        start: int,
        end: int,
        transfer: tuple[int, int] | None,
        *,
        next_end: int,
        owner: Owner,
        capacity: int,
        file_name: str | None = None,
    ) -> tuple[Ranges, Reservation]:
        """`commit_range` of [start, end), then `reserve` of [end, next_end), in one
        transaction: a run streaming a file makes one per block rather than two (on PostgreSQL
        each costs its BEGIN, lock and COMMIT round trips, and the second re-reads the entry
        the first just wrote)."""
        with self._write() as tx:
            # What the claim of the next piece depends on is read along with the entry, before
            # the commit's writes, in the transaction's first round trip: on PostgreSQL a block
            # then costs 2 (BEGIN, the lock and this look; the writes, the claim and COMMIT),
            # not 3. None of the writes touches the next piece's span; the usage they make is
            # worked out below.
            rows = _look(tx, key, end, next_end, own=claim_id)
            row = rows[0]
            done = self._commit(tx, row, claim_id, key, start, end, transfer, file_name)
            if done is None:
                return Ranges(), Reservation(ranges=Ranges(), stale=True)
            ranges, windowed = done
            # The commit moved the bytes from our claim to the entry: usage loses the claim's
            # bytes (if it was still there to delete) and gains what became present (the
            # present_total triggers' sum).
            usage = int(row["usage"]) - int(row["own_bytes"] or 0)
            usage += ranges.total - int(row["present"])
            return ranges, self._reserve(tx, rows, key, ranges, windowed, end, next_end, owner,
                                         capacity, usage, freed=claim_id)  # fmt: skip

    def _commit(
        self,
        tx: Tx,
        row: Row | None,
        claim_id: int,
        key: str,
        start: int,
        end: int,
        transfer: tuple[int, int] | None,
        file_name: str | None,
    ) -> tuple[Ranges, bool] | None:
        """The entry's ranges after the commit and whether it is windowed; None when the entry
        is stale. `row`: the entry's `_ENTRY_RANGES` (a row without a `file_name`: none)."""
        tx.write("DELETE FROM claims WHERE id = ?", (claim_id,))
        if transfer is not None:
            tx.write(
                "UPDATE transfers SET transferred = ? WHERE id = ?", (transfer[1], transfer[0])
            )
        if row is None or row["file_name"] is None or file_name not in (None, row["file_name"]):
            return None
        ranges = _ranges(row)
        ranges.insert(start, end)
        ranges.gen += 1
        tx.write(
            "UPDATE entries SET ranges = ?, present = ?, gen = ?, atime = ? WHERE key = ?",
            (ranges.to_json(), ranges.total, ranges.gen, time.time(), key),
        )
        return ranges, bool(row["windowed"])

    def claims(self, *, key: str | None = None) -> list[ClaimRow]:
        """The claims (fetches in flight), oldest first; `key`: only those of one entry."""
        where, params = ("key = ?", [key]) if key is not None else ("1=1", [])
        with self._read() as tx:
            rows = tx.all(f"SELECT * FROM claims WHERE {where} ORDER BY id", params)
        return [
            ClaimRow(
                int(r["id"]), r["key"], int(r["span_start"]), int(r["span_end"]),
                int(r["bytes"]), r["owner_id"],
            )
            for r in rows
        ]  # fmt: skip

    def release_claim(self, claim_id: int) -> None:
        with self._write() as tx:
            tx.execute("DELETE FROM claims WHERE id = ?", (claim_id,))

    def mark_complete(self, key: str) -> bool:
        with self._write() as tx:
            return bool(
                tx.execute(
                    "UPDATE entries SET complete = 1 WHERE key = ? AND present = size", (key,)
                )
            )

    def set_content_hash(self, key: str, content_hash: str) -> None:
        with self._write() as tx:
            tx.execute("UPDATE entries SET content_hash = ? WHERE key = ?", (content_hash, key))

    def dedup_donor(self, content_hash: str, size: int, key: str) -> EntryRow | None:
        """A complete entry other than `key` holding the same contents (the same hash and size),
        whole (not windowed): its store file can be shared (`adopt_complete`). The most recently
        used one."""
        with self._read() as tx:
            row = tx.one(
                "SELECT * FROM entries WHERE content_hash = ? AND size = ? AND key <> ?"
                " AND complete = 1 AND windowed = 0 ORDER BY atime DESC LIMIT 1",
                (content_hash, size, key),
            )
        return _entry(row) if row else None

    def adopt_complete(self, key: str, donor_key: str, owner_id: str) -> EntryRow | None:
        """Mark entry `key` complete: the caller has made its store file a hard link of
        `donor_key`'s (content dedup). Only while the donor is still complete and whole (so
        the shared file holds every byte) and nobody else can have `key`'s file open: no bytes,
        no claims, no lock but `owner_id`'s. None: not adopted (the caller removes its link).
        """
        with self._write() as tx:
            donor = tx.one(
                "SELECT size, content_hash FROM entries WHERE key = ? AND complete = 1"
                " AND windowed = 0",
                (donor_key,),
            )
            row = tx.one("SELECT * FROM entries WHERE key = ?", (key,))
            if donor is None or row is None or int(row["present"]) or row["complete"]:
                return None
            if (
                int(donor["size"]) != int(row["size"])
                or donor["content_hash"] != row["content_hash"]
            ):
                return None
            busy = tx.scalar(
                "SELECT (SELECT COUNT(*) FROM claims WHERE key = ?)"
                " + (SELECT COUNT(*) FROM locks WHERE entry_key = ? AND owner_id <> ?)",
                (key, key, owner_id),
            )
            if int(busy):
                return None
            size = int(row["size"])
            ranges = Ranges([(0, size)] if size else [])
            ranges.gen = int(row["gen"]) + 1
            tx.execute(
                "UPDATE entries SET ranges = ?, present = ?, gen = ?, complete = 1, atime = ?"
                " WHERE key = ?",
                (ranges.to_json(), size, ranges.gen, time.time(), key),
            )
            adopted = tx.one("SELECT * FROM entries WHERE key = ?", (key,))
            assert adopted is not None
            return _entry(adopted)

    def delete_entry(self, key: str, reason: str, by_owner: str) -> Eviction:
        """Remove an entry (a checksum mismatch, damage found by fsck); its file is then the
        caller's to unlink, and `finish_unlink(result.unlink_id)` after."""
        with self._write() as tx:
            row = tx.one(
                "SELECT key, item_id, file_name, present, path FROM entries WHERE key = ?", (key,)
            )
            if row is None:
                return Eviction()
            evicted = Eviction(
                [Evicted(row["key"], row["item_id"], row["file_name"], row["present"], row["path"])]
            )
            self._evict(tx, evicted, reason, by_owner)
            tx.execute("DELETE FROM claims WHERE key = ?", (key,))
            evicted.unlink_id = self._batch(tx, by_owner, evicted)
            return evicted

    def set_ranges(self, key: str, ranges: Ranges, reason: str, by_owner: str) -> None:
        """Replace an entry's ranges with fewer (fsck found the file shorter than they said)."""
        with self._write() as tx:
            row = tx.one("SELECT present, item_id, path FROM entries WHERE key = ?", (key,))
            if row is None:
                return
            _shrink(tx, key, row, ranges, reason, by_owner)

    # -- eviction and windows ----------------------------------------------------------------

    def evict_lru(self, target_usage: int, by_owner: str, reason: str) -> Eviction:
        """Delete unlocked, unclaimed entries, least recently used first, until usage ≤ target.

        One transaction: a lock taken by any process either committed before (and the entry
        stays) or will see the entry gone and fetch it again.
        """
        with self._write() as tx:
            excess = self._usage(tx) - target_usage
            if excess <= 0:
                return Eviction()
            evicted = self._choose_lru(tx, excess)
            if not evicted:
                return evicted
            self._evict(tx, evicted, reason, by_owner)
            evicted.unlink_id = self._batch(tx, by_owner, evicted)
            return evicted

    def _choose_lru(self, tx: Tx, excess: int) -> Eviction:
        """The evictable entries, least recently used first, until their bytes reach `excess`.

        A pass may choose tens of thousands (bench: ~47k of 100k): one walk of the LRU index,
        read in batches, that stops once enough bytes are found.
        """
        chosen = Eviction()
        freed = 0
        for rows in tx.chunks(
            "SELECT key, item_id, file_name, present, path FROM entries"  # Evicted's fields
            " WHERE present > 0"
            " AND key NOT IN (SELECT entry_key FROM locks WHERE entry_key IS NOT NULL)"
            " AND item_id NOT IN (SELECT item_id FROM locks WHERE entry_key IS NULL)"
            " AND key NOT IN (SELECT key FROM claims)"
            " ORDER BY atime, key"
        ):
            sizes = [row[3] for row in rows]
            if freed + (chunk := sum(sizes)) < excess:
                chosen.extend(map(Evicted._make, rows))
                freed += chunk
                continue
            # the last chunk: its first n rows, the fewest that reach `excess`
            totals = accumulate(sizes, initial=freed)
            n = next(n for n, total in enumerate(totals) if total >= excess)
            chosen.extend(map(Evicted._make, rows[:n]))
            break
        return chosen

    def window(self, needed: int, owner_id: str, *, align: int) -> WindowResult:
        """Make room inside entries that only readers hold (see the module docstring).

        Windows (marks) read-locked entries, least recently used first, and drops the bytes
        outside every pin and claim of those whose every lock has a pin, farthest from the
        readers first, until `needed` bytes are dropped. The result lists the caller's own
        locks that must pin first (`to_pin`) and counts the bytes of entries that wait for
        other processes' readers to pin (`awaiting`).
        """
        result = WindowResult()
        with self._write() as tx:
            candidates = tx.all(
                "SELECT e.key, e.item_id, e.file_name, e.path, e.ranges, e.present, e.windowed"
                " FROM entries e WHERE e.present > 0"
                " AND EXISTS (SELECT 1 FROM locks l WHERE l.entry_key = e.key AND l.kind = ?)"
                " AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.entry_key = e.key AND l.kind = ?)"
                " AND NOT EXISTS (SELECT 1 FROM locks l WHERE l.entry_key IS NULL"
                "   AND l.item_id = e.item_id)"
                " ORDER BY e.atime, e.key",
                (LockKind.READ, LockKind.HOLD),
            )
            dropped = 0
            for row in candidates:
                if dropped >= needed:
                    break
                key = str(row["key"])
                if not row["windowed"]:
                    tx.execute("UPDATE entries SET windowed = 1 WHERE key = ?", (key,))
                locks = tx.all(
                    "SELECT id, owner_id, pin_start, pin_end FROM locks WHERE entry_key = ?",
                    (key,),
                )
                unpinned = [lock for lock in locks if lock["pin_start"] is None]
                if unpinned:
                    result.to_pin.extend(
                        (int(lock["id"]), key) for lock in unpinned if lock["owner_id"] == owner_id
                    )
                    if any(lock["owner_id"] != owner_id for lock in unpinned):
                        result.awaiting += int(row["present"])  # other processes' readers
                    continue
                keep = Ranges((int(k["pin_start"]), int(k["pin_end"])) for k in locks)
                for claim in tx.all(
                    "SELECT span_start, span_end FROM claims WHERE key = ?", (key,)
                ):
                    keep.insert(int(claim["span_start"]), int(claim["span_end"]))
                ranges = Ranges.from_json(row["ranges"])
                spans = droppable(ranges, keep, align, needed - dropped)
                if not spans:
                    continue
                for start, end in spans:
                    ranges.remove(start, end)
                    result.eviction.punches.append(Punch(str(row["file_name"]), start, end, key))
                    dropped += end - start
                _shrink(tx, key, row, ranges, "window", owner_id)
            if result.eviction.punches:
                result.eviction.unlink_id = self._batch(tx, owner_id, result.eviction)
        return result

    def _batch(self, tx: Tx, owner_id: str, eviction: Eviction) -> int:
        """Keep the evicted bytes counted until the files are gone (`finish_unlink`), and the
        spans to punch unfetchable until they are punched."""
        batch = tx.insert(
            "INSERT INTO unlinking (owner_id, bytes, files, punches, time) VALUES (?,?,?,?,?)",
            (owner_id, eviction.freed, json.dumps([e.file_name for e in eviction]),
             json.dumps([list(p) for p in eviction.punches]), time.time()),
        )  # fmt: skip
        tx.executemany(
            "INSERT INTO punching (batch_id, key, span_start, span_end) VALUES (?,?,?,?)",
            [(batch, p.key, p.start, p.end) for p in eviction.punches],
        )
        return batch

    def finish_unlink(self, unlink_id: int) -> None:
        """The files of a batch are gone and its spans punched: stop counting their bytes."""
        with self._write() as tx:
            tx.execute("DELETE FROM unlinking WHERE id = ?", (unlink_id,))
            tx.execute("DELETE FROM punching WHERE batch_id = ?", (unlink_id,))

    def orphan_unlinks(
        self, me: Owner, mine: Iterable[int] = ()
    ) -> list[tuple[int, list[str], list[Punch]]]:
        """Take the batches nobody carries out (left, or of owners no longer registered) for
        `me` to finish, and those of `mine` (batches of `me`'s own that it gave up on).

        Taken in the transaction that lists them: each batch is carried out by one process at
        a time, and a batch its maker is still carrying out is never handed out (punched again
        after its maker finished it, its spans could already hold bytes fetched again).
        """
        wanted = set(mine)
        query = (
            "SELECT id, owner_id, files, punches FROM unlinking WHERE owner_id = ?"
            " OR owner_id NOT IN (SELECT owner_id FROM owners) ORDER BY id"
        )

        def takeable(rows: list[Row]) -> list[Row]:
            return [r for r in rows if r["owner_id"] != me.owner_id or int(r["id"]) in wanted]

        with self._read() as tx:  # every GC pass asks: mostly nothing, no write for that
            if not takeable(tx.all(query, (me.owner_id,))):
                return []
        with self._write() as tx:
            rows = takeable(tx.all(query, (me.owner_id,)))
            tx.executemany(
                "UPDATE unlinking SET owner_id = ? WHERE id = ?",
                [(me.owner_id, int(r["id"])) for r in rows],
            )
        return [
            (int(r["id"]), json.loads(r["files"]), [Punch(*p) for p in json.loads(r["punches"])])
            for r in rows
        ]

    def unlink_batches(self) -> list[UnlinkBatch]:
        """Every unlinking batch, oldest first, whoever owns it: `wtfs fsck` judges which were
        left behind (their owner gone) without taking them as `orphan_unlinks` does."""
        with self._read() as tx:
            rows = tx.all("SELECT * FROM unlinking ORDER BY id")
        return [
            UnlinkBatch(
                int(r["id"]), str(r["owner_id"]), int(r["bytes"]), json.loads(r["files"]),
                [Punch(*p) for p in json.loads(r["punches"])], float(r["time"]),
            )
            for r in rows
        ]  # fmt: skip

    # -- store checks ------------------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        """What the database itself finds wrong with its own files, if it can tell (`wtfs
        fsck`): nothing by default. A PostgreSQL server keeps its own files; SQLite checks
        its file (`SqliteIndex`)."""
        return []

    def file_names(self) -> set[str]:
        with self._read() as tx:
            return {str(r["file_name"]) for r in tx.all("SELECT file_name FROM entries")}

    def entries(self) -> list[EntryRow]:
        with self._read() as tx:
            return [_entry(r) for r in tx.all("SELECT * FROM entries ORDER BY key")]

    def stored_entries(self) -> list[EntryRow]:
        """Every entry that claims bytes on disk (start-up checks and fsck)."""
        with self._read() as tx:
            return [_entry(r) for r in tx.all("SELECT * FROM entries WHERE present > 0")]

    def forget_missing(self, missing: Iterable[str]) -> int:
        """Drop entries whose file vanished (after a crash or a hand-deleted file)."""
        names = list(missing)
        if not names:
            return 0
        with self._write() as tx:
            return tx.execute(
                f"DELETE FROM entries WHERE {tx.dialect.in_list('file_name')}",
                (tx.dialect.list_param(names),),
            )

    # -- transfers ---------------------------------------------------------------------------

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
        status: int = TransferStatus.INITIALIZING,
    ) -> int:
        """A new record; one created TRANSFERRING (its fetch had a slot at once) starts now, in
        the same transaction: one less on the way to a read's first byte."""
        now = time.time()
        started = now if status == TransferStatus.TRANSFERRING else None
        attempts = 1 if started is not None else 0
        with self._write() as tx:
            return tx.insert(
                "INSERT INTO transfers (key, item_id, path, session_id, owner_id, source, status,"
                " size, start_offset, created, start_time, attempts)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, item_id, path, session_id, owner_id, source, int(status), size,
                 start_offset, now, started, attempts),
            )  # fmt: skip

    def transfer_update(self, transfer_id: int, **fields: Any) -> None:
        allowed = {"status", "transferred", "start_time", "end_time", "error", "attempts", "size"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as tx:
            tx.execute(f"UPDATE transfers SET {sets} WHERE id = ?", (*fields.values(), transfer_id))

    def request_retry(
        self, transfer_ids: Iterable[int] = (), *, all_failed: bool = False
    ) -> list[TransferRow]:
        """Re-queue FAILED transfers; a running mount of their session picks them up.
        Returns the rows asked for, as they were."""
        with self._write() as tx:
            if all_failed:
                rows = tx.all("SELECT * FROM transfers WHERE status = ?", (TransferStatus.FAILED,))
            else:
                ids = [int(i) for i in transfer_ids]
                rows = tx.all(
                    f"SELECT * FROM transfers WHERE {tx.dialect.in_list('id')} ORDER BY id",
                    (tx.dialect.list_param(ids),),
                )
            tx.executemany(
                "UPDATE transfers SET status = ?, retry_requested = 1, error = NULL,"
                " start_time = NULL, end_time = NULL, transferred = 0 WHERE id = ?",
                [(int(TransferStatus.QUEUED), r["id"]) for r in rows
                 if r["status"] == TransferStatus.FAILED],
            )  # fmt: skip
            return [_transfer(r) for r in rows]

    def claim_retries(self, owner_id: str, session_id: str) -> list[TransferRow]:
        """Take the re-queued transfers of this session for this owner to run."""
        with self._write() as tx:
            rows = tx.all(
                "SELECT * FROM transfers WHERE retry_requested = 1 AND status = ?"
                " AND session_id = ?",
                (int(TransferStatus.QUEUED), session_id),
            )
            tx.executemany(
                "UPDATE transfers SET retry_requested = 0, owner_id = ? WHERE id = ?",
                [(owner_id, r["id"]) for r in rows],
            )
            return [_transfer(r) for r in rows]

    def transfers(
        self, *, session_id: str | None = None, ended_after: float | None = None
    ) -> list[TransferRow]:
        """Transfers, oldest first; `ended_after`: only those running or ended since then."""
        where, params = _running_or_since(session_id, "end_time >=", ended_after)
        with self._read() as tx:
            rows = tx.all(f"SELECT * FROM transfers WHERE {where} ORDER BY id", params)
        return [_transfer(r) for r in rows]

    def transfer_counts(self) -> dict[int, int]:
        with self._read() as tx:
            rows = tx.all("SELECT status, COUNT(*) AS n FROM transfers GROUP BY status")
        return {int(r["status"]): int(r["n"]) for r in rows}

    def transferred_total(self) -> int:
        with self._read() as tx:
            return int(tx.scalar("SELECT COALESCE(SUM(transferred), 0) FROM transfers"))

    # -- history -----------------------------------------------------------------------------

    # -- prefetches --------------------------------------------------------------------------

    def prefetch_create(
        self,
        *,
        session_id: str,
        paths: Sequence[str],
        mountpoint: str | None = None,
        owner_id: str | None = None,
    ) -> int:
        """A `wtfs prefetch` run of `paths` (paths in the session): asked of the mount at
        `mountpoint`, whose daemon takes it up (`prefetch_claim`), or, with `owner_id`, run by
        that owner from now on."""
        state = PrefetchState.REQUESTED if owner_id is None else PrefetchState.RUNNING
        now = time.time()
        started = now if owner_id is not None else None
        with self._write() as tx:
            return tx.insert(
                "INSERT INTO prefetches (session_id, mountpoint, paths, owner_id, state,"
                " created, started, updated) VALUES (?,?,?,?,?,?,?,?)",
                (session_id, mountpoint, json.dumps(list(paths)), owner_id, state, now,
                 started, now),
            )  # fmt: skip

    def prefetch_claim(self, mountpoint: str, owner_id: str) -> list[PrefetchRow]:
        """The prefetches asked of the mount at `mountpoint` not taken up yet, now RUNNING under
        `owner_id`: each is handed to one daemon."""
        now = time.time()
        with self._write() as tx:
            rows = tx.all(
                "SELECT id FROM prefetches WHERE state = ? AND mountpoint = ? ORDER BY id",
                (PrefetchState.REQUESTED, mountpoint),
            )
            ids = [int(r["id"]) for r in rows]
            if not ids:
                return []
            param = tx.dialect.list_param(ids)
            tx.execute(
                "UPDATE prefetches SET state = ?, owner_id = ?, started = ?, updated = ?"
                f" WHERE {tx.dialect.in_list('id')}",
                (PrefetchState.RUNNING, owner_id, now, now, param),
            )
            claimed = tx.all(
                f"SELECT * FROM prefetches WHERE {tx.dialect.in_list('id')} ORDER BY id", (param,)
            )
        return [_prefetch(r) for r in claimed]

    def prefetch_plan(self, prefetch_id: int, files: Sequence[tuple[str, int, int]]) -> None:
        """The files of a run, as (path, size, bytes already in the store): its totals, and a
        row per file. A file already complete counts as done."""
        with self._write() as tx:
            tx.execute("DELETE FROM prefetch_files WHERE prefetch_id = ?", (prefetch_id,))
            tx.executemany(
                "INSERT INTO prefetch_files (prefetch_id, path, size, state) VALUES (?,?,?,?)",
                [(prefetch_id, path, size, "done" if present >= size else "pending")
                 for path, size, present in files],
            )  # fmt: skip
            tx.execute(
                "UPDATE prefetches SET files_total = ?, files_done = ?, bytes_total = ?,"
                " bytes_done = ?, updated = ? WHERE id = ?",
                (len(files), sum(1 for _, size, present in files if present >= size),
                 sum(size for _, size, _ in files),
                 sum(max(0, min(size, present)) for _, size, present in files), time.time(),
                 prefetch_id),
            )  # fmt: skip

    def prefetch_progress(
        self, prefetch_id: int, *, bytes_done: int, bytes_fetched: int, current: str | None
    ) -> bool:
        """Where a run is (absolute figures); True when a cancel was asked (`prefetch_cancel`)."""
        with self._write() as tx:
            tx.execute(
                "UPDATE prefetches SET bytes_done = ?, bytes_fetched = ?, current = ?,"
                " updated = ? WHERE id = ?",
                (bytes_done, bytes_fetched, current, time.time(), prefetch_id),
            )
            return bool(tx.scalar("SELECT cancel FROM prefetches WHERE id = ?", (prefetch_id,)))

    def prefetch_file_done(
        self, prefetch_id: int, path: str, fetched: int, error: str | None = None
    ) -> None:
        """One file of a run ended: complete in the store, or failed with `error`."""
        state, counter = ("done", "files_done") if error is None else ("failed", "files_failed")
        with self._write() as tx:
            changed = tx.execute(
                "UPDATE prefetch_files SET state = ?, fetched = ?, error = ?"
                " WHERE prefetch_id = ? AND path = ? AND state = 'pending'",
                (state, fetched, error, prefetch_id, path),
            )
            if changed:
                tx.execute(
                    f"UPDATE prefetches SET {counter} = {counter} + 1, updated = ? WHERE id = ?",
                    (time.time(), prefetch_id),
                )

    def prefetch_finish(self, prefetch_id: int, state: str, error: str | None = None) -> None:
        assert state in PrefetchState.ENDED, state
        now = time.time()
        with self._write() as tx:
            tx.execute(
                "UPDATE prefetches SET state = ?, error = ?, current = NULL, ended = ?,"
                " updated = ? WHERE id = ?",
                (state, error, now, now, prefetch_id),
            )

    def prefetch_cancel(self, prefetch_id: int) -> bool:
        """Ask a run to stop (its runner stops at its next block, ending CANCELLED); one not
        taken up yet ends CANCELLED at once. False when it had ended already."""
        now = time.time()
        with self._write() as tx:
            if tx.execute(
                "UPDATE prefetches SET state = ?, cancel = 1, ended = ?, updated = ?"
                " WHERE id = ? AND state = ?",
                (PrefetchState.CANCELLED, now, now, prefetch_id, PrefetchState.REQUESTED),
            ):
                return True
            return bool(
                tx.execute(
                    "UPDATE prefetches SET cancel = 1 WHERE id = ? AND state = ?",
                    (prefetch_id, PrefetchState.RUNNING),
                )
            )

    def get_prefetch(self, prefetch_id: int) -> PrefetchRow | None:
        with self._read() as tx:
            row = tx.one("SELECT * FROM prefetches WHERE id = ?", (prefetch_id,))
        return _prefetch(row) if row else None

    def prefetches(
        self, *, session_id: str | None = None, ended_after: float | None = None
    ) -> list[PrefetchRow]:
        """Runs not ended, and those that ended after `ended_after` (None: every one)."""
        where, params = _running_or_since(session_id, "ended >", ended_after)
        with self._read() as tx:
            rows = tx.all(f"SELECT * FROM prefetches WHERE {where} ORDER BY id", params)
        return [_prefetch(r) for r in rows]

    def prefetch_files(self, prefetch_id: int) -> list[PrefetchFileRow]:
        with self._read() as tx:
            rows = tx.all(
                "SELECT * FROM prefetch_files WHERE prefetch_id = ? ORDER BY path",
                (prefetch_id,),
            )
        return [
            PrefetchFileRow(r["path"], int(r["size"]), r["state"], int(r["fetched"]), r["error"])
            for r in rows
        ]

    def record_failure(self, kind: str, key: str | None, cause: str, owner_id: str) -> None:
        with self._write() as tx:
            tx.execute(
                "INSERT INTO failures (time, kind, key, cause, owner_id) VALUES (?,?,?,?,?)",
                (time.time(), kind, key, cause, owner_id),
            )

    def evictions(self, limit: int) -> list[EvictionRow]:
        """The newest `limit` eviction records, newest first: the batches' and any per-entry
        rows of an older wtfs (`wtfs_index.schema`)."""
        rows: list[EvictionRow] = []
        with self._read() as tx:
            for r in tx.all("SELECT * FROM evictions ORDER BY id DESC LIMIT ?", (limit,)):
                rows.append(EvictionRow(r["key"], r["item_id"], r["path"], int(r["bytes"]),
                                        float(r["time"]), r["reason"], r["by_owner"]))  # fmt: skip
            oldest = _oldest_of_newest(tx, limit)
            left = limit
            for b in tx.all(
                "SELECT time, reason, by_owner, evicted FROM eviction_batches WHERE id >= ?"
                " ORDER BY id DESC",
                (oldest,),
            ):
                records = list(eviction_records(b["evicted"], left))
                rows += (EvictionRow(*r, float(b["time"]), b["reason"], b["by_owner"])
                         for r in records)  # fmt: skip
                left -= len(records)
        rows.sort(key=lambda r: r.time, reverse=True)  # stable: a batch keeps its order
        return rows[:limit]

    def eviction_count(self) -> int:
        with self._read() as tx:
            return int(
                tx.scalar(
                    "SELECT (SELECT COUNT(*) FROM evictions)"
                    " + (SELECT COALESCE(SUM(entries), 0) FROM eviction_batches) AS n"
                )
            )

    def failures(self, limit: int) -> list[FailureRow]:
        with self._read() as tx:
            rows = tx.all("SELECT * FROM failures ORDER BY id DESC LIMIT ?", (limit,))
        return [
            FailureRow(float(r["time"]), r["kind"], r["key"], r["cause"], r["owner_id"])
            for r in rows
        ]

    def totals(self) -> dict[str, int]:
        """Counters of every owner that ever used the store (the live ones' included)."""
        with self._read() as tx:
            totals = self._totals(tx)
            for row in tx.all("SELECT stats FROM owners"):
                for key, value in json.loads(row["stats"]).items():
                    totals[key] = totals.get(key, 0) + value
        return totals

    def prune_history(self, max_count: int, max_age_days: float) -> int:
        cutoff = time.time() - max_age_days * 86400
        ended = (int(TransferStatus.DONE), int(TransferStatus.FAILED))
        removed = 0
        with self._write() as tx:
            for table, column in (("transfers", "created"), ("evictions", "time"),
                                  ("failures", "time")):  # fmt: skip
                active = " AND status IN (?, ?)" if table == "transfers" else ""
                extra = ended if active else ()
                removed += tx.execute(
                    f"DELETE FROM {table} WHERE {column} < ?{active}", (cutoff, *extra)
                )
                newest_kept = tx.scalar(
                    f"SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?", (max_count,)
                )
                if newest_kept is not None:
                    removed += tx.execute(
                        f"DELETE FROM {table} WHERE id <= ?{active}", (newest_kept, *extra)
                    )
            removed += _prune_batches(tx, cutoff, max_count)
        return removed

    # -- meta --------------------------------------------------------------------------------

    def _totals(self, tx: Tx) -> dict[str, int]:
        saved = tx.scalar("SELECT v FROM meta WHERE k = 'totals'")
        totals: dict[str, int] = json.loads(saved) if saved else {}
        return totals

    def _keep_present_total(self, tx: Tx) -> None:
        """Sum the store's present bytes into `present_total` and make the triggers that keep
        it, unless an earlier opening did (`wtfs_index.schema.PRESENT_TOTAL_ROW`). Called in
        the write transaction that opens the index, after the tables are made."""
        if tx.all(PRESENT_TOTAL_ROW):
            for statement in present_total_triggers(tx.dialect.name):
                tx.execute(statement)

    def _set_meta(self, tx: Tx, key: str, value: str) -> None:
        tx.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, value),
        )

    def schema_version(self) -> int:
        with self._read() as tx:
            value = tx.scalar("SELECT v FROM meta WHERE k = 'schema_version'")
        return int(value or 0)


def droppable(ranges: Ranges, keep: Ranges, align: int, wanted: int) -> list[tuple[int, int]]:
    """Spans of `ranges` outside `keep`, about `wanted` bytes of them (rounded up to `align`).

    Order: behind every kept span first, oldest bytes first (what the slowest reader has read);
    then beyond every kept span, farthest first (read-ahead nobody needs yet); then the gaps
    between kept spans. A span is cut on the side away from the readers.
    """
    gaps = [gap for start, end in ranges for gap in keep.find_missing(start, end)]
    kept = list(keep)
    first = kept[0][0] if kept else 0
    last = kept[-1][1] if kept else 0
    behind = [g for g in gaps if kept and g[1] <= first] or ([] if kept else gaps)
    ahead = sorted((g for g in gaps if kept and g[0] >= last), reverse=True)
    between = [g for g in gaps if kept and g[1] > first and g[0] < last]
    chosen: list[tuple[int, int]] = []
    total = 0
    for side, spans in (("behind", behind), ("ahead", ahead), ("between", between)):
        for start, end in spans:
            if total >= wanted:
                return chosen
            room = -(-(wanted - total) // align) * align
            if end - start > room:
                start, end = (start, start + room) if side != "ahead" else (end - room, end)
            chosen.append((start, end))
            total += end - start
    return chosen


def _running_or_since(
    session_id: str | None, ended: str, ended_after: float | None
) -> tuple[str, list[Any]]:
    """The WHERE of a history listing: of one session (None: all), and only rows still running
    or whose end passes `ended` ("column op") against `ended_after` (None: every row)."""
    where, params = ["1=1"], list[Any]()
    if session_id is not None:
        where.append("session_id = ?")
        params.append(session_id)
    if ended_after is not None:
        column = ended.split()[0]
        where.append(f"({column} IS NULL OR {ended} ?)")
        params.append(ended_after)
    return " AND ".join(where), params


def _shrink(tx: Tx, key: str, row: Row, ranges: Ranges, reason: str, by_owner: str) -> None:
    """Set entry `key`'s ranges to fewer than `row` (its `present`, `item_id`, `path`) had,
    and record the bytes dropped as an eviction (`wtfs status` shows why they went)."""
    tx.execute(
        "UPDATE entries SET ranges = ?, present = ?, complete = 0, gen = gen + 1 WHERE key = ?",
        (ranges.to_json(), ranges.total, key),
    )
    dropped = int(row["present"]) - ranges.total
    record_evictions(tx, [(key, row["item_id"], row["path"], dropped)], reason, by_owner)


def record_evictions(
    tx: Tx, records: Sequence[tuple[str, str, str, int]], reason: str, by_owner: str
) -> None:
    """One `eviction_batches` row for `records` ((key, item_id, path, bytes), least recently
    used first), stored the other way round, so that `eviction_records` reads the newest
    without decoding the rest."""
    tx.write(
        "INSERT INTO eviction_batches (time, reason, by_owner, entries, bytes, evicted)"
        " VALUES (?,?,?,?,?,?)",
        (time.time(), reason, by_owner, len(records), sum(r[3] for r in records),
         json.dumps(records[::-1], separators=(",", ":"))),
    )  # fmt: skip


def _oldest_of_newest(tx: Tx, count: int, since: float = 0.0) -> int:
    """The id of the oldest of the newest eviction batches (made at `since` or later) that hold
    `count` records between them; 0 when all of them hold fewer."""
    oldest = tx.scalar(
        "SELECT id FROM (SELECT id, SUM(entries) OVER (ORDER BY id DESC) AS seen"
        " FROM eviction_batches WHERE time >= ?) newest WHERE seen >= ? ORDER BY id DESC LIMIT 1",
        (since, count),
    )
    return 0 if oldest is None else int(oldest)


def _prune_batches(tx: Tx, cutoff: float, max_count: int) -> int:
    """Drop eviction batches older than `cutoff`, and those older than the newest that hold
    `max_count` records (a batch is kept or dropped whole); the records they held."""
    oldest_kept = _oldest_of_newest(tx, max_count, cutoff)
    where, params = "(time < ? OR id < ?)", (cutoff, oldest_kept)
    removed = int(
        tx.scalar(
            f"SELECT COALESCE(SUM(entries), 0) AS n FROM eviction_batches WHERE {where}", params
        )
    )
    tx.execute(f"DELETE FROM eviction_batches WHERE {where}", params)
    return removed


_BETWEEN = re.compile(r"[\s,]*")


def eviction_records(text: str, limit: int) -> Iterator[tuple[str, str, str, int]]:
    """The first `limit` records of a batch's `evicted`, decoded one by one: a pass's batch
    holds tens of thousands (megabytes of JSON), and `wtfs status` shows a few."""
    decoder = json.JSONDecoder()
    at = text.index("[") + 1
    for _ in range(limit):
        at = _BETWEEN.match(text, at).end()  # type: ignore[union-attr]  # it matches ""
        if text.startswith("]", at):
            return
        (key, item_id, path, size), at = decoder.raw_decode(text, at)
        yield str(key), str(item_id), str(path), int(size)


def _ranges(row: Row) -> Ranges:
    return Ranges.from_json(row["ranges"], int(row["gen"]))


def _judge(row: Row, me: Owner) -> bool:
    return me.judges_alive(
        boot=row["boot_id"],
        pidns=row["pidns"],
        pid=row["pid"],
        pid_start=row["pid_start"],
        lease_fresh=bool(row["fresh"]),
    )


_CASTS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": bool}


_Casts = tuple[tuple[str, Callable[[Any], Any] | None, bool], ...]
_casts_of: dict[type[Any], _Casts] = {}


def _casts(cls: type[Any]) -> _Casts:
    """(field, cast, nullable) for each field of a record class, from its annotation: the
    backends return integers, doubles and SQLite's 0/1 booleans in their own types."""
    found = _casts_of.get(cls)
    if found is None:
        spelled = [(f.name, str(f.type)) for f in dataclasses.fields(cls)]
        found = _casts_of[cls] = tuple(
            (name, _CASTS.get(kind.removesuffix(" | None")), kind.endswith(" | None"))
            for name, kind in spelled
        )
    return found


def _record(cls: type[R], row: Row, **computed: Any) -> R:
    """A record from a row whose columns are named as its fields, each cast to its annotated
    type; `computed` holds the fields that are not plain columns."""
    values = dict(computed)
    for name, cast, nullable in _casts(cls):
        if name in values:
            continue
        value = row[name]
        values[name] = value if cast is None or (nullable and value is None) else cast(value)
    return cls(**values)


def _owner(row: Row, me: Owner) -> OwnerRow:
    return _record(OwnerRow, row, stats=json.loads(row["stats"]), alive=_judge(row, me))


def _lock(row: Row, me: Owner) -> LockRow:
    if row["expires"] is not None:
        alive = bool(row["own_fresh"])
    elif row["host"] is None:
        alive = False  # its owner row is gone
    else:
        alive = _judge(row, me)
    return _record(LockRow, row, alive=alive)


def _entry(row: Row) -> EntryRow:
    return _record(EntryRow, row, ranges=_ranges(row), unlink=None)


def _transfer(row: Row) -> TransferRow:
    return _record(TransferRow, row)


def _prefetch(row: Row) -> PrefetchRow:
    return _record(PrefetchRow, row, paths=list(json.loads(row["paths"])))
