"""Girder's own download: `girder://file/<fileId>` → `GET /file/{id}/download` with `Range`.

Quirks handled (see shared notes): a range past EOF answers 206 with the *whole* file, so the
answer's Content-Range is checked and bytes before `start` are skipped rather than trusted; file
names Girder cannot put in a Content-Disposition header (ø, æ, ß ...) make it answer 500 for
that file, which is reported as a permanent, explained failure instead of being retried forever.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import httpx

from wtfs.errors import (
    AccessDenied,
    NotFound,
    SizeMismatch,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.girder.rawhttp import Response
from wtfs.providers.base import Provider, Sink, Source

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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
        document = await self.girder.get_json(f"file/{self._file_id(source)}")
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
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{source.label}: Girder download timed out ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise TransientError(f"{source.label}: Girder download interrupted: {exc!r}") from None

    def _check(self, response: Response, source: Source, start: int, end: int) -> int:
        """Validate the answer; return how many leading body bytes to skip."""
        code = response.status_code
        label = source.label or "file"
        if code in (401, 403):
            raise AccessDenied(f"{label}: Girder refused the download ({code})")
        if code == 404:
            raise NotFound(f"{label}: Girder has no such file (404)")
        if code == 416:
            raise SizeMismatch(
                f"{label}: range {start}-{end - 1} is past the end of the file in Girder"
            )
        if code >= 500 and _girder_cannot_name(source.label):
            raise TransferFailed(
                f"{label}: Girder answered {code}: it cannot serve files whose name has letters "
                "such as ø, æ or ß (a Girder bug in its Content-Disposition header); rename the "
                "file in Girder"
            )
        if code == 429 or code >= 500:
            retry_after = response.headers.get("Retry-After", "")
            raise TransientError(
                f"{label}: Girder answered {code}",
                resume_after=float(retry_after) if retry_after.isdigit() else None,
            )
        if code == 200:
            total = response.headers.get("Content-Length")
            if source.size is not None and total is not None and int(total) != source.size:
                raise SizeMismatch(f"{label}: Girder sent {total} bytes, expected {source.size}")
            return start  # the whole file from byte 0
        if code != 206:
            raise TransferFailed(f"{label}: unexpected answer {code} from Girder")
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None:
            raise TransferFailed(f"{label}: Girder sent 206 without a usable Content-Range")
        first, _last, total = int(match.group(1)), int(match.group(2)), match.group(3)
        if total != "*" and source.size is not None and int(total) != source.size:
            raise SizeMismatch(
                f"{label}: Girder says the file has {total} bytes, expected {source.size}"
            )
        if first > start:
            raise TransferFailed(f"{label}: Girder answered range from {first}, asked {start}")
        return start - first  # a range past EOF comes back as the whole file: skip its head

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
