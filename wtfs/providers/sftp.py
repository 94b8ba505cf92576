"""SFTP sources (`sftp://user@host:port/path`) through asyncssh, driven from trio.

asyncssh only runs on asyncio, wtfs runs on trio. Each provider owns one private asyncio event
loop on a trio-cached worker thread (`trio.lowlevel.start_thread_soon`: not tied to a task,
since the loop outlives any single fetch). All asyncssh objects live on that loop and are only
touched by coroutines submitted with `asyncio.run_coroutine_threadsafe`; trio waits for the
resulting future through `TrioToken.run_sync_soon` (no thread blocked per call) and cancels it
when the trio side is cancelled. Errors are mapped to `WtfsError` on the asyncio side, so trio
code only ever sees the wtfs hierarchy.

One SSH connection (and one SFTP session on it) per (user, host, port), reused by every fetch;
a connection that times out or drops is discarded, and the next attempt reconnects.

Options (`settings.options["sftp"]`): `key_file` (private key; asyncssh's default keys when
absent), `key_passphrase`, `username` (when the URL has none), `known_hosts` (a file; without
it the host key cannot be checked and connections are refused unless
`insecure_skip_host_key_check: true`), `max_outstanding` (1 MiB reads in flight per fetch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import getpass
import importlib
import logging
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import trio

from wtfs.errors import (
    AccessDenied,
    NotFound,
    SizeMismatch,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.providers.base import (
    Provider,
    ProviderSettings,
    Sink,
    Source,
    check_range,
    check_size,
)
from wtfs.providers.urls import describe

if TYPE_CHECKING:
    import outcome

    from wtfs.girder.client import GirderClient

log = logging.getLogger(__name__)


class _OnFirstUse:
    """A module imported when first used: asyncssh brings cryptography (~9 MiB resident)
    into every daemon that loads the providers, and only sftp sources need it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    import asyncssh
else:
    asyncssh = _OnFirstUse("asyncssh")

T = TypeVar("T")
CHUNK = 1024 * 1024


async def _wait(fut: concurrent.futures.Future[T]) -> T:
    """Await a future completed on another thread, without parking a thread on it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    finally:
        if not fut.done():
            fut.cancel()  # propagates to the asyncio task
    return fut.result()


class _AsyncioLoop:
    """A private asyncio event loop running on a trio-cached worker thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: trio.Event | None = None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            token = trio.lowlevel.current_trio_token()
            stopped = trio.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.run_forever()

            def deliver(result: outcome.Outcome[None]) -> None:
                try:
                    result.unwrap()
                except BaseException as exc:
                    log.error("sftp asyncio loop crashed: %r", exc)
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(stopped.set)

            trio.lowlevel.start_thread_soon(run, deliver, name="wtfs-sftp-asyncio")
            self._loop, self._stopped = loop, stopped
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await _wait(self.submit(coro))

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None:
            return
        self._loop = self._stopped = None
        loop.call_soon_threadsafe(loop.stop)
        await stopped.wait()
        loop.close()


@dataclass(frozen=True)
class _Target:
    user: str
    host: str
    port: int
    path: str
    name: str  # for messages: no user, no credentials

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.user, self.host, self.port)


@dataclass
class _Session:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient


class SftpProvider(Provider):
    schemes = ("sftp",)
    supports_ranges = True

    def __init__(self, settings: ProviderSettings, girder: GirderClient | None = None) -> None:
        super().__init__(settings, girder)
        self._opts = dict(settings.options.get("sftp", {}))
        self._loop = _AsyncioLoop()
        # Only touched on the asyncio loop:
        self._sessions: dict[tuple[str, str, int], _Session] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._depth = max(1, int(self._opts.get("max_outstanding", 4)))

    # ---- trio side -------------------------------------------------------------------------

    def _target(self, source: Source) -> _Target:
        name = describe(source)
        try:
            parts = urlsplit(source.url)
            port = parts.port or 22
        except ValueError as exc:
            raise TransferFailed(f"{name}: invalid sftp URL") from exc
        if not parts.hostname:
            raise TransferFailed(f"{name}: sftp URL without a host")
        user = unquote(parts.username) if parts.username else self._opts.get("username")
        path = unquote(parts.path)
        if path.startswith("/~/"):
            path = path[3:]  # relative to the login directory
        if not path or path == "/":
            raise TransferFailed(f"{name}: sftp URL without a file path")
        return _Target(str(user or getpass.getuser()), parts.hostname, port, path, name)

    async def size(self, source: Source) -> int:
        target = self._target(source)
        return await self._loop.call(self._guard(target, self._stat(target)))

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        check_range(start, end)
        target = self._target(source)
        handle, size = await self._loop.call(self._guard(target, self._open(target)))
        pending: deque[tuple[int, int, concurrent.futures.Future[bytes]]] = deque()
        try:
            check_size(target.name, size, source, end)
            # Keep a few reads in flight so the link stays busy while the sink writes.
            ahead = start
            while ahead < end or pending:
                while ahead < end and len(pending) < self._depth:
                    n = min(CHUNK, end - ahead)
                    read = self._guard(target, self._read(target, handle, ahead, n))
                    pending.append((ahead, n, self._loop.submit(read)))
                    ahead += n
                offset, n, fut = pending.popleft()
                data = await _wait(fut)
                if len(data) != n:
                    got = offset + len(data)
                    raise SizeMismatch(f"{target.name}: file ended at byte {got} while being read")
                await sink.write(offset, data)
        finally:
            for _, _, fut in pending:
                fut.cancel()
            # Closing the remote handle is best effort and must not delay or fail the caller.
            self._loop.submit(self._close(handle))

    async def aclose(self) -> None:
        if not self._loop.running:
            return
        with trio.move_on_after(5, shield=True):
            try:
                await self._loop.call(self._close_all())
            finally:
                await self._loop.stop()

    # ---- asyncio side (run on the private loop only) ---------------------------------------

    async def _guard(self, target: _Target, work: Awaitable[T]) -> T:
        """Run `work` and turn any asyncssh or network failure into a `WtfsError`."""
        try:
            return await work
        except WtfsError:
            raise
        except asyncssh.PermissionDenied as exc:
            raise AccessDenied(
                f"{target.name}: SSH authentication as {target.user!r} failed ({exc.reason})"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise AccessDenied(
                f"{target.name}: host key not accepted by the configured known_hosts ({exc.reason})"
            ) from None
        except asyncssh.SFTPNoSuchFile:
            raise NotFound(f"{target.name}: no such file") from None
        except asyncssh.SFTPPermissionDenied:
            raise AccessDenied(f"{target.name}: permission denied by the SFTP server") from None
        except (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost) as exc:
            self._discard(target)
            raise TransientError(f"{target.name}: SFTP connection lost ({exc.reason})") from None
        except asyncssh.DisconnectError as exc:
            self._discard(target)
            raise TransientError(f"{target.name}: SSH disconnected ({exc.reason})") from None
        except asyncssh.SFTPError as exc:
            raise TransferFailed(f"{target.name}: SFTP error ({exc.reason})") from None
        except asyncssh.Error as exc:  # e.g. the server refuses the sftp subsystem
            raise TransferFailed(f"{target.name}: SSH error ({exc.reason})") from None
        except TimeoutError:
            self._discard(target)
            raise TransientError(f"{target.name}: SSH/SFTP operation timed out") from None
        except OSError as exc:
            self._discard(target)
            raise TransientError(
                f"{target.name}: cannot reach {target.host}:{target.port} "
                f"({exc.strerror or type(exc).__name__})"
            ) from None

    async def _session(self, target: _Target) -> asyncssh.SFTPClient:
        lock = self._connecting.setdefault(target.key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(target.key)
            if session is not None and not session.conn.is_closed():
                return session.sftp
            options = self._connect_options(target)
            conn = await asyncssh.connect(target.host, target.port, **options)
            try:
                sftp = await asyncio.wait_for(
                    conn.start_sftp_client(), self.settings.connect_timeout
                )
            except BaseException:
                conn.close()
                raise
            self._sessions[target.key] = _Session(conn, sftp)
            log.info("sftp: connected to %s@%s:%d", target.user, target.host, target.port)
            return sftp

    def _connect_options(self, target: _Target) -> dict[str, Any]:
        where = f"{target.host}:{target.port}"
        known_hosts_file = self._opts.get("known_hosts")
        known_hosts: asyncssh.SSHKnownHosts | None
        if known_hosts_file:
            try:
                known_hosts = asyncssh.read_known_hosts(str(known_hosts_file))
            except (OSError, ValueError) as exc:
                raise AccessDenied(
                    f"sftp: cannot read known_hosts file {known_hosts_file}: {exc}"
                ) from None
        elif self._opts.get("insecure_skip_host_key_check") is True:
            log.warning(
                "sftp: NOT verifying the host key of %s (insecure_skip_host_key_check)", where
            )
            known_hosts = None
        else:
            raise AccessDenied(
                f"sftp: cannot verify the host key of {where}: set options.sftp.known_hosts to a "
                "known_hosts file (or insecure_skip_host_key_check: true to skip the check)"
            )
        options: dict[str, Any] = {
            "username": target.user,
            "known_hosts": known_hosts,
            "config": [],  # the daemon's config is the whole truth, not ~/.ssh/config
            "agent_path": None,
            "preferred_auth": "publickey",
            "connect_timeout": self.settings.connect_timeout,
            "login_timeout": self.settings.connect_timeout,
            "keepalive_interval": max(1.0, self.settings.read_timeout),
        }
        key_file = self._opts.get("key_file")
        if key_file:
            passphrase = self._opts.get("key_passphrase")
            try:
                key = asyncssh.read_private_key(str(key_file), passphrase)
            except (OSError, asyncssh.KeyImportError) as exc:
                # The reason names the problem (missing, encrypted, bad format), not the key.
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise AccessDenied(f"sftp: cannot load key_file {key_file}: {reason}") from None
            options["client_keys"] = [key]
        return options

    def _discard(self, target: _Target) -> None:
        session = self._sessions.pop(target.key, None)
        if session is not None:
            session.conn.close()

    async def _stat(self, target: _Target) -> int:
        sftp = await self._session(target)
        attrs = await asyncio.wait_for(sftp.stat(target.path), self.settings.read_timeout)
        return _regular_size(attrs, target)

    async def _open(self, target: _Target) -> tuple[asyncssh.SFTPClientFile, int]:
        sftp = await self._session(target)
        timeout = self.settings.read_timeout
        handle = await asyncio.wait_for(sftp.open(target.path, "rb"), timeout)
        try:
            attrs = await asyncio.wait_for(handle.stat(), timeout)
            return handle, _regular_size(attrs, target)
        except BaseException:
            await _quietly(handle.close)
            raise

    async def _read(
        self, target: _Target, handle: asyncssh.SFTPClientFile, offset: int, n: int
    ) -> bytes:
        # asyncssh splits one read into parallel requests of the server's max read length and
        # reissues short ones itself; a short result therefore means end of file.
        data: bytes | str = await asyncio.wait_for(
            handle.read(n, offset), self.settings.read_timeout
        )
        if not isinstance(data, bytes):  # only happens if the file was opened with an encoding
            raise TransferFailed(f"{target.name}: SFTP read returned text, not bytes")
        return data

    async def _close(self, handle: asyncssh.SFTPClientFile) -> None:
        await _quietly(handle.close)

    async def _close_all(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._connecting.clear()  # its locks belong to this loop; a reopen gets a new one
        for session in sessions:
            session.sftp.exit()
            session.conn.close()
        for session in sessions:
            await _quietly(session.conn.wait_closed)


def _regular_size(attrs: asyncssh.SFTPAttrs, target: _Target) -> int:
    if attrs.permissions is not None and not stat.S_ISREG(attrs.permissions):
        raise TransferFailed(f"{target.name}: not a regular file")
    if attrs.size is None:
        raise TransferFailed(f"{target.name}: the SFTP server does not report the size")
    return int(attrs.size)


async def _quietly(close: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        await close()
