"""What only the PostgreSQL backend has: a server that may be down or restarting, leases judged
by the server's clock with a grace after its start, and a URL that holds a password."""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from wtfs_index import (
    Index,
    IndexBusy,
    IndexFailure,
    IndexRefused,
    IndexUnavailable,
    LockKind,
    Owner,
    Ranges,
    open_index,
    redact,
)
from wtfs_index.postgres import CONNECT_TIMEOUT, PostgresIndex

from tests.index.conftest import (
    backdate,
    filled,
    new_entry,
    new_transfer,
    past_server_grace,
    server_uptime,
)
from tests.support import owners
from tests.support.postgres import PostgresServer


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path) -> Index:
    index = open_index(postgres_url, tmp_path)
    yield index  # type: ignore[misc]
    index.close()


def every_text(exc: BaseException) -> str:
    """All a person could see of an exception and of the ones chained to it (a traceback's
    messages: its source lines are code, not data)."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen), *traceback.format_exception_only(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


def test_a_stopped_server_makes_the_index_unavailable_then_it_works_again_with_its_data(
    postgres_server: PostgresServer, pg: Index
) -> None:
    me = Owner.current("me")
    pg.register_owner(me, "mount")
    key = filled(pg, "k", 100, me).key
    postgres_server.stop()
    for _ in range(2):  # the connection it had, then a new one: both fail, neither hangs
        started = time.monotonic()
        with pytest.raises(IndexUnavailable) as info:
            pg.usage()
        assert time.monotonic() - started < CONNECT_TIMEOUT + 2
        assert "cannot be reached" in info.value.cause
        assert postgres_server.password not in every_text(info.value)
    postgres_server.start_again()
    assert pg.usage() == 100  # the next call connects again
    assert pg.get_entry(key).present == 100  # type: ignore[union-attr]
    assert [o.owner_id for o in pg.owners(me)] == [me.owner_id]


def test_no_lease_runs_out_within_one_lease_of_the_servers_start(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    """Owners that could not renew while the server was down are not all dead the moment it
    is back: leases get one lease of grace from the server's start."""
    lease = 3.0
    index = open_index(postgres_url, tmp_path, lease=lease)
    try:
        past_server_grace(index)
        me = Owner.current("me")
        foreign = owners.in_other_pidns("foreign")
        index.register_owner(foreign, "mount")
        pin = index.acquire_lock("item", "s", Owner.lease_only("girder"), kind=LockKind.HOLD,
                                 expires_in=lease)  # fmt: skip
        backdate(index, "owners", "expires", 60, owner_id="foreign")
        backdate(index, "locks", "expires", 60, id=pin)
        postgres_server.restart()
        with pytest.raises(IndexUnavailable):
            index.owners(me)  # the connection from before the restart is gone
        assert server_uptime(index) < lease - 0.5, "the restart took too long for this test"
        assert [o.alive for o in index.owners(me)] == [True]
        assert index.get_lock(pin, me).alive  # type: ignore[union-attr]
        assert index.reclaim_dead(me) == dict.fromkeys(
            ("owners", "locks", "claims", "transfers", "unlinking"), 0
        )
        time.sleep(max(0.0, lease - server_uptime(index)) + 0.2)
        assert [o.alive for o in index.owners(me)] == [False]
        assert not index.get_lock(pin, me).alive  # type: ignore[union-attr]
        counts = index.reclaim_dead(me)
        assert (counts["owners"], counts["locks"]) == (1, 1)
    finally:
        index.close()


def urls_with_the_password(server: PostgresServer, database: str) -> dict[str, str]:
    base = urlsplit(server.url_for(database))
    host = f"{server.host}:{server.port}"
    return {
        "in-netloc": server.url_for(database),
        "in-query": f"postgresql://{server.user}@{host}/{database}?password={server.password}",
        "multi-host": f"postgresql://{server.user}:{server.password}@127.0.0.1:1,{host}{base.path}",
    }


@pytest.mark.parametrize("form", ["in-netloc", "in-query", "multi-host"])
def test_the_password_never_shows_in_describe_or_in_any_failure(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path, form: str
) -> None:
    secret = postgres_server.password
    database = urlsplit(postgres_url).path.lstrip("/")
    url = urls_with_the_password(postgres_server, database)[form]
    index = open_index(url, tmp_path)
    try:
        assert index.usage() == 0  # a working URL of that form
        shown = index.describe()
        assert secret not in shown and "***" in shown
        assert redact(url) == shown
        postgres_server.stop()
        with pytest.raises(IndexUnavailable) as info:
            index.usage()
        assert secret not in every_text(info.value)
    finally:
        index.close()
        if not postgres_server.running:
            postgres_server.start_again()


def test_a_wrong_password_or_a_bad_url_fails_without_showing_the_password(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    database = urlsplit(postgres_url).path.lstrip("/")
    wrong = "not-the-password-0123456789"
    bad = {
        "wrong password": postgres_server.url_for(database, password=wrong),
        "port": f"postgresql://wtfs:{wrong}@127.0.0.1:notaport/{database}",
        "option": f"postgresql://wtfs:{wrong}@127.0.0.1:{postgres_server.port}/x?bogus=1",
    }
    for what, url in bad.items():
        with pytest.raises(IndexFailure) as info:
            open_index(url, tmp_path)
        assert wrong not in every_text(info.value), what
        assert postgres_server.password not in every_text(info.value), what


def test_an_unknown_scheme_is_refused_naming_index_url(tmp_path: Path) -> None:
    with pytest.raises(IndexRefused) as info:
        open_index("mysql://wtfs:hunter2-secret@db.example/wtfs", tmp_path)
    assert info.value.cause.startswith("index_url: ")
    assert "mysql" in info.value.cause and "hunter2-secret" not in every_text(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://wtfs:s3cret@db:5432/wtfs", "postgresql://wtfs:***@db:5432/wtfs"),
        ("postgresql://wtfs:p%40ss:w@db/wtfs", "postgresql://wtfs:***@db/wtfs"),
        ("postgresql://wtfs@db/wtfs?password=s3cret&sslmode=require",
         "postgresql://wtfs@db/wtfs?password=***&sslmode=require"),
        ("postgresql://wtfs:s3cret@h1:5432,h2:5433/wtfs",
         "postgresql://wtfs:***@h1:5432,h2:5433/wtfs"),
        ("postgresql://wtfs:s3cret@[::1]:5432/wtfs", "postgresql://wtfs:***@[::1]:5432/wtfs"),
        ("postgresql://wtfs@db/wtfs", "postgresql://wtfs@db/wtfs"),
        ("postgresql:///wtfs?host=/run/postgresql", "postgresql:///wtfs?host=/run/postgresql"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_writer_stopped_mid_transaction_holds_no_other_writer_for_ever(
    postgres_url: str,
) -> None:
    """A process stopped inside a write transaction (SIGSTOP, a hung node) holds the store's
    write lock: another writer waits at most its timeout, then gets IndexUnavailable (as with
    SQLite's busy timeout), and the server ends the idle transaction after the holder's own
    timeout, which frees every writer."""
    holder = PostgresIndex(postgres_url, timeout=1.5)
    impatient = PostgresIndex(postgres_url, timeout=0.5)
    patient = PostgresIndex(postgres_url, timeout=20)
    me = Owner.current("me")
    inside, resume = threading.Event(), threading.Event()
    holder_failure: list[BaseException] = []

    def stopped_writer() -> None:
        try:
            with holder._write() as tx:
                tx.one("SELECT 1")  # BEGIN and the lock go with the first statement
                inside.set()
                resume.wait(20)  # "stopped": sends nothing while in the transaction
        except IndexFailure as exc:
            holder_failure.append(exc)

    thread = threading.Thread(target=stopped_writer)
    thread.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        with pytest.raises(IndexUnavailable, match="locked by another process"):
            impatient.register_owner(me, "mount")
        assert time.monotonic() - started < 3
        patient.register_owner(me, "mount")  # once the server ended the holder's session
        assert time.monotonic() - started < 10
        assert [o.owner_id for o in patient.owners(me)] == [me.owner_id]
        resume.set()
        thread.join()
        # The holder learns its session was ended (worth retrying), and connects again.
        assert holder_failure and isinstance(holder_failure[0], IndexUnavailable)
        assert [o.owner_id for o in holder.owners(me)] == [me.owner_id]
    finally:
        resume.set()
        thread.join()
        for index in (holder, impatient, patient):
            index.close()


def test_no_call_is_quick_on_a_server(pg: Index) -> None:
    """Every call may wait for the server: none is made on a caller's event loop."""
    assert pg.quick_calls == frozenset()
    with pytest.raises(IndexBusy), pg.without_waiting():
        pass


def test_a_failed_statement_ends_its_transaction_and_the_connection_goes_on(pg: Index) -> None:
    """The connection runs in autocommit mode and the index sends BEGIN and COMMIT itself: a
    statement that fails must end its transaction (ROLLBACK), or every later call on the same
    connection would fail as 'current transaction is aborted'."""
    me = Owner.current("me")
    pg.register_owner(me, "mount")
    conn = pg._conn  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(IndexFailure), pg._write() as tx:
            tx.execute("DELETE FROM owners")
            tx.execute("SELECT no_such_column FROM entries")
    assert pg._conn is conn  # type: ignore[attr-defined]  # not dropped: a statement's error
    assert [o.owner_id for o in pg.owners(me)] == [me.owner_id]  # the DELETE was rolled back
    pg.unregister_owner(me.owner_id)
    assert pg.owners(me) == []


def test_a_deferred_write_that_fails_fails_its_transaction_at_commit(pg: Index) -> None:
    """Writes nobody reads wait for the next statement or COMMIT (`PostgresTx`): one that
    fails there fails the whole transaction, and what the others wrote is rolled back."""
    me = Owner.current("me")
    pg.register_owner(me, "mount")
    with pytest.raises(IndexFailure, match="no_such_table"), pg._write() as tx:
        tx.write("DELETE FROM owners")
        tx.write("INSERT INTO no_such_table VALUES (1)")
    assert [o.owner_id for o in pg.owners(me)] == [me.owner_id]


def test_a_streaming_runs_commit_and_next_claim_take_two_round_trips(
    pg: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run commits each block and claims the next in one transaction: BEGIN, the lock and
    one SELECT of the entry and of what the claim depends on (which draws the claim's id) go
    together, then the commit's writes, the claim's INSERT and COMMIT (each round trip costs
    80-110 µs on loopback, per 4 MiB block; it was eight, then four, then three)."""
    me = Owner.current("me")
    pg.register_owner(me, "mount")
    filled(pg, "other", 10, me)  # a store that holds something
    key = new_entry(pg, "k", 300).key
    transfer = new_transfer(pg, me, key=key)
    first = pg.reserve(key, 0, 100, me, 1000).claim_id
    assert first is not None
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    ranges, following = pg.commit_and_reserve(
        first, key, 0, 100, (transfer, 100), next_end=200, owner=me, capacity=1000
    )
    monkeypatch.undo()
    assert following.claim_id is not None and ranges == Ranges([(0, 100)])
    assert len(sent) == 2, sent
    assert sent[0].startswith("BEGIN") and sent[-1].endswith("COMMIT")
    assert [t.transferred for t in pg.transfers()] == [100]
    # the claim went with the COMMIT, under the id the answer named
    [claim] = pg.claims(key=key)
    assert (claim.id, claim.start, claim.end) == (following.claim_id, 100, 200)
    assert following.claim_id > first


def test_statements_prepared_in_a_failed_transaction_are_known_as_the_server_knows_them(
    pg: Index,
) -> None:
    """`PostgresTx` prepares each statement it batches once per connection, and PREPARE is
    not undone by a rollback: after a failure, the index must neither EXECUTE a statement
    whose PREPARE was never sent, nor forget one the server kept."""
    me = Owner.current("me")
    pg.register_owner(me, "mount")
    key = new_entry(pg, "k", 300).key
    first = pg.reserve(key, 0, 100, me, 1000).claim_id
    assert first is not None
    with pytest.raises(RuntimeError), pg._write() as tx:  # never sent: our own code failed
        tx.write("UPDATE entries SET atime = ? WHERE key = ?", (1.0, key))
        tx.write("DELETE FROM claims WHERE id = ?", (first,))
        raise RuntimeError("before anything went out")
    with pytest.raises(IndexFailure), pg._write() as tx:  # sent: the PREPAREs took, then fail
        tx.write("UPDATE entries SET atime = ? WHERE key = ?", (2.0, key))
        tx.one("SELECT no_such_column FROM entries")
    assert [c.id for c in pg.claims()] == [first]
    assert pg.commit_range(first, key, 0, 100) == Ranges([(0, 100)])
    assert pg.claims() == []
