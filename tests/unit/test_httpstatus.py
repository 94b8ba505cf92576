"""The one HTTP status → wtfs error mapping (wtfs/httpstatus.py), for every client using it.

Each client's own contract tests (tests/providers/test_http_contract.py,
tests/providers/test_girder_contract.py) and the real servers behind them check that the
clients use it; these pin what it says.
"""

from __future__ import annotations

import email.utils

import httpx
import pytest

from wtfs.errors import (
    AccessDenied,
    GirderUnavailable,
    NotFound,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.httpstatus import (
    ContentRange,
    parse_content_range,
    retry_after,
    status_error,
    transport_error,
    unsatisfied_length,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, TransferFailed),
        (401, AccessDenied),
        (403, AccessDenied),
        (404, NotFound),
        (405, TransferFailed),
        (408, TransientError),
        (410, NotFound),
        (418, TransferFailed),
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
        (599, TransientError),
        (302, TransferFailed),
        (204, TransferFailed),
    ],
)
def test_each_status_maps_to_one_error(status: int, kind: type[WtfsError]) -> None:
    error = status_error(status, {}, f"x: HTTP {status}")
    assert type(error) is kind
    assert error.cause.startswith(f"x: HTTP {status}")
    if kind is TransferFailed:
        assert "unexpected answer" in error.cause  # not retried, and says it was a surprise


@pytest.mark.parametrize("status", [408, 429, 503])
def test_transient_answers_carry_retry_after(status: int) -> None:
    error = status_error(status, httpx.Headers({"Retry-After": "7"}), "x")
    assert isinstance(error, TransientError) and error.resume_after == 7.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW + 30, localtime=False), 30.0),  # "-0000": still GMT
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # in the past: now
        ("Tue, 14 Nov 2023 22:30:00 GMT", 1_000.0),  # NOW is 22:13:20 that day
        ("Tuesday, 14-Nov-23 22:30:00 GMT", 1_000.0),  # RFC 850: obsolete, still allowed
        ("Tue Nov 14 22:30:00 2023", 1_000.0),  # asctime: no zone, GMT all the same
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("", None),
    ],
)
def test_retry_after_reads_delay_seconds_and_http_dates(value: str, seconds: float | None) -> None:
    assert retry_after(httpx.Headers({"Retry-After": value}), now=NOW) == seconds


def test_no_retry_after_is_none_and_the_header_name_is_case_insensitive() -> None:
    assert retry_after(httpx.Headers({})) is None
    assert retry_after(httpx.Headers({"retry-AFTER": "4"})) == 4.0


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/1000", ContentRange(0, 99, 1000)),
        ("BYTES 5-5/6", ContentRange(5, 5, 6)),
        ("  bytes   10-19/*  ", ContentRange(10, 19, None)),
        ("bytes 0-99/1000\r\n", ContentRange(0, 99, 1000)),
        ("bytes 9-0/1000", None),  # last before first
        ("bytes 0-1000/1000", None),  # last past the end it states
        ("bytes 0-99", None),
        ("bytes 0-99/1000 extra", None),  # strict: the whole value
        ("bytes=0-99/1000", None),
        ("items 0-99/1000", None),
        ("bytes */1000", None),  # a 416's form: no range carried
        ("", None),
        (None, None),
    ],
)
def test_content_range_is_parsed_strictly(value: str | None, parsed: ContentRange | None) -> None:
    assert parse_content_range(value) == parsed


@pytest.mark.parametrize(
    ("value", "length"),
    [
        ("bytes */5000", 5000),
        (" Bytes   */0 ", 0),
        ("bytes 0-1/5000", None),
        ("bytes */*", None),
        (None, None),
    ],
)
def test_416_states_the_length_as_bytes_star(value: str | None, length: int | None) -> None:
    assert unsatisfied_length(value) == length


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ReadTimeout("slow"), TransientError),
        (httpx.ConnectTimeout("slow"), TransientError),
        (httpx.PoolTimeout("busy"), TransientError),
        (httpx.ConnectError("refused"), TransientError),
        (httpx.ReadError("reset"), TransientError),
        (httpx.WriteError("broken pipe"), TransientError),
        (httpx.RemoteProtocolError("closed early"), TransientError),
        (httpx.TooManyRedirects("loop"), TransferFailed),
        (httpx.UnsupportedProtocol("ftp"), TransferFailed),
        (httpx.LocalProtocolError("bad header"), TransferFailed),
    ],
)
def test_transport_failures_are_transient_unless_asking_again_cannot_help(
    exc: httpx.HTTPError, kind: type[WtfsError]
) -> None:
    error = transport_error(exc, "f.bin", peer="data.example", at=42)
    assert type(error) is kind
    assert error.cause.startswith("f.bin: ")


def test_an_unreachable_peer_is_named_and_may_have_its_own_class() -> None:
    error = transport_error(httpx.ConnectError("refused"), "GET item/x", peer="Girder",
                            unreachable=GirderUnavailable)  # fmt: skip
    assert type(error) is GirderUnavailable
    assert "cannot reach Girder" in error.cause


def test_a_timeout_says_where_the_body_stopped() -> None:
    error = transport_error(httpx.ReadTimeout("slow"), "f.bin", at=4096)
    assert "did not answer in time" in error.cause and "at byte 4096" in error.cause
