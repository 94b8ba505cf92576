"""A scriptable HTTP reverse proxy on loopback, for fault injection in front of a real server.

Put it in front of a real Girder or of `rangehttp`, point the code under test at `proxy.base`,
and script failures per test:

    with FaultProxy(girder_url) as proxy:
        proxy.add_rule(match=lambda req: "/download" in req.path, action=Fault.status(500),
                       times=3)
        proxy.add_rule(match=lambda req: req.method == "GET", action=Fault.reset_after(65536))
        ...
        assert [r.status for r in proxy.requests()] == [...]

Rules are tried in the order they were added; the first one whose `match` is true and that has
uses left decides; no rule means pass through. Everything else (method, path, query, headers
such as Girder-Token and Range, request body) is forwarded, and the answer is streamed back.
Threads and `http.client` are fine here: this runs beside the code under test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

BLOCK = 64 * 1024
# Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class _Hangup(Exception):
    """The handler dropped the connection on purpose."""


ActionKind = Literal["status", "reset", "stall", "throttle", "passthrough"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    n_bytes: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    default_times: int | None = None  # uses when add_rule gets no `times` (None: unlimited)


class Fault:
    """Factories for the actions a rule can take."""

    @staticmethod
    def status(
        code: int, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> Action:
        """Answer `code` without contacting the upstream (a JSON body unless given one)."""
        return Action("status", code=code, headers=tuple((headers or {}).items()), body=body)

    @staticmethod
    def status_once_401() -> Action:
        """One 401, as an expired or revoked token would get; then pass through."""
        return Action("status", code=401, default_times=1)

    @staticmethod
    def reset_after(n_bytes: int) -> Action:
        """Forward, send the headers and `n_bytes` of body, then reset the connection (RST)."""
        return Action("reset", n_bytes=n_bytes)

    @staticmethod
    def stall(seconds: float) -> Action:
        """Wait `seconds` before forwarding (the proxy's stop ends the wait early)."""
        return Action("stall", seconds=seconds)

    @staticmethod
    def throttle(bytes_per_second: float) -> Action:
        """Forward and stream the answer back at most this fast."""
        return Action("throttle", rate=bytes_per_second)

    @staticmethod
    def passthrough() -> Action:
        """Forward untouched (useful to exempt requests from a later, broader rule)."""
        return Action("passthrough")


@dataclass(frozen=True)
class ProxyRequest:
    """What a rule's `match` sees."""

    method: str
    path: str  # without the query string
    query: str
    headers: Message[str, str]  # case-insensitive, as received

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


@dataclass
class Rule:
    match: Callable[[ProxyRequest], bool]
    action: Action
    remaining: int | None
    hits: int = 0


@dataclass
class ProxyRecord:
    method: str
    path: str
    query: str
    range: str | None
    action: str = "passthrough"
    status: int = 0
    bytes_sent: int = 0
    error: str | None = None


@dataclass
class _Upstream:
    scheme: str
    host: str
    port: int
    prefix: str  # the upstream URL's path, e.g. "/api/v1" (kept in `base`, not re-added)
    origin: str = field(init=False)

    def __post_init__(self) -> None:
        self.origin = f"{self.scheme}://{self.host}:{self.port}"


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream: str, *, upstream_timeout: float = 60.0) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        default_port = 443 if parts.scheme == "https" else 80
        self.upstream = _Upstream(
            parts.scheme, parts.hostname, parts.port or default_port, parts.path.rstrip("/")
        )
        self.upstream_timeout = upstream_timeout
        self.log: list[ProxyRecord] = []
        self.stopping = threading.Event()
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base(self) -> str:
        """The proxy's base URL; it stands for the upstream URL given to the constructor."""
        return f"http://127.0.0.1:{self.port}{self.upstream.prefix}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add_rule(
        self,
        *,
        action: Action,
        match: Callable[[ProxyRequest], bool] | None = None,
        times: int | None = None,
    ) -> Rule:
        """Apply `action` to requests `match` accepts (all if None), `times` times at most."""
        rule = Rule(match or (lambda _req: True), action, times or action.default_times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def requests(self, match: Callable[[ProxyRecord], bool] | None = None) -> list[ProxyRecord]:
        with self._lock:
            records = list(self.log)
        return [r for r in records if match is None or match(r)]

    def pick(self, request: ProxyRequest) -> Action:
        with self._lock:
            for rule in self._rules:
                if rule.remaining is not None and rule.remaining <= 0:
                    continue
                if rule.match(request):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.action
        return Fault.passthrough()

    def record(self, request: ProxyRequest) -> ProxyRecord:
        record = ProxyRecord(request.method, request.path, request.query, request.range)
        with self._lock:
            self.log.append(record)
        return record

    def pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (_Hangup, OSError):
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        proxy = self.server
        parts = urlsplit(self.path)
        request = ProxyRequest(self.command, parts.path, parts.query, self.headers)
        body = self._request_body()
        record = proxy.record(request)
        action = proxy.pick(request)
        record.action = action.kind
        if action.kind == "stall":
            proxy.pause(action.seconds)
        if action.kind == "status":
            self._answer(record, action)
            return
        up = proxy.upstream
        conn_class = (
            http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_class(up.host, up.port, timeout=proxy.upstream_timeout)
        try:
            # Same path on both sides: `base` already carries the upstream's path prefix.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{up.host}:{up.port}")
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            record.error = f"upstream: {exc}"
            self._answer(record, Action("status", code=502, body=b"upstream unreachable\n"))
            return
        try:
            self._relay(response, record, action)
        finally:
            conn.close()

    def _request_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        return self.rfile.read(int(length))

    def _relay(
        self, response: http.client.HTTPResponse, record: ProxyRecord, action: Action
    ) -> None:
        proxy = self.server
        # Recorded before anything is sent, so a test reading the log never races the client.
        record.status = response.status
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            lname = name.lower()
            if lname == "location" and value.startswith(proxy.upstream.origin):
                value = f"http://127.0.0.1:{proxy.port}" + value[len(proxy.upstream.origin) :]
            if lname not in HOP_BY_HOP:
                self.send_header(name, value)
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        if length is not None:
            self.send_header("Content-Length", length)
        elif has_body:
            # Unknown length (chunked upstream): delimit the body by closing the connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not has_body:
            return
        cut = action.n_bytes if action.kind == "reset" else None
        rate = action.rate if action.kind == "throttle" else 0.0
        block = BLOCK if not rate else max(1024, min(BLOCK, int(rate / 20)))
        sent = 0
        while True:
            if cut is not None and sent >= cut:
                self._reset()
            want = block if cut is None else min(block, cut - sent)
            data = response.read1(want)
            if not data:
                return
            self.wfile.write(data)
            sent += len(data)
            record.bytes_sent = sent
            if rate:
                time.sleep(len(data) / rate)

    def _reset(self) -> None:
        self.close_connection = True
        sock = self.connection
        # SO_LINGER with a zero timeout turns close() into a TCP RST: a "connection reset".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        raise _Hangup()

    def _answer(self, record: ProxyRecord, action: Action) -> None:
        payload = action.body
        content_type = "text/plain"
        if payload is None:
            payload = json.dumps({"message": f"scripted {action.code}", "type": "rest"}).encode()
            content_type = "application/json"
        record.status = action.code
        if self.command != "HEAD":
            record.bytes_sent = len(payload)
        self.send_response(action.code)
        headers = dict(action.headers)
        headers.setdefault("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
