"""Girder downloads and metadata calls, every status, against `httpx.MockTransport`.

What the real dev Girder answers is checked on real mounts: tests/mount/test_faults.py (500,
503, 429 with Retry-After, resets, stalls, 401, an unreachable server, a file deleted after its
folder was listed) and tests/mount/test_mount.py.
"""

from __future__ import annotations

import email.utils
import errno
import random
import re
import time
from collections.abc import Callable

import httpx
import pytest
import trio

from tests.support.sinks import Body, MemorySink
from wtfs.errors import (
    AccessDenied,
    GirderUnavailable,
    NotFound,
    SizeMismatch,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.girder.client import BadRequest, GirderClient
from wtfs.providers.base import ProviderSettings, Source
from wtfs.providers.girder import GirderProvider
from wtfs.providers.retry import RetryPolicy, fetch_with_retry

BLOB = random.Random(2).randbytes(10_000)
FILE_ID = "6b0f66eba3b545e2c996a69a"
SOURCE = Source(f"girder://file/{FILE_ID}", len(BLOB), label="x.bin")
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, deadline=30)
# Girder's own words for an id it does not have (the dev Girder, for a deleted file)
INVALID_ID = {"message": f"Invalid file id ({FILE_ID}).", "type": "rest"}

Handler = Callable[[httpx.Request], httpx.Response]


class Girder:
    """A GirderClient and a GirderProvider over a handler; counts the requests it saw."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        # https: downloads go through httpx (the raw receive path is for plain http only)
        self.client = GirderClient(
            "https://girder.test/api/v1", None, transport=httpx.MockTransport(record)
        )
        self.provider = GirderProvider(ProviderSettings(), self.client)


def answer(code: int, headers: dict[str, str] | None = None, **kwargs: object) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, headers=headers, **kwargs)  # type: ignore[arg-type]

    return handle


def ranged(request: httpx.Request) -> httpx.Response:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["range"])
    assert m is not None
    first, last = int(m.group(1)), min(int(m.group(2)), len(BLOB) - 1)
    headers = {"Content-Range": f"bytes {first}-{last}/{len(BLOB)}"}
    return httpx.Response(206, headers=headers, stream=Body(BLOB[first : last + 1]))


def then(first: Handler, rest: Handler) -> Handler:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return first(request) if calls == 1 else rest(request)

    return handle


# --- downloads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (401, AccessDenied),  # no API key to refresh a token with
        (403, AccessDenied),
        (404, NotFound),
        (410, NotFound),
        (418, TransferFailed),
        (204, TransferFailed),
    ],
)
async def test_a_permanent_download_answer_fails_at_once(code: int, kind: type[WtfsError]) -> None:
    g = Girder(answer(code))
    sink = MemorySink(0)
    with pytest.raises(kind, match=f"x.bin: Girder answered {code}") as info:
        await fetch_with_retry(g.provider, SOURCE, 0, 100, sink, FAST)
    assert type(info.value) is kind
    assert len(g.requests) == 1 and sink.received == 0


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
async def test_a_transient_download_answer_is_retried(code: int) -> None:
    g = Girder(then(answer(code), ranged))
    sink = MemorySink(100)
    await fetch_with_retry(g.provider, SOURCE, 100, 5000, sink, FAST)
    assert sink.data == BLOB[100:5000]
    assert len(g.requests) == 2


async def test_a_file_deleted_in_girder_is_enoent_not_eio() -> None:
    g = Girder(answer(400, json=INVALID_ID))
    with pytest.raises(NotFound) as info:
        await fetch_with_retry(g.provider, SOURCE, 0, 100, MemorySink(0), FAST)
    assert info.value.cause == "x.bin: deleted in Girder"
    assert info.value.errno == errno.ENOENT
    assert len(g.requests) == 1


async def test_the_size_of_a_file_deleted_in_girder_is_not_found_too() -> None:
    g = Girder(answer(400, json=INVALID_ID))
    with pytest.raises(NotFound) as info:
        await g.provider.size(SOURCE)
    assert info.value.cause == "x.bin: deleted in Girder"
    assert [r.url.path for r in g.requests] == [f"/api/v1/file/{FILE_ID}"]


async def test_size_is_girders() -> None:
    g = Girder(answer(200, json={"_id": FILE_ID, "size": 1234}))
    assert await g.provider.size(SOURCE) == 1234


@pytest.mark.parametrize(
    "retry_after",
    ["3600", email.utils.formatdate(time.time() + 3600, usegmt=True)],
    ids=["seconds", "http-date"],
)
async def test_429_retry_after_is_honoured_in_both_forms(
    autojump_clock: trio.abc.Clock, retry_after: str
) -> None:
    g = Girder(then(answer(429, {"Retry-After": retry_after}), ranged))
    delays: list[float] = []
    policy = RetryPolicy(attempts=3, max_delay=9, deadline=60)
    await fetch_with_retry(
        g.provider, SOURCE, 0, 10, MemorySink(0), policy, on_retry=lambda *a: delays.append(a[2])
    )
    assert delays == [9.0]  # an hour, capped by max_delay


async def test_a_name_girder_cannot_put_in_a_header_is_a_permanent_explained_500() -> None:
    g = Girder(answer(500))
    source = Source(SOURCE.url, SOURCE.size, label="smørbrød.bin")
    with pytest.raises(TransferFailed, match="rename the file in Girder") as info:
        await fetch_with_retry(g.provider, source, 0, 10, MemorySink(0), FAST)
    assert not isinstance(info.value, TransientError)
    assert len(g.requests) == 1


async def test_416_is_a_size_mismatch_with_girders_length() -> None:
    g = Girder(answer(416, {"Content-Range": "bytes */5000"}))
    with pytest.raises(SizeMismatch, match="Girder says it has 5000 bytes"):
        await g.provider.fetch(SOURCE, 6000, 7000, MemorySink(6000))


async def test_content_range_is_read_case_insensitively_and_strictly() -> None:
    def shouting(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            206, headers={"Content-Range": f" BYTES  10-19/{len(BLOB)} "}, stream=Body(BLOB[10:20])
        )

    sink = MemorySink(10)
    await Girder(shouting).provider.fetch(SOURCE, 10, 20, sink)
    assert sink.data == BLOB[10:20]
    for bad in ("bytes 19-10/10000", "bytes 10-19", "bytes 10-19/10000 and more", "bytes */1"):
        g = Girder(answer(206, {"Content-Range": bad}, stream=Body(BLOB[10:20])))
        with pytest.raises(TransferFailed, match="unusable Content-Range"):
            await g.provider.fetch(SOURCE, 10, 20, MemorySink(10))


async def test_a_range_past_eof_answered_with_the_whole_file_skips_its_head() -> None:
    # Girder 5 answers a range starting at or past the end with 206 and all of the file.
    whole = {"Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"}
    sink = MemorySink(9000)
    await Girder(answer(206, whole, stream=Body(BLOB))).provider.fetch(SOURCE, 9000, 10_000, sink)
    assert sink.data == BLOB[9000:]


async def test_an_unreachable_girder_is_girder_unavailable_and_retried() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    g = Girder(refused)
    with pytest.raises(GirderUnavailable, match="cannot reach Girder"):
        await g.provider.fetch(SOURCE, 0, 10, MemorySink(0))
    with pytest.raises(TransferFailed, match=r"after 3 attempts: .*cannot reach Girder"):
        await fetch_with_retry(g.provider, SOURCE, 0, 10, MemorySink(0), FAST)


async def test_a_redirect_loop_is_permanent() -> None:
    def loops(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": str(request.url)})

    g = Girder(loops)
    with pytest.raises(TransferFailed, match="too many redirects") as info:
        await g.provider.fetch(SOURCE, 0, 10, MemorySink(0))
    assert not isinstance(info.value, TransientError)


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, BadRequest),
        (401, AccessDenied),
        (403, AccessDenied),
        (404, NotFound),
        (410, NotFound),
        (418, TransferFailed),
    ],
)
async def test_a_permanent_metadata_answer_fails_at_once(code: int, kind: type[WtfsError]) -> None:
    g = Girder(answer(code, json={"message": "no"}))
    with pytest.raises(kind, match=f"GET item/x: Girder answered {code}: no") as info:
        await g.client.get_json("item/x")
    assert type(info.value) is kind
    assert len(g.requests) == 1


@pytest.mark.parametrize(
    ("code", "retry_after", "waited"),
    [
        (408, None, 0.2),  # no hint: the client's own backoff
        (429, "2", 2.0),
        (503, email.utils.formatdate(time.time() + 3600, usegmt=True), 5.0),  # capped at 5 s
    ],
)
async def test_a_transient_metadata_answer_is_retried_as_the_server_says(
    autojump_clock: trio.abc.Clock, code: int, retry_after: str | None, waited: float
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    g = Girder(then(answer(code, headers), answer(200, json={"ok": True})))
    began = trio.current_time()
    assert await g.client.get_json("item/x") == {"ok": True}
    assert trio.current_time() - began == pytest.approx(waited, abs=0.01)
    assert len(g.requests) == 2


async def test_resolve_falls_back_from_item_to_folder_on_girders_400() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/item/abc"):
            return httpx.Response(400, json={"message": "Invalid item id (abc)."})
        return httpx.Response(200, json={"_id": "abc", "name": "f"})

    assert await Girder(handle).client.resolve("abc") == ("folder", {"_id": "abc", "name": "f"})
