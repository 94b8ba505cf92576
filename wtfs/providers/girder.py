"""Girder's own download: `girder://file/<fileId>` → `GET /file/{id}/download` with `Range`.

Girder 5's quirks, as the dev Girder shows them: a range past EOF answers 206 with the *whole*
file, so the answer's Content-Range is checked and bytes before `start` are skipped rather than
trusted; a file deleted after its folder was listed answers 400 "Invalid file id" (on
`/file/{id}` too), which is the file going away, ENOENT, not an I/O error; file names Girder
cannot put in a Content-Disposition header (ø, æ, ß ...) make it answer 500 for that file, which
is reported as a permanent, explained failure instead of being retried forever. Every other
status means what `wtfs.httpstatus` says it means.
"""

from __future__ import annotations

import logging
import unicodedata

import httpx

from wtfs.errors import NotFound, SizeMismatch, TransferFailed, TransientError, WtfsError
from wtfs.girder.client import BadRequest, network_error
from wtfs.girder.rawhttp import Response
from wtfs.httpstatus import parse_content_range, status_error, unsatisfied_length
from wtfs.providers.base import Provider, Sink, Source

log = logging.getLogger(__name__)


def deleted_in_girder(label: str) -> NotFound:
    """Girder answers 400 "Invalid file id" for a file it no longer has (deleted after the
    folder was listed): to the reader that is a name that went away, ENOENT, not an EIO. One
    wording wherever it is found (a download, the tree's version check)."""
    return NotFound(f"{label or 'file'}: deleted in Girder")


def _deleted(source: Source) -> NotFound:
    return deleted_in_girder(source.label)


def _girder_cannot_name(name: str) -> bool:
    """Whether Girder's Content-Disposition code fails on this name (its latin-1 fallback)."""
    try:
        safe = unicodedata.normalize("NFKD", name).encode("iso8859-1", "ignore")
        safe.decode("utf8")
    except UnicodeDecodeError:
        return True
    return False


class GirderProvider(Provider):
    schemes = ("girder",)
    supports_ranges = True

    def _file_id(self, source: Source) -> str:
        kind, _, file_id = source.url.removeprefix("girder://").partition("/")
        if kind != "file" or not file_id:
            raise TransferFailed(f"bad Girder source URL {source.url!r}")
        return file_id

    async def size(self, source: Source) -> int:
        if self.girder is None:
            raise TransferFailed("no Girder API URL is configured")
        try:
            document = await self.girder.get_json(f"file/{self._file_id(source)}")
        except BadRequest:
            raise _deleted(source) from None
        return int(document["size"])

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        if self.girder is None:
            raise TransferFailed("no Girder API URL is configured")
        if end <= start:
            return
        file_id = self._file_id(source)
        # identity: the body is copied raw, so it must not be compressed on the way
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        try:
            async with self.girder.stream(f"file/{file_id}/download", headers) as response:
                skip = self._check(response, source, start, end)
                await self._copy(response, sink, start, end, skip)
        except WtfsError:
            raise
        except httpx.HTTPError as exc:
            raise network_error(exc, f"{source.label or 'file'}: download") from None

    def _check(self, response: Response, source: Source, start: int, end: int) -> int:
        """Validate the answer; return how many leading body bytes to skip."""
        code = response.status_code
        label = source.label or "file"
        if code == 200:
            total = response.headers.get("Content-Length")
            if source.size is not None and total is not None and int(total) != source.size:
                raise SizeMismatch(f"{label}: Girder sent {total} bytes, expected {source.size}")
            return start  # the whole file from byte 0
        if code == 206:
            return self._range_skip(response, label, source, start)
        if code == 400:
            raise _deleted(source)
        if code == 416:
            total = unsatisfied_length(response.headers.get("Content-Range"))
            said = f" (Girder says it has {total} bytes)" if total is not None else ""
            raise SizeMismatch(
                f"{label}: range {start}-{end - 1} is past the end of the file in Girder{said}"
            )
        if code >= 500 and _girder_cannot_name(source.label):
            raise TransferFailed(
                f"{label}: Girder answered {code}: it cannot serve files whose name has letters "
                "such as ø, æ or ß (a Girder bug in its Content-Disposition header); rename the "
                "file in Girder"
            )
        raise status_error(code, response.headers, f"{label}: Girder answered {code}")

    @staticmethod
    def _range_skip(response: Response, label: str, source: Source, start: int) -> int:
        """How many leading bytes of a 206 body to skip: Girder may start before `start` (never
        after), and its total must be the item's size, or the bytes are not the item's."""
        header = response.headers.get("Content-Range")
        parsed = parse_content_range(header)
        if parsed is None:
            raise TransferFailed(
                f"{label}: Girder sent 206 with an unusable Content-Range {header!r}"
            )
        if parsed.total is not None and source.size is not None and parsed.total != source.size:
            raise SizeMismatch(
                f"{label}: Girder says the file has {parsed.total} bytes, expected {source.size}"
            )
        if parsed.first > start:
            raise TransferFailed(
                f"{label}: Girder answered range from {parsed.first}, asked {start}"
            )
        return start - parsed.first  # a range past EOF comes back as the whole file: skip its head

    async def _copy(self, response: Response, sink: Sink, start: int, end: int, skip: int) -> None:
        offset = start
        async for chunk in response.aiter_raw():
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if offset + len(chunk) > end:
                chunk = chunk[: end - offset]
            if chunk:
                await sink.write(offset, chunk)
                offset += len(chunk)
            if offset >= end:
                return
        if offset < end:
            raise TransientError(f"Girder download ended at byte {offset}, expected {end}")
