"""RawHttp against real sockets: the Range server of tests/support and tiny trio servers.

The Girder provider's fault tests (tests/mount/test_faults.py) run through it as well: a dev
Girder on plain http is downloaded with RawHttp.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.rangehttp import Fault, RangeHTTPServer
from wtfs.girder.rawhttp import NotSimple, RawHttp

BLOB = random.Random(7).randbytes(3 * 1024 * 1024 + 17)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RangeHTTPServer]:
    (tmp_path / "blob.bin").write_bytes(BLOB)
    with RangeHTTPServer(tmp_path) as srv:
        yield srv


async def fetch(raw: RawHttp, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with raw.get(httpx.URL(url), headers or {}) as response:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
        return response.status_code, bytes(body)


async def test_a_range_arrives_whole_and_the_connection_is_kept(server: RangeHTTPServer) -> None:
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    status, body = await fetch(raw, server.url("/blob.bin"), {"Range": "bytes=100-2097251"})
    assert (status, body) == (206, BLOB[100:2097252])
    (idle,) = raw._idle.values()
    kept = idle[0]
    status, body = await fetch(raw, server.url("/blob.bin"))
    assert (status, body) == (200, BLOB)
    assert raw._idle[next(iter(raw._idle))] == [kept]  # the same connection, reused
    await raw.aclose()


async def test_the_connection_serves_the_next_request_once_the_body_is_in(
    server: RangeHTTPServer,
) -> None:
    """A random read's span: its last bytes are still being written and committed when the
    next read's request goes out, which must not have to open a connection of its own."""
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    async with raw.get(httpx.URL(server.url("/blob.bin")), {"Range": "bytes=0-262143"}) as first:
        body = bytearray()
        async for chunk in first.aiter_raw():
            body += chunk
            if len(body) < 262144:
                assert not any(raw._idle.values())  # still receiving: not anyone else's
        assert body == BLOB[:262144]
        (idle,) = raw._idle.values()  # the last chunk is in hand, the request not closed
        assert len(idle) == 1
        status, second = await fetch(raw, server.url("/blob.bin"), {"Range": "bytes=5-9"})
        assert (status, second) == (206, BLOB[5:10])
    assert raw._idle[next(iter(raw._idle))] == idle  # reused by the second, kept once
    assert len(idle) == 1
    await raw.aclose()


async def test_a_reset_mid_body_is_an_error_and_the_connection_is_dropped(
    server: RangeHTTPServer,
) -> None:
    server.add_fault("/blob.bin", Fault.reset_after(1_000_000))
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await fetch(raw, server.url("/blob.bin"))
    assert not any(raw._idle.values())
    assert (await fetch(raw, server.url("/blob.bin")))[1] == BLOB  # a fresh connection


async def test_a_stalled_body_times_out(server: RangeHTTPServer) -> None:
    server.add_fault("/blob.bin", Fault.stall(3, after_bytes=65536))
    raw = RawHttp(connect_timeout=5, read_timeout=0.5)
    with trio.fail_after(2.5), pytest.raises(httpx.ReadTimeout):
        await fetch(raw, server.url("/blob.bin"))


async def test_nobody_listening_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(httpx.ConnectError):
            await fetch(RawHttp(5, 5), f"http://127.0.0.1:{port}/x")


async def _one_answer(answer: bytes, stream: trio.SocketStream) -> None:
    """Read one request head, send `answer`, close: no Connection: close header, like a server
    dropping an idle keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    await stream.send_all(answer)
    await stream.aclose()


async def serve(nursery: trio.Nursery, answer: bytes) -> int:
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(_one_answer, answer), 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    ],
    ids=["chunked", "redirect", "no-length"],
)
async def test_answers_it_does_not_handle_are_handed_back_before_any_body(answer: bytes) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, answer)
        with pytest.raises(NotSimple):
            await fetch(RawHttp(5, 5), f"http://127.0.0.1:{port}/x")
        nursery.cancel_scope.cancel()


async def test_a_kept_connection_the_server_closed_is_replaced() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    raw = RawHttp(5, 5)
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, answer)
        assert await fetch(raw, f"http://127.0.0.1:{port}/a") == (200, b"hello")
        assert any(raw._idle.values())  # kept, but the server has closed it
        await trio.sleep(0.05)
        assert await fetch(raw, f"http://127.0.0.1:{port}/b") == (200, b"hello")
        nursery.cancel_scope.cancel()
    await raw.aclose()


async def test_https_is_left_to_httpx() -> None:
    with pytest.raises(NotSimple):
        await fetch(RawHttp(5, 5), "https://127.0.0.1:1/x")


async def test_a_body_left_unread_is_drained_and_its_connection_kept(
    server: RangeHTTPServer,
) -> None:
    """A random read's run is cut short by its file's close, its 256 KiB span part read: the
    rest is read and dropped, and the next request goes on the same connection (a new one
    cost a random read ~2 ms at a busy local Girder)."""
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    url = httpx.URL(server.url("/blob.bin"))
    with trio.CancelScope() as scope:
        async with raw.get(url, {"Range": "bytes=0-262143"}) as first:
            async for _ in first.aiter_raw():
                scope.cancel()  # the reader's close cancels the run after its first chunk
                await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    (idle,) = raw._idle.values()
    assert len(idle) == 1
    kept = idle[0]
    status, body = await fetch(raw, server.url("/blob.bin"), {"Range": "bytes=5-9"})
    assert (status, body) == (206, BLOB[5:10])  # the drained body's bytes are not in it
    assert raw._idle[next(iter(raw._idle))] == [kept]
    # Never started reading, and stopped by an error of the reader's own: drained as well.
    with pytest.raises(ZeroDivisionError):
        async with raw.get(url, {"Range": "bytes=0-262143"}):
            raise ZeroDivisionError
    assert raw._idle[next(iter(raw._idle))] == [kept]
    await raw.aclose()


async def test_a_large_rest_or_a_failed_connection_is_not_drained(
    server: RangeHTTPServer,
) -> None:
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    url = httpx.URL(server.url("/blob.bin"))
    with pytest.raises(ZeroDivisionError):
        async with raw.get(url, {}) as whole:  # 3 MiB: more than DRAIN_LIMIT to drop
            async for _ in whole.aiter_raw():
                raise ZeroDivisionError
    assert not any(raw._idle.values())
    server.add_fault("/blob.bin", Fault.stall(3, after_bytes=65536))
    raw.read_timeout = 0.5
    with trio.fail_after(2.5), pytest.raises(httpx.ReadTimeout):
        await fetch(raw, server.url("/blob.bin"))
    assert not any(raw._idle.values())
    await raw.aclose()


async def test_body_buffers_are_reused_and_never_shared_by_two_requests(
    server: RangeHTTPServer,
) -> None:
    """A fresh 1 MiB buffer per request cost 0.4 ms (its pages zeroed and faulted in): the
    next request takes the last one's, but two requests in flight never share one."""
    raw = RawHttp(connect_timeout=5, read_timeout=5)
    url = httpx.URL(server.url("/blob.bin"))
    assert (await fetch(raw, server.url("/blob.bin"), {"Range": "bytes=0-99"}))[1] == BLOB[:100]
    [buffer] = raw._buffers
    async with raw.get(url, {"Range": "bytes=0-1048575"}) as first:
        assert raw._buffers == []  # taken
        async with raw.get(url, {"Range": "bytes=1048576-2097151"}) as second:
            one, two = bytearray(), bytearray()
            async for chunk in first.aiter_raw():
                one += chunk
            async for chunk in second.aiter_raw():
                two += chunk
    assert (bytes(one), bytes(two)) == (BLOB[:1048576], BLOB[1048576:2097152])
    assert len(raw._buffers) == 2 and any(b is buffer for b in raw._buffers)
    await raw.aclose()
