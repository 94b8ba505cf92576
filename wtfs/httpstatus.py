"""HTTP answers and httpx failures as wtfs errors: the one mapping every HTTP client here uses.

Three parts of wtfs speak HTTP: the Girder client's metadata calls (`wtfs/girder/client.py`),
Girder downloads (`wtfs/providers/girder.py`) and http(s) sources (`wtfs/providers/http.py`).
When each mapped statuses itself they drifted apart (only one read an HTTP-date `Retry-After`,
their Content-Range patterns differed, 408 and 410 meant different things), so what an answer
*means* is decided here once. Callers word the cause and keep what is theirs alone: Girder's 400
for an id it does not have, its 500 for names it cannot put in a header, a 416 to a size probe.

It sits beside `wtfs/errors.py`, below both the Girder client and the providers, because the
providers use the Girder client: a module inside `wtfs/providers` would make the client import
upward.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

import httpx

from wtfs.errors import AccessDenied, NotFound, TransferFailed, TransientError, WtfsError

#: the server refuses these credentials (or has none): asking again cannot help
DENIED = frozenset({401, 403})
#: there is no such object (410: there was one, it is gone for good)
MISSING = frozenset({404, 410})
#: 408 Request Timeout and 429 Too Many Requests; every 5xx is transient too
TRANSIENT = frozenset({408, 429})

# RFC 9110 §14.4: `bytes first-last/complete-length`, where the length may be `*` (unknown).
# Strict (the whole value must match), case-insensitive, white space tolerated around the value
# and after `bytes`.
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
# A 416's `bytes */complete-length`: how long the representation really is.
_UNSATISFIED = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ContentRange:
    """A parsed `Content-Range`: bytes `first`..`last` inclusive of `total` (None: unknown)."""

    first: int
    last: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """The range a 206 says it carries, or None when the header is absent or unusable.

    Unusable includes `last < first` and a `last` past a known total: bytes that cannot be
    where the header says they are must never be written anywhere.
    """
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def unsatisfied_length(value: str | None) -> int | None:
    """The complete length a 416 states (`bytes */N`), or None when it does not say."""
    match = _UNSATISFIED.match(value or "")
    return int(match.group(1)) if match else None


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks us to wait, or None when absent or unreadable.

    RFC 9110 §10.2.3 allows delay-seconds or an HTTP-date; a date in the past means now (0).
    Callers cap the wait themselves: a server's hint must not hold a reader forever.
    """
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # `-0000` or no zone: HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_transient(status: int) -> bool:
    """Whether an answer with this status is worth asking again (after `retry_after`)."""
    return status in TRANSIENT or 500 <= status <= 599


def status_error(status: int, headers: Mapping[str, str], cause: str) -> WtfsError:
    """The error for an answer the caller cannot use, with `cause` as its human reason.

    401/403 are AccessDenied, 404/410 NotFound, 408/429/5xx TransientError carrying the
    server's Retry-After, anything else a permanent TransferFailed marked as unexpected.
    """
    if status in DENIED:
        return AccessDenied(cause)
    if status in MISSING:
        return NotFound(cause)
    if is_transient(status):
        return TransientError(cause, resume_after=retry_after(headers))
    return TransferFailed(f"{cause} (unexpected answer)")


def transport_error(
    exc: httpx.HTTPError,
    what: str,
    *,
    peer: str = "the server",
    at: int | None = None,
    unreachable: type[TransientError] = TransientError,
) -> WtfsError:
    """The error for an exchange that failed below HTTP (no usable answer at all).

    Timeouts, refused or reset connections and broken framing are transient; a redirect loop
    or a protocol httpx cannot speak is permanent: asking again would fail the same way.
    `peer` names the other side in the cause, `at` the byte the body stopped at,
    `unreachable` the class for a connection that could not be made (Girder has its own).
    """
    where = f" at byte {at}" if at is not None else ""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{what}: {peer} did not answer in time ({kind}{where})")
    if isinstance(exc, httpx.ConnectError):
        return unreachable(f"{what}: cannot reach {peer} ({kind}: {exc})")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return TransientError(f"{what}: connection to {peer} failed{where}: {kind}: {exc}")
    if isinstance(exc, httpx.TooManyRedirects):
        return TransferFailed(f"{what}: too many redirects")
    return TransferFailed(f"{what}: HTTP request failed{where}: {kind}: {exc}")
