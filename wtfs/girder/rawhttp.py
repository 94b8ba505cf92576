"""Plain-HTTP/1.1 GETs whose body is received straight into one reused buffer.

httpx (through h11) copies every body byte twice in Python on its way to us (bench: h11's
`ReceiveBuffer.__iadd__`/`_extract` were 14–18 % of the daemon's CPU on a cold read); here a
body goes `recv_into` a 1 MiB buffer and leaves as memoryviews of it, for `os.pwrite`. Only the
simple case is handled: `http://`, an answer with a Content-Length. Anything else (a redirect,
a chunked body) raises `NotSimple` before a body byte is read, and the caller asks httpx.

Errors are httpx's exception types, so callers keep one way of classifying network failures.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import httpx
import trio

log = logging.getLogger(__name__)

BUFFER_SIZE = 1024 * 1024
MAX_HEAD = 64 * 1024
MAX_IDLE_PER_HOST = 8
#: body buffers kept for the next requests: a fresh 1 MiB bytearray cost 0.4 ms (its pages
#: zeroed and faulted in, on this VM), a tenth of a random read's first byte
MAX_FREE_BUFFERS = 4
#: the most of a body left unread that is read and dropped to keep its connection (a random
#: read's span is 256 KiB), and how long that may take
DRAIN_LIMIT = 1024 * 1024
DRAIN_DEADLINE = 0.5

T = TypeVar("T")


class NotSimple(Exception):
    """The answer needs a full HTTP client (a redirect, no Content-Length, chunked)."""


class RawResponse:
    def __init__(self, status_code: int, headers: httpx.Headers, length: int) -> None:
        self.status_code = status_code
        self.headers = headers
        self.remaining = length
        self._chunks: AsyncIterator[memoryview] | None = None

    def aiter_raw(self) -> AsyncIterator[memoryview]:
        """The body; each chunk is valid only until the next one is asked for."""
        assert self._chunks is not None
        return self._chunks


#: a streamed answer, from httpx or from RawHttp: what downloads read
Response = httpx.Response | RawResponse


class RawHttp:
    """A small keep-alive pool of plain TCP connections, one buffer per request in flight."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[trio.SocketStream]] = {}
        self._buffers: list[bytearray] = []

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for stream in streams:
                await stream.aclose()
        self._idle.clear()

    @asynccontextmanager
    async def get(self, url: httpx.URL, headers: Mapping[str, str]) -> AsyncIterator[RawResponse]:
        if url.scheme != "http" or not url.host:
            raise NotSimple(f"scheme {url.scheme}")
        host, port = url.host, url.port or 80
        target = url.raw_path.decode("ascii")
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        stream, head, rest = await self._send(host, port, request)
        pooled = False
        response: RawResponse | None = None
        body: AsyncGenerator[memoryview, None] | None = None
        failure: BaseException | None = None
        buffer = self._buffers.pop() if self._buffers else bytearray(BUFFER_SIZE)

        def body_received() -> None:
            # Only a body read to its end leaves the connection ready for another request; it
            # is ready then, before its last bytes are written and committed (the body's buffer
            # is this request's own): a random read's next request need not open another.
            nonlocal pooled
            pooled = keep_alive and self._pool(host, port, stream)

        try:
            response = _parse_head(head)
            keep_alive = response.headers.get("connection", "").lower() != "close"
            rest = rest[: response.remaining]  # received with the head: `remaining` is the rest
            response.remaining -= len(rest)
            body = self._body(stream, response, rest, buffer, body_received)
            response._chunks = body
            yield response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with trio.CancelScope(shield=True):
                if body is not None:
                    await body.aclose()
                if (
                    not pooled
                    and response is not None
                    and keep_alive
                    and 0 < response.remaining <= DRAIN_LIMIT
                    and not isinstance(failure, httpx.HTTPError)  # the connection is sound
                    and await self._drain(stream, response.remaining)
                ):
                    pooled = self._pool(host, port, stream)
                if not pooled:
                    await stream.aclose()
                if len(self._buffers) < MAX_FREE_BUFFERS:
                    self._buffers.append(buffer)  # the body is closed: no view of it is read

    def _pool(self, host: str, port: int, stream: trio.SocketStream) -> bool:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            return False
        idle.append(stream)
        return True

    @staticmethod
    async def _drain(stream: trio.SocketStream, remaining: int) -> bool:
        """Read and drop the rest of a body its reader stopped reading (a random read's run,
        cut short by its file's close), so that the connection serves the next request: a
        new connection cost the next random read ~2 ms at a busy local Girder. False when it
        does not all come within DRAIN_DEADLINE."""
        buffer = bytearray(min(remaining, 64 * 1024))
        with trio.move_on_after(DRAIN_DEADLINE):
            try:
                while remaining:
                    n = await stream.socket.recv_into(buffer, min(len(buffer), remaining))
                    if n == 0:
                        return False
                    remaining -= n
            except OSError:
                return False
            return True
        return False

    async def _send(
        self, host: str, port: int, request: bytes
    ) -> tuple[trio.SocketStream, bytes, bytes]:
        """Send on an idle connection if one is left, else a new one; return the head."""
        idle = self._idle.get((host, port), [])
        while idle:
            stream = idle.pop()
            try:
                return stream, *await self._exchange(stream, request)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                await stream.aclose()  # the server closed it while idle: try the next
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            return stream, *await self._exchange(stream, request)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise

    async def _exchange(self, stream: trio.SocketStream, request: bytes) -> tuple[bytes, bytes]:
        try:
            await stream.send_all(request)
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.WriteError(f"sending the request: {exc}") from None
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too large")
            data = await self._receive(stream)
            if not data:
                raise httpx.RemoteProtocolError("the server closed the connection")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        return head, rest

    async def _receive(self, stream: trio.SocketStream) -> bytes:
        return await self._within_read_timeout(
            functools.partial(stream.receive_some, MAX_HEAD), "receiving the answer"
        )

    async def _within_read_timeout(self, receive: Callable[[], Awaitable[T]], what: str) -> T:
        """One receive, as httpx would fail it: ReadError, or ReadTimeout after read_timeout."""
        with trio.move_on_after(self.read_timeout):
            try:
                return await receive()
            except (trio.BrokenResourceError, OSError) as exc:
                raise httpx.ReadError(f"{what}: {exc}") from None
        raise httpx.ReadTimeout(f"{what}: nothing came for {self.read_timeout:g}s")

    async def _body(
        self,
        stream: trio.SocketStream,
        response: RawResponse,
        rest: bytes,
        buffer: bytearray,
        received: Callable[[], None],
    ) -> AsyncGenerator[memoryview, None]:
        """The body's chunks (`rest` first, the part that came with the head); `received()`
        once its last byte is in, before that chunk is yielded: the connection is not touched
        again."""
        if not response.remaining:
            received()
            if rest:
                yield memoryview(rest)
            return
        if rest:
            yield memoryview(rest)
        view = memoryview(buffer)
        sock = stream.socket
        while response.remaining > 0:
            receive = functools.partial(sock.recv_into, view, min(len(view), response.remaining))
            n = await self._within_read_timeout(receive, "receiving the body")
            if n == 0:
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection with {response.remaining} bytes to go"
                )
            response.remaining -= n
            if not response.remaining:
                received()
            yield view[:n]


def _parse_head(head: bytes) -> RawResponse:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"bad status line {status_line[:80]!r}")
    pairs = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        pairs.append((name.strip(), value.strip()))
    headers = httpx.Headers(pairs)
    status = int(parts[1])
    if 300 <= status < 400 or "chunked" in headers.get("transfer-encoding", "").lower():
        raise NotSimple(f"answer {status}, transfer-encoding {headers.get('transfer-encoding')}")
    length = headers.get("content-length", "")
    if not length.isdigit():
        raise NotSimple("no Content-Length")
    return RawResponse(status, headers, int(length))
