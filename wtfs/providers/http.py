"""HTTP(S) sources: ranged GETs streamed into the sink.

One pooled `httpx.AsyncClient` per provider. Every fetch asks for exactly the bytes it needs
(`Range: bytes=start-(end-1)`) and checks the answer before writing anything:

* 206 must carry a Content-Range that starts where we asked and ends where we asked (or says
  the source is too short: `SizeMismatch`); anything else is refused.
* 200 means the server ignored Range (Python's `http.server`, some proxies and CDNs). The body
  is then the whole source from byte 0: we stream it, *discard* the bytes before `start`, write
  [start, end) and hang up. Trusting such an answer as if it began at `start` is how peers
  served corrupt bytes; discarding costs bandwidth, never correctness.

Per-host extra headers (`ProviderSettings.http_headers[host]`, e.g. a token) are added by a
request hook on every hop, so a redirect to another host never carries them along. Their values
are never logged nor put in an error cause; nor is a URL's query string (signed URLs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from wtfs.errors import SizeMismatch, TransferFailed, TransientError, WtfsError
from wtfs.httpstatus import (
    DENIED,
    parse_content_range,
    status_error,
    transport_error,
    unsatisfied_length,
)
from wtfs.providers.base import Provider, ProviderSettings, Sink, Source, check_range
from wtfs.providers.urls import describe

if TYPE_CHECKING:
    from wtfs.girder.client import GirderClient

log = logging.getLogger(__name__)


class HttpProvider(Provider):
    schemes = ("http", "https")
    supports_ranges = True

    def __init__(
        self,
        settings: ProviderSettings,
        girder: GirderClient | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network (tests pass an `httpx.MockTransport`)."""
        super().__init__(settings, girder)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._host_headers = {
            host.lower(): dict(headers) for host, headers in settings.http_headers.items()
        }
        self._header_names = frozenset(
            name.lower() for headers in self._host_headers.values() for name in headers
        )
        self._ignores_range: set[str] = set()

    @classmethod
    def with_transport(
        cls, settings: ProviderSettings, transport: httpx.AsyncBaseTransport
    ) -> HttpProvider:
        """A provider whose requests go to `transport` instead of the network (tests)."""
        return cls(settings, transport=transport)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            opts = s.options.get("http", {})
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=s.connect_timeout,
                    read=s.read_timeout,
                    write=s.read_timeout,
                    # Waiting for a free pooled connection is not the server's fault, but it
                    # must still end: the retry layer treats it as transient.
                    pool=s.read_timeout,
                ),
                limits=httpx.Limits(
                    max_connections=int(opts.get("max_connections", 32)),
                    max_keepalive_connections=int(opts.get("max_keepalive_connections", 16)),
                ),
                follow_redirects=True,
                max_redirects=int(opts.get("max_redirects", 10)),
                # Byte offsets in Range refer to the encoded body: ask for no encoding at all.
                headers={"Accept-Encoding": "identity", "User-Agent": "wtfs"},
                event_hooks={"request": [self._apply_host_headers]},
                transport=self._transport,
            )
        return self._client

    async def _apply_host_headers(self, request: httpx.Request) -> None:
        # Runs on every hop of a redirect chain: drop what the previous host was given, then
        # add what this host is configured for.
        for name in self._header_names:
            request.headers.pop(name, None)
        host = request.url.host.lower()
        keys = [f"{host}:{request.url.port}", host] if request.url.port is not None else [host]
        for key in keys:
            extra = self._host_headers.get(key)
            if extra is not None:
                request.headers.update(extra)
                break

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def size(self, source: Source) -> int:
        name = describe(source)
        client = self._http()
        try:
            head = await client.head(source.url)
            if head.status_code == 200:
                length = _content_length(head)
                if length is not None and not _encoded(head):
                    return length
            # Some servers (signed-URL stores) refuse HEAD but allow GET, or omit the length.
            elif head.status_code not in (400, 403, 405, 501):
                raise _status_error(head, name)
            async with client.stream("GET", source.url, headers={"Range": "bytes=0-0"}) as r:
                if r.status_code == 206:
                    parsed = parse_content_range(r.headers.get("content-range"))
                    if parsed is not None and parsed.total is not None:
                        return parsed.total
                    raise TransferFailed(f"{name}: 206 answer without a usable total size")
                if r.status_code == 200:
                    length = _content_length(r)
                    if length is not None and not _encoded(r):
                        return length
                    raise TransferFailed(f"{name}: the server does not tell the size")
                if r.status_code == 416:
                    total = unsatisfied_length(r.headers.get("content-range"))
                    if total is not None:
                        return total  # only an empty source cannot satisfy bytes=0-0
                raise _status_error(r, name)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, name, source.url) from exc
        except httpx.InvalidURL as exc:
            raise TransferFailed(f"{name}: invalid URL") from exc

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        check_range(start, end)
        if start == end:
            return
        name = describe(source)
        client = self._http()
        pos = start
        try:
            request_headers = {"Range": f"bytes={start}-{end - 1}"}
            async with client.stream("GET", source.url, headers=request_headers) as response:
                pos = self._body_offset(response, source, start, end, name)
                # A 206 body is exactly the range: read it to its end so the connection goes
                # back to the pool. A 200 body may go on past `end`: stop and hang up.
                stop_early = response.status_code == 200
                async for chunk in response.aiter_bytes():
                    chunk_end = pos + len(chunk)
                    lo = max(start - pos, 0)
                    hi = min(end - pos, len(chunk))
                    if hi > lo:
                        data = chunk if lo == 0 and hi == len(chunk) else chunk[lo:hi]
                        await sink.write(pos + lo, data)
                    pos = chunk_end
                    if stop_early and pos >= end:
                        break
        except httpx.HTTPError as exc:
            raise _transport_error(exc, name, source.url, at=max(pos, start)) from exc
        except httpx.InvalidURL as exc:
            raise TransferFailed(f"{name}: invalid URL") from exc
        if pos < end:
            raise TransientError(f"{name}: body ended at byte {pos}, expected bytes up to {end}")

    def _body_offset(
        self, response: httpx.Response, source: Source, start: int, end: int, name: str
    ) -> int:
        """Check the answer before any byte is written; return the offset of its first byte."""
        status = response.status_code
        if status == 206:
            header = response.headers.get("content-range")
            parsed = parse_content_range(header)
            if parsed is None:
                raise TransferFailed(f"{name}: 206 answer with unusable Content-Range {header!r}")
            first, last, total = parsed.first, parsed.last, parsed.total
            if total is not None and source.size is not None and total != source.size:
                raise SizeMismatch(
                    f"{name}: server says the source has {total} bytes, the item {source.size}"
                )
            if first == start and last + 1 < end and total is not None and total < end:
                raise SizeMismatch(
                    f"{name}: source has {total} bytes, bytes up to {end} were expected"
                )
            if first != start or last + 1 != end:
                raise TransferFailed(
                    f"{name}: asked for bytes {start}-{end - 1}, server sent {header!r}"
                )
            length = _content_length(response)
            if length is not None and length != end - start:
                raise TransferFailed(
                    f"{name}: Content-Length {length} disagrees with Content-Range {header!r}"
                )
            _refuse_encoded(response, name)
            return start
        if status == 200:
            _refuse_encoded(response, name)
            length = _content_length(response)
            if length is not None and source.size is not None and length != source.size:
                raise SizeMismatch(
                    f"{name}: server says the source has {length} bytes, the item {source.size}"
                )
            if length is not None and length < end:
                raise SizeMismatch(
                    f"{name}: source has {length} bytes, bytes up to {end} were expected"
                )
            if start > 0:
                host = response.url.host
                if host not in self._ignores_range:
                    self._ignores_range.add(host)
                    log.info(
                        "%s ignores Range requests: streaming from byte 0 and discarding "
                        "the bytes before each range start",
                        host,
                    )
            return 0
        if status == 416:
            total = unsatisfied_length(response.headers.get("content-range"))
            said = f" (server says the source has {total} bytes)" if total is not None else ""
            raise SizeMismatch(f"{name}: bytes {start}-{end - 1} are not satisfiable{said}")
        raise _status_error(response, name)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _encoded(response: httpx.Response) -> bool:
    encoding: str = response.headers.get("content-encoding", "identity")
    return encoding.strip().lower() != "identity"


def _refuse_encoded(response: httpx.Response, name: str) -> None:
    if _encoded(response):
        encoding = response.headers.get("content-encoding")
        raise TransferFailed(f"{name}: server sent a {encoding!r}-encoded body despite identity")


def _status_error(response: httpx.Response, name: str) -> WtfsError:
    status = response.status_code
    what = f"{name}: HTTP {status} {response.reason_phrase}".rstrip()
    if status in DENIED:
        what += " (check the credentials configured for this host)"
    return status_error(status, response.headers, what)


def _transport_error(exc: httpx.HTTPError, name: str, url: str, at: int | None = None) -> WtfsError:
    return transport_error(exc, name, peer=urlsplit(url).hostname or "the server", at=at)
