"""HTTP provider error paths, fast, against `httpx.MockTransport` (no sockets).

The real-server behaviour (Range honoured or not, resets, stalls) is in test_http_real.py.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from tests.support.sinks import Body, MemorySink
from wtfs.errors import (
    AccessDenied,
    NotFound,
    SizeMismatch,
    Timeout,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.providers.base import Provider, ProviderSettings, Sink, Source
from wtfs.providers.http import HttpProvider
from wtfs.providers.retry import RetryPolicy, fetch_with_retry

BLOB = random.Random(1).randbytes(100_000)
URL = "http://data.example/file.bin"
SOURCE = Source(URL, size=len(BLOB), label="file.bin")
FAST = RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.01, deadline=30)

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def ranged(
    request: httpx.Request,
    data: bytes = BLOB,
    fail_at: int | None = None,
    exc: type[Exception] = httpx.ReadError,
) -> httpx.Response:
    """A correct 206 answer to the request's Range."""
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["range"])
    assert m is not None
    first, last = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
    body = data[first : last + 1]
    headers = {
        "Content-Range": f"bytes {first}-{last}/{len(data)}",
        "Content-Length": str(len(body)),
    }
    return httpx.Response(206, headers=headers, stream=Body(body, fail_at, exc))


class Recorder:
    """Wraps a handler and keeps every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.handler(request)

    @property
    def ranges(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]


def provider(handler: Handler, **settings: Any) -> tuple[HttpProvider, Recorder]:
    recorder = Recorder(handler)
    transport = httpx.MockTransport(recorder)
    return HttpProvider.with_transport(ProviderSettings(**settings), transport), recorder


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers, text=f"status {code}")

    return handler


def script(*steps: Handler) -> Handler:
    """Answer request i with steps[i]; the last step repeats."""
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        step = steps[min(calls, len(steps) - 1)]
        calls += 1
        return await step(request)

    return handler


async def ok(request: httpx.Request) -> httpx.Response:
    return ranged(request)


@pytest.mark.parametrize("code", [401, 403])
async def test_unauthorised_answers_are_access_denied(code: int) -> None:
    p, rec = provider(status(code))
    sink = MemorySink(0)
    with pytest.raises(AccessDenied, match=str(code)):
        await fetch_with_retry(p, SOURCE, 0, 100, sink, FAST)
    assert len(rec.requests) == 1, "a permanent error must not be retried"
    assert sink.received == 0


@pytest.mark.parametrize("code", [404, 410])
async def test_missing_answers_are_not_found(code: int) -> None:
    p, rec = provider(status(code))
    with pytest.raises(NotFound, match=str(code)):
        await fetch_with_retry(p, SOURCE, 0, 100, MemorySink(0), FAST)
    assert len(rec.requests) == 1


async def test_416_is_a_size_mismatch_naming_the_real_size() -> None:
    p, _ = provider(status(416, {"Content-Range": "bytes */5000"}))
    with pytest.raises(SizeMismatch, match="5000 bytes"):
        await p.fetch(Source(URL, size=None), 6000, 7000, MemorySink(6000))


async def test_server_errors_are_retried_until_success_with_correct_bytes() -> None:
    p, rec = provider(script(status(500), status(502), status(408), ok))
    sink = MemorySink(1000)
    attempts: list[tuple[int, WtfsError, float]] = []
    await fetch_with_retry(
        p, SOURCE, 1000, 90_000, sink, FAST, on_retry=lambda *a: attempts.append(a)
    )
    assert sink.data == BLOB[1000:90_000]
    assert [a[0] for a in attempts] == [1, 2, 3]
    assert all(isinstance(a[1], TransientError) for a in attempts)
    assert len(rec.requests) == 4


@pytest.mark.parametrize("exc", [httpx.ReadError, httpx.RemoteProtocolError])
async def test_reset_mid_body_resumes_from_the_first_missing_byte(exc: type[Exception]) -> None:
    async def breaks(request: httpx.Request) -> httpx.Response:
        return ranged(request, fail_at=32768, exc=exc)

    p, rec = provider(script(breaks, breaks, ok))
    sink = MemorySink(5000)
    await fetch_with_retry(p, SOURCE, 5000, 95_000, sink, FAST)
    assert sink.data == BLOB[5000:95_000]
    assert rec.ranges == ["bytes=5000-94999", "bytes=37768-94999", "bytes=70536-94999"]


async def test_200_answer_to_a_range_request_gives_the_right_bytes() -> None:
    async def ignores_range(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(len(BLOB))}, stream=Body(BLOB))

    p, _ = provider(ignores_range)
    for start, end in [(0, 10), (12_345, 54_321), (99_990, 100_000), (40_000, 40_001)]:
        sink = MemorySink(start, end)
        await p.fetch(SOURCE, start, end, sink)
        assert sink.data == BLOB[start:end], (start, end)


async def test_206_for_another_range_is_refused_before_any_byte() -> None:
    async def wrong_range(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            206, headers={"Content-Range": f"bytes 0-99/{len(BLOB)}"}, content=BLOB[:100]
        )

    p, rec = provider(wrong_range)
    sink = MemorySink(500)
    with pytest.raises(TransferFailed, match="asked for bytes 500-599") as info:
        await fetch_with_retry(p, SOURCE, 500, 600, sink, FAST)
    assert not isinstance(info.value, TransientError)
    assert sink.received == 0 and len(rec.requests) == 1


async def test_206_without_content_range_is_refused() -> None:
    async def bare(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=BLOB[:100])

    p, _ = provider(bare)
    with pytest.raises(TransferFailed, match="Content-Range"):
        await p.fetch(SOURCE, 0, 100, MemorySink(0))


async def test_content_length_disagreeing_with_the_item_size_is_a_size_mismatch() -> None:
    async def longer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BLOB + b"extra")

    p, _ = provider(longer)
    sink = MemorySink(0)
    with pytest.raises(SizeMismatch, match="100005 bytes"):
        await fetch_with_retry(p, SOURCE, 0, 100, sink, FAST)
    assert sink.received == 0


async def test_content_range_total_disagreeing_with_the_item_size_is_a_size_mismatch() -> None:
    p, _ = provider(ok)
    sink = MemorySink(0)
    with pytest.raises(SizeMismatch, match="100000 bytes"):
        await p.fetch(Source(URL, size=123), 0, 100, sink)
    assert sink.received == 0


async def test_body_shorter_than_promised_is_transient() -> None:
    async def short(request: httpx.Request) -> httpx.Response:
        # A 206 without Content-Length whose body simply stops early.
        return httpx.Response(
            206, headers={"Content-Range": f"bytes 0-999/{len(BLOB)}"}, stream=Body(BLOB[:600])
        )

    p, _ = provider(short)
    sink = MemorySink(0)
    with pytest.raises(TransientError, match="ended at byte 600"):
        await p.fetch(SOURCE, 0, 1000, sink)
    assert sink.data == BLOB[:600]  # correct as far as it went: the retry resumes from 600


async def test_429_retry_after_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    p, _ = provider(script(status(429, {"Retry-After": "3"}), ok))
    delays: list[float] = []
    began = trio.current_time()
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=10, deadline=60)
    sink = MemorySink(0)
    await fetch_with_retry(
        p, SOURCE, 0, 1000, sink, policy, on_retry=lambda _n, _e, d: delays.append(d)
    )
    assert delays == [3.0]
    assert trio.current_time() - began >= 3.0
    assert sink.data == BLOB[:1000]


async def test_retry_after_may_be_an_http_date(autojump_clock: trio.abc.Clock) -> None:
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    p, _ = provider(script(status(503, {"Retry-After": when}), ok))
    delays: list[float] = []
    policy = RetryPolicy(attempts=3, max_delay=7, deadline=60)
    await fetch_with_retry(
        p, SOURCE, 0, 10, MemorySink(0), policy, on_retry=lambda _n, _e, d: delays.append(d)
    )
    assert delays == [7.0]  # an hour from now, capped: not the 0.2 s backoff of no hint


async def test_content_range_is_read_case_insensitively_and_strictly() -> None:
    async def shouting(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            206, headers={"Content-Range": f"  BYTES 0-9/{len(BLOB)} "}, content=BLOB[:10]
        )

    p, _ = provider(shouting)
    sink = MemorySink(0)
    await p.fetch(SOURCE, 0, 10, sink)
    assert sink.data == BLOB[:10]

    async def impossible(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, headers={"Content-Range": "bytes 0-9/5"}, content=BLOB[:10])

    p, _ = provider(impossible)
    with pytest.raises(TransferFailed, match="unusable Content-Range"):
        await p.fetch(Source(URL), 0, 10, MemorySink(0))


async def test_retry_after_is_capped_by_max_delay(autojump_clock: trio.abc.Clock) -> None:
    p, _ = provider(script(status(503, {"Retry-After": "3600"}), ok))
    delays: list[float] = []
    policy = RetryPolicy(attempts=3, max_delay=5, deadline=60)
    await fetch_with_retry(
        p, SOURCE, 0, 10, MemorySink(0), policy, on_retry=lambda _n, _e, d: delays.append(d)
    )
    assert delays == [5.0]


async def test_retries_exhausted_name_the_attempts_and_the_last_cause() -> None:
    p, rec = provider(status(503))
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001, deadline=30)
    with pytest.raises(TransferFailed, match=r"after 3 attempts: .*HTTP 503") as info:
        await fetch_with_retry(p, SOURCE, 0, 10, MemorySink(0), policy)
    assert not isinstance(info.value, TransientError)
    assert len(rec.requests) == 3


async def test_deadline_exceeded_is_a_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def hangs(request: httpx.Request) -> httpx.Response:
        await trio.sleep(10_000)
        raise AssertionError("unreachable")

    p, _ = provider(hangs)
    began = trio.current_time()
    with pytest.raises(Timeout, match="within the 5s deadline"):
        await fetch_with_retry(p, SOURCE, 0, 10, MemorySink(0), RetryPolicy(deadline=5))
    assert trio.current_time() - began == pytest.approx(5, abs=0.1)


async def test_a_wait_past_the_deadline_gives_up_at_once(autojump_clock: trio.abc.Clock) -> None:
    p, rec = provider(status(503, {"Retry-After": "50"}))
    began = trio.current_time()
    with pytest.raises(Timeout, match=r"last cause: .*HTTP 503"):
        await fetch_with_retry(
            p, SOURCE, 0, 10, MemorySink(0), RetryPolicy(max_delay=60, deadline=20)
        )
    assert trio.current_time() - began < 1 and len(rec.requests) == 1


async def test_connection_errors_and_read_timeouts_are_transient() -> None:
    for exc in (httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout):

        async def fails(request: httpx.Request, exc: type[Exception] = exc) -> httpx.Response:
            raise exc("boom")

        p, _ = provider(fails)
        with pytest.raises(TransientError):
            await p.fetch(SOURCE, 0, 10, MemorySink(0))


async def test_host_headers_reach_their_host_only_and_never_a_cause() -> None:
    seen: dict[str, str | None] = {}

    async def redirects(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("girder-token")
        if request.url.host == "data.example":
            return httpx.Response(302, headers={"Location": "http://mirror.example/file.bin"})
        return httpx.Response(403)

    headers = {"data.example": {"Girder-Token": "s3cret-token"}}
    p, _ = provider(redirects, http_headers=headers)
    with pytest.raises(AccessDenied) as info:
        await p.fetch(SOURCE, 0, 10, MemorySink(0))
    assert seen == {"data.example": "s3cret-token", "mirror.example": None}
    assert "s3cret" not in str(info.value)


async def test_query_strings_stay_out_of_causes() -> None:
    p, _ = provider(status(404))
    with pytest.raises(NotFound) as info:
        await p.fetch(Source(URL + "?signature=s3cret"), 0, 10, MemorySink(0))
    assert "s3cret" not in str(info.value)


async def test_size_uses_head_then_falls_back_to_a_one_byte_get() -> None:
    async def head_ok(request: httpx.Request) -> httpx.Response:
        assert request.method == "HEAD"
        return httpx.Response(200, headers={"Content-Length": "4242"})

    p, _ = provider(head_ok)
    assert await p.size(SOURCE) == 4242

    async def no_head(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(405)
        return ranged(request)

    p, rec = provider(no_head)
    assert await p.size(SOURCE) == len(BLOB)
    assert rec.ranges == [None, "bytes=0-0"]


async def test_sink_errors_propagate_unchanged() -> None:
    class Full:
        async def write(self, offset: int, data: bytes | memoryview) -> None:
            raise WtfsError("store full")

    p, rec = provider(ok)
    with pytest.raises(WtfsError, match="store full"):
        await fetch_with_retry(p, SOURCE, 0, 1000, Full(), FAST)
    assert len(rec.requests) == 1


async def test_aclose_closes_the_pool_and_a_later_fetch_reopens_it() -> None:
    p, _ = provider(ok)
    sink = MemorySink(0)
    await p.fetch(SOURCE, 0, 10, sink)
    await p.aclose()
    await p.aclose()
    sink = MemorySink(0)
    await p.fetch(SOURCE, 0, 10, sink)
    assert sink.data == BLOB[:10]
    await p.aclose()


# ---- the retry layer's own guarantees, with a fake provider ---------------------------------


class Scripted(Provider):
    """Writes BLOB[start:end] in 1000-byte pieces, misbehaving as told on each call."""

    schemes = ("fake",)

    def __init__(self, *behaviours: str) -> None:
        super().__init__(ProviderSettings())
        self.behaviours = list(behaviours)
        self.calls: list[tuple[int, int]] = []

    async def size(self, source: Source) -> int:
        return len(BLOB)

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        self.calls.append((start, end))
        how = self.behaviours.pop(0) if self.behaviours else "ok"
        if how == "rewind":
            await sink.write(start - 1, BLOB[start - 1 : start])
        for offset in range(start, end, 1000):
            if how == "short" and offset >= start + 3000:
                return
            await sink.write(offset, BLOB[offset : min(end, offset + 1000)])


async def test_a_provider_returning_short_is_resumed() -> None:
    p = Scripted("short", "short")
    sink = MemorySink(0)
    await fetch_with_retry(p, SOURCE, 0, 10_000, sink, FAST)
    assert sink.data == BLOB[:10_000]
    assert p.calls == [(0, 10_000), (3000, 10_000), (6000, 10_000)]


async def test_a_provider_writing_out_of_order_is_stopped_before_the_sink() -> None:
    p = Scripted("ok", "rewind")
    sink = MemorySink(0)
    await fetch_with_retry(p, SOURCE, 0, 5000, sink, FAST)
    with pytest.raises(TransferFailed, match="out of order"):
        await fetch_with_retry(p, SOURCE, 100, 5000, MemorySink(100), FAST)
