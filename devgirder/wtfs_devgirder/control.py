"""Start, bootstrap, inspect and stop a local dev Girder (see `wtfs_devgirder.server`).

Used by ``wtfs demo``, the pytest fixtures and the benchmarks::

    with LocalGirder.start(workdir) as girder:
        gc = girder.client()
        ...

The server runs in a subprocess that dies with its parent (``PR_SET_PDEATHSIG``), logs to
``workdir/girder.log``, keeps its files in ``workdir/assetstore`` and its database in memory:
every start is a fresh Girder. The API key is written to ``workdir/api_key`` (mode 0600) and
the admin password to ``workdir/admin_password`` (mode 0600); neither is ever logged.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from wtfs_devgirder.server import DEV_PREFIX, bulk_file_content, bulk_item_name

if TYPE_CHECKING:
    import girder_client

__all__ = ["DevGirderError", "LocalGirder", "bulk_file_content", "bulk_item_name"]

logger = logging.getLogger(__name__)
READY_POLL = 0.05  # seconds between readiness probes (sync tooling, not trio code)

ADMIN_LOGIN = "admin"
_PR_SET_PDEATHSIG = 1


class DevGirderError(RuntimeError):
    """The dev Girder could not be started, bootstrapped or driven."""


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn asking the kernel to SIGTERM the child when its parent (thread) dies."""

    def preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died before prctl took effect: then exit at once.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def write_secret(path: Path, value: str) -> Path:
    """Write `value` to `path`, readable by its owner only (0600 even if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return path


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class LocalGirder:
    """A running dev Girder subprocess, bootstrapped with an admin user and an API key."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.workdir = workdir
        self.port = port
        self.process = process
        self.base_url = f"http://{self.host}:{port}"
        self.api_url = f"{self.base_url}/api/v1"
        self.api_key_file = workdir / "api_key"
        self.admin_password_file = workdir / "admin_password"
        self.log_file = workdir / "girder.log"
        self.assetstore_dir = workdir / "assetstore"
        self.admin_login = ADMIN_LOGIN
        self.admin_user_id = ""
        self._token: str | None = None
        self._http = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls, workdir: Path, port: int = 0, timeout: float = 60, *, plugins: bool = True
    ) -> LocalGirder:
        """Spawn the server on 127.0.0.1:``port`` (a free port when 0), wait, bootstrap.

        ``plugins=False`` starts a stock Girder: no plugin loaded, though installed.
        """
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "assetstore").mkdir(exist_ok=True)
        started = time.monotonic()
        sock = _listen(cls.host, port)
        actual_port = sock.getsockname()[1]
        fd = sock.fileno()
        cmd = [
            sys.executable,
            "-m",
            "wtfs_devgirder.server",
            "--host",
            cls.host,
            "--port",
            str(actual_port),
            "--fd",
            str(fd),
            "--assetstore",
            str(workdir / "assetstore"),
            *([] if plugins else ["--no-plugins"]),
        ]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            with open(workdir / "girder.log", "ab") as log:
                process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,),
                    preexec_fn=_die_with_parent(os.getpid()),
                    start_new_session=True,  # a terminal's Ctrl-C reaches us, not the server
                    env=env,
                    cwd=workdir,
                )
        finally:
            sock.close()
        girder = cls(workdir, actual_port, process)
        try:
            girder._wait_ready(started + timeout)
            girder._bootstrap()
        except BaseException:
            girder.stop()
            raise
        logger.info(
            "dev girder up at %s (pid %d) in %.2f s",
            girder.api_url,
            process.pid,
            time.monotonic() - started,
        )
        return girder

    def _wait_ready(self, deadline: float) -> None:
        url = f"{self.api_url}/system/version"
        while True:
            code = self.process.poll()
            if code is not None:
                raise DevGirderError(
                    f"dev girder exited with code {code} during start-up; log tail:\n"
                    + self.log_tail()
                )
            try:
                if self._http.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise DevGirderError(
                    f"dev girder not ready at {url} in time; log tail:\n" + self.log_tail()
                )
            time.sleep(READY_POLL)

    def _bootstrap(self) -> None:
        password = secrets.token_urlsafe(18)
        user = self._api(
            "POST",
            "user",
            params={
                "login": ADMIN_LOGIN,
                "email": "admin@wtfs.invalid",
                "firstName": "Wtfs",
                "lastName": "Admin",
                "password": password,
            },
        )
        if not user.get("admin"):
            raise DevGirderError("the bootstrap user is not a site admin (Girder not fresh?)")
        write_secret(self.admin_password_file, password)
        self.admin_user_id = str(user["_id"])
        login_token = str(user["authToken"]["token"])
        key = self._api(
            "POST",
            "api_key",
            params={"name": "wtfs-dev", "active": "true"},
            token=login_token,
        )
        write_secret(self.api_key_file, str(key["key"]))

    def stop(self) -> None:
        """Terminate the server and wait for it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("dev girder pid %d ignored SIGTERM; killing", self.process.pid)
                self.process.kill()
                self.process.wait()
        logger.info("dev girder pid %d stopped (%s)", self.process.pid, self.process.returncode)

    def __enter__(self) -> LocalGirder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalGirder(api_url={self.api_url!r}, pid={self.process.pid})"

    # --- credentials --------------------------------------------------------------------------

    def api_key(self) -> str:
        return self.api_key_file.read_text().strip()

    def token(self) -> str:
        """A session token obtained from the API key (cached for this LocalGirder)."""
        if self._token is None:
            answer = self._api("POST", "api_key/token", params={"key": self.api_key()})
            self._token = str(answer["authToken"]["token"])
        return self._token

    def client(self) -> girder_client.GirderClient:
        """A `girder_client.GirderClient` authenticated with the API key."""
        import girder_client

        gc = girder_client.GirderClient(apiUrl=self.api_url)
        gc.setToken(self.token())
        return gc

    # --- dev endpoints ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset (see `server.Stats.to_json`)."""
        return self._dev("GET", "stats")

    def reset_stats(self) -> None:
        self._dev("POST", "stats/reset")

    def events(self) -> list[dict[str, str]]:
        """The Girder events recorded since start (`server.RECORDED_EVENTS`): {event, id}."""
        return list(self._dev("GET", "events")["events"])

    def throttle(self, bytes_per_second: int | None) -> None:
        """Slow every download response body to ``bytes_per_second`` (None: full speed)."""
        self._dev("POST", "throttle", {"bytesPerSecond": bytes_per_second})

    def bulk_items(
        self,
        folder_id: str,
        count: int,
        prefix: str = "item",
        file_size: int | None = 0,
    ) -> list[str]:
        """Create ``count`` items in-process; item i is named `bulk_item_name(prefix, i, count)`.

        Each has one file of that name with `bulk_file_content(name, file_size)` as content, or
        no file when ``file_size`` is None. Returns the item ids in order.
        """
        answer = self._dev(
            "POST",
            "bulk_items",
            {"folderId": folder_id, "count": count, "prefix": prefix, "fileSize": file_size},
        )
        return [str(i) for i in answer["itemIds"]]

    def raw_item(
        self,
        folder_id: str,
        name: str,
        content: bytes | None = None,
        meta: dict[str, Any] | None = None,
        file_name: str | None = None,
    ) -> str:
        """Insert an item named exactly ``name`` (no normalisation, duplicates allowed).

        With ``content``, the item gets one file named ``file_name`` (default: ``name``).
        Returns the item id (its files are Girder's `GET /item/{id}/files`).
        """
        payload: dict[str, Any] = {"folderId": folder_id, "name": name, "meta": meta or {}}
        if content is not None:
            payload["content"] = base64.b64encode(content).decode()
        if file_name is not None:
            payload["fileName"] = file_name
        return str(self._dev("POST", "raw_item", payload)["itemId"])

    # --- plumbing -----------------------------------------------------------------------------

    def revoke_tokens(self) -> int:
        """Revoke every Girder token but this controller's own; returns how many went."""
        result = self._dev("POST", "revoke_tokens", {"keep": [self.token()]})
        return int(result["removed"])

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _api(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        # Parameters travel as a form body, never in the URL: URLs end up in logs (httpx logs
        # them at INFO, Girder's access log records them) and these carry passwords and keys.
        headers = {"Girder-Token": token} if token else {}
        response = self._http.request(
            method, f"{self.api_url}/{path}", data=params, headers=headers
        )
        if response.status_code >= 400:
            raise DevGirderError(
                f"{method} /{path} answered {response.status_code}: {response.text[:500]}"
            )
        result: dict[str, Any] = response.json()
        return result

    def _dev(self, method: str, action: str, payload: Any = None) -> dict[str, Any]:
        url = f"{self.base_url}{DEV_PREFIX}/{action}"
        response = self._http.request(method, url, json=payload)
        if response.status_code >= 400:
            raise DevGirderError(
                f"{method} {DEV_PREFIX}/{action} answered {response.status_code}: "
                f"{response.text[:500]}"
            )
        result: dict[str, Any] = response.json()
        return result
