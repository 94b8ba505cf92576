"""The shared backend: one PostgreSQL database for a store that several hosts use.

The queries are the ones `base.Index` states for both backends. What differs:
- writers are serialised by a transaction-scoped advisory lock (`pg_advisory_xact_lock`), so
  every write transaction is as exclusive as SQLite's `BEGIN IMMEDIATE`, across all nodes;
- reads see one snapshot (REPEATABLE READ), as SQLite's read transactions do; writes stay READ
  COMMITTED, so each statement after the advisory lock sees every write committed before it;
- time comes from the server (`clock_timestamp()`), so leases expire by one clock whatever
  the nodes' clocks say; and no lease counts as run out within one lease of the server's own
  start (`pg_postmaster_start_time()`), so a restart of PostgreSQL does not make every owner
  that could not renew meanwhile look dead;
- a lost connection is `IndexUnavailable` (worth retrying); the next call connects again;
- a write waits at most `timeout` for another one (then `IndexUnavailable`, as SQLite's busy
  timeout), and the server ends a session whose transaction sat idle that long (a process
  stopped mid-transaction), so no stopped process holds every writer of every host.
The URL's password never appears in a message (`redact`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

from wtfs_index.base import DEFAULT_LEASE, SCHEMA_VERSION, Dialect, Index, Tx
from wtfs_index.errors import IndexFailure, IndexRefused, IndexUnavailable
from wtfs_index.schema import statements

#: the advisory lock key that serialises writers (one store per database)
WRITE_LOCK = 0x77746673  # "wtfs"
CONNECT_TIMEOUT = 5  # seconds
#: how each transaction begins: sent with its first statement (`PostgresTx`)
_BEGIN_WRITE = (
    "BEGIN ISOLATION LEVEL READ COMMITTED",
    f"SELECT pg_advisory_xact_lock({WRITE_LOCK})",
)
_BEGIN_READ = ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",)
#: names of server-side cursors (`PostgresTx.chunks`), unique within a connection
_cursors = itertools.count()


class PostgresDialect(Dialect):
    name = "postgresql"
    now = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
    greatest = "GREATEST"
    #: the column types `wtfs_index.schema` leaves to the backend
    types: ClassVar[Mapping[str, str]] = {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "real": "DOUBLE PRECISION",
        "big": "BIGINT",
        "small": "SMALLINT",
    }

    def __init__(self, lease: float) -> None:
        self.lease = lease

    def fresh(self, column: str) -> str:
        started = "EXTRACT(EPOCH FROM pg_postmaster_start_time())::double precision"
        return f"({column} > {self.now} OR {self.now} < {started} + {float(self.lease)!r})"

    def translate(self, sql: str) -> str:
        return super().translate(sql).replace("%", "%%").replace("?", "%s")

    def in_list(self, column: str) -> str:
        return f"{column} = ANY(?)"

    def list_param(self, values: Sequence[Any]) -> Any:
        return list(values)

    def next_id(self, table: str) -> str | None:
        return f"nextval(pg_get_serial_sequence('{table}', 'id'))"

    explicit_id = " OVERRIDING SYSTEM VALUE"


class Prepared:
    """The statements `PostgresTx` prepared on one connection (`PREPARE`, which lasts as long
    as the session): text as `PostgresDialect.translate` gives it -> name."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self._numbers = itertools.count()

    def new_name(self, text: str) -> str:
        name = self.names[text] = f"wtfs_{next(self._numbers)}"
        return name

    def keep_only(self, existing: set[str]) -> None:
        """After a failed transaction: a PREPARE sent in it may not have taken."""
        self.names = {text: name for text, name in self.names.items() if name in existing}


def _numbered(text: str) -> str:
    """psycopg's `%s` placeholders as PREPARE's `$1`, `$2`, ... (and `%%` as `%`)."""
    parts, n, i = [], 0, 0
    while (k := text.find("%", i)) >= 0:
        parts.append(text[i:k])
        if text.startswith("%%", k):
            parts.append("%")
        else:
            n += 1
            parts.append(f"${n}")
        i = k + 2
    parts.append(text[i:])
    return "".join(parts)


class PostgresTx(Tx):
    """Writes nobody reads the outcome of wait, and go with the next statement, in one simple
    query: a commit's DELETE and UPDATEs, the next claim's INSERT and COMMIT cost one round
    trip, not four (each costs 80-110 µs on loopback, and a fetch makes a transaction per
    block). BEGIN and the write lock wait the same way for the transaction's first
    statement. A simple query cannot carry parameters, so each statement in one is an EXECUTE
    of a statement prepared once per connection, its values bound on the client by psycopg:
    parsing and planning them on every call cost more than the round trips saved (~50 µs a
    statement, more for a reservation's)."""

    def __init__(self, conn: psycopg.Connection[Any], dialect: Dialect, cache: dict[str, str],
                 prepared: Prepared, begin: tuple[str, ...]) -> None:  # fmt: skip
        # `chunks` reads on a server-side cursor, `batch` rows a round trip: a client-side one
        # receives the whole result at once, so a GC pass that stops at 47,000 of 100,000
        # entries had the server find and send, and the client take, all of them (its walk:
        # 90-155 ms, against 55-90 ms on a server-side cursor)
        super().__init__(conn.cursor(), dialect, cache, lambda: conn.cursor(
            name=f"wtfs_chunks_{next(_cursors)}", row_factory=tuple_row))  # fmt: skip
        self._binder = psycopg.ClientCursor(conn)
        self._prepared = prepared
        self._pending = list(begin)  # statements, one each

    def _bound(self, sql: str, params: Sequence[Any]) -> list[str]:
        text = self._sql(sql)
        statements = []
        name = self._prepared.names.get(text)
        if name is None:
            name = self._prepared.new_name(text)
            statements.append(f"PREPARE {name} AS {_numbered(text)}")
        if params:
            args = ", ".join(["%s"] * len(params))
            statements.append(self._binder.mogrify(f"EXECUTE {name}({args})", tuple(params)))
        else:
            statements.append(f"EXECUTE {name}")
        return statements

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._pending += self._bound(sql, params)

    def _run(self, cursor: Any, sql: str, params: Sequence[Any]) -> None:
        if not self._pending:
            cursor.execute(self._sql(sql), tuple(params))
            return
        statements, self._pending = [*self._pending, *self._bound(sql, params)], []
        cursor.execute("; ".join(statements))  # no parameters: one simple query
        for _ in statements[1:]:
            cursor.nextset()  # to the result of `sql`, the last

    def flush(self) -> None:
        if self._pending:
            statements, self._pending = self._pending, []
            self._cursor.execute("; ".join(statements))

    def commit(self) -> None:
        self._pending.append("COMMIT")
        self.flush()


class PostgresIndex(Index):
    def __init__(self, url: str, *, timeout: float = 30.0, lease: float = DEFAULT_LEASE) -> None:
        """`timeout`: how long a write waits for another's to end (as SQLite's busy timeout),
        and how long the server lets a transaction of ours sit idle (a process stopped in the
        middle of one) before it ends the session, so that no writer holds the store for
        ever."""
        super().__init__(lease=lease)
        self.timeout = timeout
        from wtfs_index import redact

        self.url = url
        self._shown = redact(url)
        self.dialect = PostgresDialect(lease)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._prepared = Prepared()
        with self._write() as tx:
            exists = tx.scalar("SELECT to_regclass('meta') IS NOT NULL")
            version = (
                int(tx.scalar("SELECT v FROM meta WHERE k = 'schema_version'") or 0)
                if (exists)
                else 0
            )
            if version > SCHEMA_VERSION:
                raise IndexRefused(
                    f"{self._shown}: index schema {version} is newer than this wtfs knows "
                    f"({SCHEMA_VERSION}); upgrade wtfs"
                )
            for statement in statements(self.dialect.types):
                tx.execute(statement)
            self._keep_present_total(tx)
            self._set_meta(tx, "schema_version", str(SCHEMA_VERSION))

    def describe(self) -> str:
        return self._shown

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                ms = max(1, int(self.timeout * 1000))
                self._prepared = Prepared()
                self._conn = psycopg.connect(
                    self.url,
                    connect_timeout=CONNECT_TIMEOUT,
                    row_factory=dict_row,
                    autocommit=True,  # `_transaction` begins and ends its own
                    options=f"-c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
                )
            except psycopg.Error as exc:
                raise self._failure(exc) from None
        return self._conn

    def _failure(self, exc: psycopg.Error, *, broken: bool = False) -> IndexFailure:
        from wtfs_index import url_secrets

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in url_secrets(self.url):
            text = text.replace(secret, "***")
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return IndexUnavailable(
                f"the index at {self._shown} stayed locked by another process for "
                f"{self.timeout:g} s ({text})"
            )
        if broken or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return IndexUnavailable(f"the index at {self._shown} cannot be reached: {text}")
        return IndexFailure(f"the index at {self._shown}: {text}")

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        """One transaction on a connection in autocommit mode: `PostgresTx` sends BEGIN, the
        advisory lock and COMMIT along with the statements, not as psycopg's BEGIN and COMMIT
        round trips of their own."""
        with self._lock:
            conn = self._connection()
            try:
                try:
                    # Writes: READ COMMITTED, so that each statement after the lock sees every
                    # write committed before it. Reads: one snapshot for every statement (READ
                    # COMMITTED takes one per statement: a summary read across an eviction's
                    # commit would count its bytes both as present and as unlinking).
                    tx = PostgresTx(conn, self.dialect, self._sql_cache, self._prepared,
                                    _BEGIN_WRITE if write else _BEGIN_READ)  # fmt: skip
                    yield tx
                    tx.commit()
                except BaseException:
                    # However it failed (the lock's timeout, a statement, our own code), the
                    # connection must not stay inside the transaction for the next call.
                    if not (conn.broken or conn.closed):
                        with suppress(psycopg.Error):
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                conn.execute("ROLLBACK")
                            # PREPARE is not undone by a rollback, and one may not have been
                            # sent or taken: the server says which are there.
                            rows = conn.execute("SELECT name FROM pg_prepared_statements")
                            self._prepared.keep_only({row["name"] for row in rows})
                    raise
            except psycopg.Error as exc:
                # A session the server ended (idle-in-transaction timeout, an administrator's
                # pg_terminate_backend) may raise another class: the connection says it broke.
                broken = conn.broken or conn.closed
                if broken or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._drop_connection()
                raise self._failure(exc, broken=broken) from None

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def _write(self) -> Any:
        return self._transaction(write=True)

    def _read(self) -> Any:
        return self._transaction(write=False)
