"""The PostgreSQL harness itself (tests/support/postgres.py), on a real server: what the index
tests will rely on. The session server is stopped, killed and started again here."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support.postgres import PostgresServer


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_the_url_connects_as_wtfs_with_a_real_password(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    parts = urlsplit(postgres_url)
    assert (parts.scheme, parts.hostname) == ("postgresql", "127.0.0.1")
    assert parts.port == postgres_server.port
    assert parts.username == "wtfs"
    assert parts.password == postgres_server.password
    assert len(postgres_server.password) >= 24
    assert postgres_server.password not in repr(postgres_server)
    with psycopg.connect(postgres_url) as conn:
        user, database, superuser = conn.execute(
            "SELECT current_user, current_database(), usesuper FROM pg_user"
            " WHERE usename = current_user"
        ).fetchone() or (None, None, None)
        assert (user, database, superuser) == ("wtfs", database_of(postgres_url), False)
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, v bigint)")
        conn.execute("INSERT INTO t VALUES ('a', 1)")
        assert conn.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == (1,)


def test_a_wrong_password_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    wrong = postgres_server.url_for(database_of(postgres_url), password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
    # The superuser is not reachable over TCP either, whatever the password.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=postgres_server.port,
            user="postgres",
            password=postgres_server.password,
            dbname="postgres",
            connect_timeout=5,
        )


def test_data_survives_a_restart(postgres_server: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    port = postgres_server.port
    postgres_server.restart()
    assert postgres_server.port == port
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*), sum(v) FROM t").fetchone() == (1000, 500500)


def test_committed_data_survives_a_kill(postgres_server: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (2)")  # never committed
        postgres_server.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.commit()
    postgres_server.start_again()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT array_agg(v) FROM t").fetchone() == ([1],)


def test_connections_fail_while_stopped_and_work_after_start(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as open_conn:
        assert open_conn.execute("SELECT 1").fetchone() == (1,)
        postgres_server.stop()
        assert not postgres_server.running
        with pytest.raises(psycopg.OperationalError):
            open_conn.execute("SELECT 1")  # its session was ended by the shutdown
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=5)
    postgres_server.start_again()
    assert postgres_server.running
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_start_again_on_a_taken_port_fails_with_the_server_log(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    postgres_server.stop()
    with socket.socket() as squatter:
        # (the connections just ended leave TIME_WAIT sockets on the port)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", postgres_server.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="did not start again") as failure:
            postgres_server.start_again()
        assert "could not bind" in str(failure.value)
        assert not postgres_server.running
    postgres_server.start_again()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_new_databases_are_isolated(postgres_server: PostgresServer) -> None:
    first = postgres_server.new_database("isolation_first")
    second = postgres_server.new_database("isolation_second")
    try:
        assert database_of(first) != database_of(second)
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE only_here (v int)")
            conn.execute("INSERT INTO only_here VALUES (1)")
        with psycopg.connect(second) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
            conn.execute("CREATE TABLE only_here (v int)")  # no clash either
            assert conn.execute("SELECT count(*) FROM only_here").fetchone() == (0,)
        with pytest.raises(psycopg.errors.DuplicateDatabase):
            postgres_server.new_database("isolation_first")
    finally:
        postgres_server.drop_database("isolation_first")
        postgres_server.drop_database("isolation_second")
