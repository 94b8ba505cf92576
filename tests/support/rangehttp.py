"""A real, Range-capable HTTP/1.1 file server for tests, with scriptable faults.

Python's stock `http.server` ignores `Range` and answers 200 with the whole body; a client
trusting it serves corrupt bytes. This server honours single ranges (`bytes=a-b`, `bytes=a-`,
`bytes=-n`) with 206 + Content-Range, answers 416 past EOF, and can be told to lie
(`ignore_range=True`: 200 with the full body) or to fail in scripted ways:

    with RangeHTTPServer(tmp_path) as srv:
        srv.add_fault("/big.bin", Fault.status(503, retry_after=1), times=2)
        srv.add_fault("/big.bin", Fault.reset_after(100_000))
        url = srv.url("/big.bin")
        ...
        assert [r.status for r in srv.requests("/big.bin")] == [503, 503, 206, ...]

Faults for a path are used in the order they were added, each for `times` requests.
Threads are fine here: this runs beside the trio code under test, not inside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import quote, unquote, urlsplit

BLOCK = 64 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class _Hangup(Exception):
    """The handler dropped the connection on purpose."""


FaultKind = Literal["status", "reset", "close", "stall", "wrong_length"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    code: int = 500
    retry_after: str | None = None
    after_bytes: int | None = None
    seconds: float = 0.0
    delta: int = 0

    @classmethod
    def status(cls, code: int = 500, retry_after: float | str | None = None) -> Fault:
        """Answer `code` (with `Retry-After`, if given) without serving the file."""
        return cls(
            "status", code=code, retry_after=None if retry_after is None else str(retry_after)
        )

    @classmethod
    def reset_after(cls, n_bytes: int, *, rst: bool = True) -> Fault:
        """Send the headers and `n_bytes` of body, then reset (RST) or close (FIN)."""
        return cls("reset" if rst else "close", after_bytes=n_bytes)

    @classmethod
    def stall(cls, seconds: float, *, after_bytes: int | None = None) -> Fault:
        """Sleep before answering, or after `after_bytes` of body; then carry on."""
        return cls("stall", seconds=seconds, after_bytes=after_bytes)

    @classmethod
    def wrong_length(cls, delta: int) -> Fault:
        """Advertise Content-Length + `delta`: >0 leaves the body short, <0 truncates it."""
        return cls("wrong_length", delta=delta)


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int = 0
    bytes_sent: int = 0
    fault: str | None = None


@dataclass
class _Script:
    fault: Fault
    remaining: int
    methods: frozenset[str]


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(first, last) inclusive for a single satisfiable range, or None to serve everything."""
    if header is None:
        return None
    m = _RANGE.match(header)
    if m is None:  # multiple ranges or garbage: RFC 9110 lets a server ignore Range
        return None
    a, b = m.group(1), m.group(2)
    if not a and not b:
        return None
    if not a:
        n = int(b)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(a)
    if b and int(b) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    last = min(int(b), size - 1) if b else size - 1
    return first, last


class RangeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ignore_range: bool = False,
        throttle: float | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root).resolve()
        self.ignore_range = ignore_range
        self.throttle = throttle  # bytes per second for every body, or None
        self.log: list[RequestRecord] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._scripts: dict[str, list[_Script]] = {}
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        path = "/" + path.lstrip("/")
        return f"http://127.0.0.1:{self.port}{quote(path)}"

    def add_fault(
        self, path: str, fault: Fault, *, times: int = 1, methods: Iterable[str] = ("GET",)
    ) -> None:
        path = "/" + path.lstrip("/")
        with self._lock:
            self._scripts.setdefault(path, []).append(
                _Script(fault, times, frozenset(m.upper() for m in methods))
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._scripts.clear()

    def requests(self, path: str | None = None) -> list[RequestRecord]:
        with self._lock:
            records = list(self.log)
        if path is not None:
            path = "/" + path.lstrip("/")
            records = [r for r in records if r.path == path]
        return records

    def take_fault(self, path: str, method: str) -> Fault | None:
        with self._lock:
            scripts = self._scripts.get(path, [])
            for script in scripts:
                if method in script.methods and script.remaining > 0:
                    script.remaining -= 1
                    if script.remaining == 0:
                        scripts.remove(script)
                    return script.fault
        return None

    def record(self, method: str, path: str, range_header: str | None) -> RequestRecord:
        record = RequestRecord(method, path, range_header)
        with self._lock:
            self.log.append(record)
        return record

    def resolve(self, path: str) -> Path | None:
        candidate = (self.root / path.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    def pause(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops (so teardown never waits for a stall)."""
        self.stopping.wait(seconds)

    def __enter__(self) -> RangeHTTPServer:
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log is the record; stderr noise helps nobody

    def handle(self) -> None:
        try:
            super().handle()
        except (_Hangup, OSError):
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        srv = self.server
        path = unquote(urlsplit(self.path).path)
        range_header = self.headers.get("Range")
        record = srv.record(self.command, path, range_header)
        fault = srv.take_fault(path, self.command)
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "stall" and fault.after_bytes is None:
            srv.pause(fault.seconds)
        if fault is not None and fault.kind == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._simple(record, fault.code, f"scripted {fault.code}\n", extra)
            return
        file = srv.resolve(path)
        if file is None:
            self._simple(record, 404, "not found\n")
            return
        size = file.stat().st_size
        wanted = None if srv.ignore_range else parse_range(range_header, size)
        if wanted == "unsatisfiable":
            self._simple(
                record, 416, "range not satisfiable\n", {"Content-Range": f"bytes */{size}"}
            )
            return
        if wanted is None:
            status, first, last = 200, 0, size - 1
        else:
            status, (first, last) = 206, wanted
        length = last - first + 1
        advertised = length
        if fault is not None and fault.kind == "wrong_length":
            advertised = max(0, length + fault.delta)
            self.close_connection = True
        # Recorded before anything is sent, so a test reading the log never races the client.
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(advertised))
        self.send_header("Accept-Ranges", "none" if srv.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not body:
            return
        to_send = min(length, advertised)
        with open(file, "rb") as f:
            f.seek(first)
            self._stream(f, to_send, record, fault)

    def _stream(
        self, f: BinaryIO, to_send: int, record: RequestRecord, fault: Fault | None
    ) -> None:
        srv = self.server
        cut = fault.after_bytes if fault is not None and fault.kind in ("reset", "close") else None
        stall_at = fault.after_bytes if fault is not None and fault.kind == "stall" else None
        block = BLOCK if srv.throttle is None else max(1024, min(BLOCK, int(srv.throttle / 20)))
        sent = 0
        while True:
            if fault is not None and stall_at is not None and sent >= stall_at:
                srv.pause(fault.seconds)
                stall_at = None
            if fault is not None and cut is not None and sent >= cut:
                self._hang_up(rst=fault.kind == "reset")
            if sent >= to_send:
                return
            limit = to_send
            for mark in (cut, stall_at):
                if mark is not None:
                    limit = min(limit, mark)
            data = f.read(min(block, limit - sent))
            if not data:
                return
            self.wfile.write(data)
            sent += len(data)
            record.bytes_sent = sent
            if srv.throttle:
                time.sleep(len(data) / srv.throttle)

    def _hang_up(self, *, rst: bool) -> None:
        self.close_connection = True
        sock = self.connection
        if rst:
            # SO_LINGER with a zero timeout turns close() into a TCP RST: a "connection reset".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        raise _Hangup()

    def _simple(
        self, record: RequestRecord, status: int, text: str, headers: dict[str, str] | None = None
    ) -> None:
        payload = text.encode()
        record.status = status
        if self.command != "HEAD":
            record.bytes_sent = len(payload)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
