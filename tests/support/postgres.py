"""A real PostgreSQL 15 server on loopback, started by the tests themselves.

    with running_postgres(tmp_path) as server:
        url = server.new_database("mytest")   # postgresql://wtfs:PASSWORD@127.0.0.1:PORT/mytest
        with psycopg.connect(url) as conn: ...
        server.stop()          # fast shutdown: clients lose their connections, new ones fail
        server.start_again()   # same data, same port, same password

or use the `postgres_server` (session) and `postgres_url` (one fresh database per test)
fixtures of `tests/conftest.py`.

`PostgresServer.start(workdir)` runs `initdb` and `pg_ctl` as the `postgres` user (PostgreSQL
refuses to run as root), so it needs root and Debian's `postgresql-15` (`scripts/bootstrap test`
installs it). The cluster lives in a directory made with `tempfile` and chowned to postgres,
because pytest's own temporary directories are root's and closed to other users; `close()`
copies the server log to `workdir/postgresql.log` and removes that directory. If the server
cannot start, `start()` raises `RuntimeError` with the server log; it never skips.

The server listens on 127.0.0.1 only, on a free port, and asks every TCP client for a
password (scram-sha-256). The role `wtfs` (LOGIN, not a superuser) has a random password and
owns the database `wtfs` and every database made by `new_database()`. The superuser `postgres`
only connects through the Unix socket in the cluster's directory (mode 0700: root and postgres
alone may use it), which the harness uses for its own administration. `fsync` is off: a
committed transaction survives any stop or kill of the server (commits still wait for their WAL
to reach the kernel), not a crash of the machine.

API:
- `PostgresServer.start(workdir, *, timeout=30.0) -> PostgresServer`: initdb + start.
- `.url` (the `wtfs` database), `.host`, `.port`, `.user`, `.password`, `.log`, `.root`.
- `.url_for(database, *, password=None)`: a URL for `database`, e.g. with a wrong password.
- `.new_database(name=None) -> str`: create a fresh empty database owned by `wtfs` (name
  generated if not given) and return its URL. `.drop_database(name)` drops one (`FORCE`:
  connections still open are terminated).
- `.stop()`: fast shutdown, waits until the server is gone. `.kill()`: immediate shutdown (no
  checkpoint; the next start runs crash recovery), waits too. `.start_again()`: start a
  stopped or killed server with its data, port and password. `.restart()`: stop + start_again.
  `.running`: whether the harness started it and has not stopped it since.
- `.close()`: stop if running, keep the log, remove the cluster; idempotent.
- `.log_text()`: the server log so far.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"  # the system user that owns and runs the cluster
ROLE = "wtfs"  # the role tests connect as (password authentication)
HOST = "127.0.0.1"

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster run by the harness (see the module docstring)."""

    def __init__(self, workdir: Path, root: Path, port: int, password: str) -> None:
        self.workdir = workdir
        self.root = root  # owned by postgres: data/, socket/, postgresql.log
        self.port = port
        self.password = password
        self.host = HOST
        self.user = ROLE
        self.running = False
        self._timeout = 30.0
        self._names = itertools.count(1)

    # ---- paths and URLs -------------------------------------------------------------------

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgresql.log"

    @property
    def url(self) -> str:
        return self.url_for(ROLE)

    def url_for(self, database: str, *, password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{ROLE}:{secret}@{HOST}:{self.port}/{quote(database, safe='')}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"

    def __repr__(self) -> str:  # never the password
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {HOST}:{self.port} {state} in {self.root}>"

    # ---- life cycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: str | os.PathLike[str], *, timeout: float = 30.0) -> PostgresServer:
        """initdb a new cluster, start it on a free port, create the `wtfs` role and database.
        The caller must `close()` it (or use `running_postgres`)."""
        for tool in ("initdb", "pg_ctl"):
            if not os.access(PG_BIN / tool, os.X_OK):
                raise RuntimeError(
                    f"{PG_BIN / tool} is missing: run `bash scripts/bootstrap test` "
                    "(it installs Debian's postgresql-15)"
                )
        if os.geteuid() != 0:
            raise RuntimeError("the PostgreSQL harness needs root (it runs the server as postgres)")
        try:
            owner = pwd.getpwnam(OS_USER)
        except KeyError:
            raise RuntimeError(f"no {OS_USER} user: is postgresql-15 installed?") from None
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        # /tmp (or $TMPDIR) is open to postgres; pytest's directories are not (mode 0700).
        root = Path(tempfile.mkdtemp(prefix="wtfs-pg-"))
        os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(workdir, root, _free_port(), secrets.token_urlsafe(24))
        server._timeout = timeout
        try:
            server._initdb()
            for _ in range(5):  # another process may take the free port before the server
                server._write_port()
                if server._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", str(server.log)):
                    server.running = True
                    break
                if "could not bind" not in server.log_text():
                    break
                server.port = _free_port()
            if not server.running:
                raise RuntimeError(f"PostgreSQL did not start; its log:\n{server.log_text()}")
            with server._admin() as conn:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(ROLE), sql.Literal(server.password)
                    )
                )
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(ROLE), sql.Identifier(ROLE)
                    )
                )
        except BaseException:
            server.close()
            raise
        return server

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, the server checkpoints and exits."""
        self._shutdown("fast")

    def kill(self) -> None:
        """Immediate shutdown: every server process quits at once, no checkpoint."""
        self._shutdown("immediate")

    def start_again(self) -> None:
        """Start the stopped cluster: same data, port and password."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        if not self._pg_ctl("start", "-w", "-t", str(int(self._timeout)), "-l", str(self.log)):
            raise RuntimeError(f"PostgreSQL did not start again; its log:\n{self.log_text()}")
        self.running = True

    def restart(self) -> None:
        self.stop()
        self.start_again()

    def close(self) -> None:
        """Stop the server if it runs, copy its log into `workdir`, remove the cluster."""
        if not self.root.exists():
            return
        try:
            if self.running or (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-w", "-t", str(int(self._timeout)), "-m", "fast")
                self.running = False
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log, self.workdir / "postgresql.log")
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- databases ------------------------------------------------------------------------

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database owned by `wtfs`; return its URL (with the password)."""
        if name is None:
            name = f"db{next(self._names)}"
        if not _NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits, _ (≤ 63)")
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # ---- internals ------------------------------------------------------------------------

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as postgres, in a directory postgres may enter."""
        return subprocess.run(
            ["runuser", "-u", OS_USER, "--", *argv],
            cwd=self.root,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self._timeout + 10,
            check=False,
        )

    def _pg_ctl(self, *args: str) -> bool:
        result = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args)
        if result.returncode != 0:
            self._note(f"pg_ctl {' '.join(args)}: exit {result.returncode}\n{result.stdout}")
            self._note(result.stderr)
        return result.returncode == 0

    def _note(self, text: str) -> None:
        """Append the harness's own words to the server log (which stays postgres's)."""
        owner = pwd.getpwnam(OS_USER)
        with open(self.log, "a") as log:
            log.write("".join(f"[harness] {line}\n" for line in text.splitlines()))
        os.chown(self.log, owner.pw_uid, owner.pw_gid)

    def _initdb(self) -> None:
        result = self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            OS_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")
        self._run("mkdir", "-m", "0700", str(self.socket_dir)).check_returncode()
        # Our own rules, replacing initdb's: the superuser through the socket only, and every
        # TCP client with a password.
        self._write_as_postgres(
            self.data / "pg_hba.conf",
            f"local all {OS_USER} trust\nhost all all {HOST}/32 scram-sha-256\n",
        )
        self._write_as_postgres(
            self.data / "conf.d" / "harness.conf",
            "\n".join(
                [
                    f"listen_addresses = '{HOST}'",
                    f"unix_socket_directories = '{self.socket_dir}'",
                    "password_encryption = 'scram-sha-256'",
                    "fsync = off",
                    "full_page_writes = off",
                    "shared_buffers = 32MB",
                    "log_line_prefix = '%m [%p] %q%u@%d '",
                    "",
                ]
            ),
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_dir = 'conf.d'\ninclude_if_exists = 'port.conf'\n")

    def _write_port(self) -> None:
        self._write_as_postgres(self.data / "port.conf", f"port = {self.port}\n")

    def _write_as_postgres(self, path: Path, text: str) -> None:
        owner = pwd.getpwnam(OS_USER)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chown(path.parent, owner.pw_uid, owner.pw_gid)
        path.write_text(text)
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(0o600)

    def _shutdown(self, mode: str) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        if not self._pg_ctl("stop", "-w", "-t", str(int(self._timeout)), "-m", mode):
            raise RuntimeError(f"pg_ctl stop -m {mode} failed; the log:\n{self.log_text()}")
        self.running = False

    @contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A superuser connection through the Unix socket, in autocommit mode."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=OS_USER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            yield conn


@contextmanager
def running_postgres(
    workdir: str | os.PathLike[str], *, timeout: float = 30.0
) -> Iterator[PostgresServer]:
    """A `PostgresServer` that is stopped and removed on exit, whatever happens."""
    server = PostgresServer.start(workdir, timeout=timeout)
    try:
        yield server
    finally:
        server.close()
