"""HTTP provider against a real Range-capable server (and a lying one), over real sockets."""

from __future__ import annotations

import hashlib
import http.client
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests.support.faultproxy import Fault as ProxyFault
from tests.support.faultproxy import FaultProxy
from tests.support.rangehttp import Fault, RangeHTTPServer
from tests.support.sinks import MemorySink
from wtfs.errors import (
    AccessDenied,
    SizeMismatch,
    Timeout,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.providers.base import ProviderSettings, Source
from wtfs.providers.http import HttpProvider
from wtfs.providers.retry import RetryPolicy, fetch_with_retry

SIZE = 3 * 1024 * 1024 + 12_345  # a few MiB, not a multiple of anything
FAST = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05, deadline=30)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random.Random(42).randbytes(SIZE)


@pytest.fixture
def files(tmp_path: Path, blob: bytes) -> Path:
    (tmp_path / "big.bin").write_bytes(blob)
    (tmp_path / "small.txt").write_bytes(b"hello, ranges\n")
    return tmp_path


@pytest.fixture
def server(files: Path) -> Iterator[RangeHTTPServer]:
    with RangeHTTPServer(files) as srv:
        yield srv


@pytest.fixture
async def provider() -> AsyncIterator[HttpProvider]:
    p = HttpProvider(ProviderSettings(connect_timeout=2, read_timeout=2))
    try:
        yield p
    finally:
        await p.aclose()


async def fetch(p: HttpProvider, source: Source, start: int, end: int) -> bytes:
    sink = MemorySink(start, end)
    await fetch_with_retry(p, source, start, end, sink, FAST)
    return sink.data


def random_ranges(n: int, size: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    ranges = [(0, size), (0, 1), (size - 1, size), (1024 * 1024 - 1, 1024 * 1024 + 1)]
    while len(ranges) < n:
        a = rng.randrange(size)
        b = rng.randrange(a + 1, min(size, a + rng.choice([10, 70_000, 1_500_000])) + 1)
        ranges.append((a, b))
    return ranges


async def test_full_file_and_50_random_ranges_are_exact(
    server: RangeHTTPServer, provider: HttpProvider, blob: bytes
) -> None:
    source = Source(server.url("big.bin"), size=SIZE)
    assert await provider.size(source) == SIZE
    for start, end in random_ranges(50, SIZE, seed=7):
        data = await fetch(provider, source, start, end)
        assert sha(data) == sha(blob[start:end]), (start, end)
    statuses = {r.status for r in server.requests("big.bin") if r.method == "GET"}
    assert statuses == {206}


async def test_a_server_ignoring_range_still_gives_exact_bytes(
    server: RangeHTTPServer, provider: HttpProvider, blob: bytes
) -> None:
    server.ignore_range = True
    source = Source(server.url("big.bin"), size=SIZE)
    for start, end in random_ranges(12, SIZE, seed=8):
        data = await fetch(provider, source, start, end)
        assert sha(data) == sha(blob[start:end]), (start, end)
    gets = [r for r in server.requests("big.bin") if r.method == "GET"]
    assert {r.status for r in gets} == {200}


async def test_a_lying_server_is_not_read_past_the_range(files: Path, blob: bytes) -> None:
    # At 1 MB/s the whole body takes 3 s; hanging up after the range takes a fraction of that.
    p = HttpProvider(ProviderSettings(read_timeout=2))
    with RangeHTTPServer(files, ignore_range=True, throttle=1_000_000) as srv:
        began = trio.current_time()
        data = await fetch(p, Source(srv.url("big.bin"), size=SIZE), 100, 20_000)
        elapsed = trio.current_time() - began
    await p.aclose()
    assert data == blob[100:20_000]
    assert elapsed < 1.0


async def test_scripted_503s_are_retried_then_succeed(
    server: RangeHTTPServer, provider: HttpProvider, blob: bytes
) -> None:
    server.add_fault("big.bin", Fault.status(503, retry_after=0), times=2)
    retries: list[tuple[int, WtfsError, float]] = []
    source = Source(server.url("big.bin"), size=SIZE)
    sink = MemorySink(100, 200_100)
    await fetch_with_retry(
        provider, source, 100, 200_100, sink, FAST, on_retry=lambda *a: retries.append(a)
    )
    assert sink.data == blob[100:200_100]
    assert [r[0] for r in retries] == [1, 2] and [r[2] for r in retries] == [0.0, 0.0]
    assert [r.status for r in server.requests("big.bin")] == [503, 503, 206]


@pytest.mark.parametrize("rst", [True, False], ids=["rst", "fin"])
async def test_a_connection_cut_mid_body_resumes_where_it_stopped(
    server: RangeHTTPServer, provider: HttpProvider, blob: bytes, rst: bool
) -> None:
    server.add_fault("big.bin", Fault.reset_after(700_000, rst=rst), times=2)
    start, end = 1000, 2_500_000
    sink = MemorySink(start, end)
    resumed_at: list[int] = []
    await fetch_with_retry(
        provider,
        Source(server.url("big.bin"), size=SIZE),
        start,
        end,
        sink,
        FAST,
        on_retry=lambda *_: resumed_at.append(sink.next),
    )
    assert sha(sink.data) == sha(blob[start:end])
    ranges = [r.range for r in server.requests("big.bin")]
    assert ranges == [f"bytes={start}-{end - 1}"] + [f"bytes={at}-{end - 1}" for at in resumed_at]
    assert len(resumed_at) == 2 and start < resumed_at[0] < resumed_at[1]
    if not rst:  # a clean close delivers every byte sent before it
        assert resumed_at == [start + 700_000, start + 1_400_000]


async def test_a_wrong_content_length_is_refused_before_any_byte(
    server: RangeHTTPServer, provider: HttpProvider
) -> None:
    source = Source(server.url("big.bin"), size=SIZE)
    server.add_fault("big.bin", Fault.wrong_length(+5000))
    sink = MemorySink(0)
    with pytest.raises(TransferFailed, match="disagrees with Content-Range") as info:
        await fetch_with_retry(provider, source, 0, 300_000, sink, FAST)
    assert not isinstance(info.value, TransientError)
    server.ignore_range = True  # a 200 whose length is not the item's size
    server.add_fault("big.bin", Fault.wrong_length(-1))
    with pytest.raises(SizeMismatch, match=f"{SIZE - 1} bytes"):
        await fetch_with_retry(provider, source, 0, 300_000, sink, FAST)
    assert sink.received == 0 and len(server.requests("big.bin")) == 2


@pytest.mark.parametrize("after_bytes", [None, 100_000], ids=["before-headers", "mid-body"])
async def test_a_stall_longer_than_the_read_timeout_is_retried(
    files: Path, blob: bytes, after_bytes: int | None
) -> None:
    p = HttpProvider(ProviderSettings(connect_timeout=1, read_timeout=0.3))
    errors: list[WtfsError] = []
    with RangeHTTPServer(files) as srv:
        srv.add_fault("big.bin", Fault.stall(5, after_bytes=after_bytes))
        began = trio.current_time()
        sink = MemorySink(0, 500_000)
        await fetch_with_retry(
            p,
            Source(srv.url("big.bin"), size=SIZE),
            0,
            500_000,
            sink,
            FAST,
            on_retry=lambda _n, e, _d: errors.append(e),
        )
        elapsed = trio.current_time() - began
    await p.aclose()
    assert sink.data == blob[:500_000]
    assert len(errors) == 1 and isinstance(errors[0], TransientError)
    assert "ReadTimeout" in errors[0].cause
    assert elapsed < 3


async def test_a_server_that_always_stalls_times_out_within_the_deadline(files: Path) -> None:
    p = HttpProvider(ProviderSettings(connect_timeout=1, read_timeout=0.4))
    with RangeHTTPServer(files) as srv:
        srv.add_fault("big.bin", Fault.stall(60), times=100)
        began = trio.current_time()
        with pytest.raises(Timeout, match=r"within the 1\.5s deadline"):
            await fetch_with_retry(
                p,
                Source(srv.url("big.bin"), size=SIZE),
                0,
                1000,
                MemorySink(0),
                RetryPolicy(base_delay=0.01, max_delay=0.05, deadline=1.5),
            )
        elapsed = trio.current_time() - began
    await p.aclose()
    assert 1.4 < elapsed < 2.5


async def test_a_wrong_item_size_is_refused_before_any_byte(
    server: RangeHTTPServer, provider: HttpProvider
) -> None:
    sink = MemorySink(0)
    with pytest.raises(SizeMismatch):
        await fetch_with_retry(
            provider, Source(server.url("big.bin"), size=SIZE - 1), 0, 1000, sink, FAST
        )
    assert sink.received == 0 and len(server.requests("big.bin")) == 1


async def test_a_range_past_the_end_is_a_size_mismatch(
    server: RangeHTTPServer, provider: HttpProvider
) -> None:
    with pytest.raises(SizeMismatch, match="14 bytes"):
        await provider.fetch(Source(server.url("small.txt")), 20, 30, MemorySink(20))
    assert [r.status for r in server.requests("small.txt")] == [416]


async def test_parallel_fetches_share_the_pool(
    server: RangeHTTPServer, provider: HttpProvider, blob: bytes
) -> None:
    source = Source(server.url("big.bin"), size=SIZE)
    results: dict[tuple[int, int], bytes] = {}

    async def one(start: int, end: int) -> None:
        results[start, end] = await fetch(provider, source, start, end)

    ranges = random_ranges(16, SIZE, seed=9)
    async with trio.open_nursery() as nursery:
        for start, end in ranges:
            nursery.start_soon(one, start, end)
    for start, end in ranges:
        assert results[start, end] == blob[start:end]


async def test_throttled_server_is_slow_but_exact(files: Path, blob: bytes) -> None:
    p = HttpProvider(ProviderSettings(read_timeout=2))
    with RangeHTTPServer(files, throttle=2_000_000) as srv:
        began = trio.current_time()
        data = await fetch(p, Source(srv.url("big.bin"), size=SIZE), 0, 600_000)
        elapsed = trio.current_time() - began
    await p.aclose()
    assert data == blob[:600_000]
    assert elapsed >= 0.25


# ---- through the fault proxy (the same proxy goes in front of a real Girder) ---------------


@pytest.fixture
def proxy(server: RangeHTTPServer) -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{server.port}") as fp:
        yield fp


async def test_proxy_status_faults_then_passthrough(
    proxy: FaultProxy, server: RangeHTTPServer, provider: HttpProvider, blob: bytes
) -> None:
    proxy.add_rule(match=lambda req: req.path == "/big.bin", action=ProxyFault.status(500), times=3)
    data = await fetch(provider, Source(proxy.url("big.bin"), size=SIZE), 10, 70_000)
    assert data == blob[10:70_000]
    assert [r.status for r in proxy.requests()] == [500, 500, 500, 206]
    # Only the last request reached the upstream, with the Range header forwarded intact.
    assert [r.range for r in server.requests("big.bin")] == ["bytes=10-69999"]


async def test_proxy_reset_resumes_and_throttle_slows(
    proxy: FaultProxy, provider: HttpProvider, blob: bytes
) -> None:
    proxy.add_rule(action=ProxyFault.reset_after(200_000), times=1)
    proxy.add_rule(action=ProxyFault.throttle(4_000_000))
    began = trio.current_time()
    data = await fetch(provider, Source(proxy.url("big.bin"), size=SIZE), 0, 1_000_000)
    assert sha(data) == sha(blob[:1_000_000])
    assert trio.current_time() - began >= 0.1
    records = proxy.requests()
    assert [r.action for r in records] == ["reset", "throttle"]
    assert records[1].range is not None and records[1].range.startswith("bytes=")
    assert records[1].range != "bytes=0-999999"


async def test_proxy_401_is_access_denied_and_not_retried(
    proxy: FaultProxy, provider: HttpProvider
) -> None:
    proxy.add_rule(action=ProxyFault.status_once_401())
    with pytest.raises(AccessDenied, match="401"):
        await fetch(provider, Source(proxy.url("big.bin"), size=SIZE), 0, 10)
    data = await fetch(provider, Source(proxy.url("big.bin"), size=SIZE), 0, 10)
    assert len(data) == 10 and [r.status for r in proxy.requests()] == [401, 206]


async def test_proxy_stall_then_passthrough(files: Path, blob: bytes) -> None:
    p = HttpProvider(ProviderSettings(read_timeout=0.3))
    with RangeHTTPServer(files) as srv, FaultProxy(f"http://127.0.0.1:{srv.port}") as fp:
        fp.add_rule(action=ProxyFault.stall(3), times=1)
        data = await fetch(p, Source(fp.url("big.bin"), size=SIZE), 5, 50)
    await p.aclose()
    assert data == blob[5:50]
    assert [r.action for r in fp.requests()] == ["stall", "passthrough"]


def test_the_fixture_server_honours_every_single_range_form(files: Path) -> None:
    """The test server must not be one of the fixtures that lie (see girder-offline notes)."""
    body = (files / "small.txt").read_bytes()  # 14 bytes
    cases = {
        "bytes=2-5": (206, body[2:6], "bytes 2-5/14"),
        "bytes=10-": (206, body[10:], "bytes 10-13/14"),
        "bytes=-4": (206, body[-4:], "bytes 10-13/14"),
        "bytes=3-999": (206, body[3:], "bytes 3-13/14"),
        "bytes=14-20": (416, None, "bytes */14"),
        "bytes=0-1,4-5": (200, body, None),  # multiple ranges: the whole body is allowed
    }
    with RangeHTTPServer(files) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        for header, (code, expected, content_range) in cases.items():
            conn.request("GET", "/small.txt", headers={"Range": header})
            response = conn.getresponse()
            data = response.read()
            assert response.status == code, header
            assert response.getheader("Content-Range") == content_range, header
            if expected is not None:
                assert data == expected, header
        conn.request("HEAD", "/small.txt")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Accept-Ranges") == "bytes"
        assert response.getheader("Content-Length") == "14"
        conn.close()
