"""`GET /dm/lock/{id}/download`: a locked item's bytes, read from the cluster's store.

What a pin is for: a client that is not a mount (a job, a web page) pins an item that a mount
has brought into the store, and downloads it from there, at disk speed, without asking the
item's source again (which may be slow, far, or metered). The bytes come from the item's current
complete entry (`Index.current_entries`; for a mount's lock, the entry it locks), in
`<wtfs.store_path>/data/<file_name>`, with HTTP Range support: `206` with `Content-Range` for
one satisfiable range, `416` with `Content-Range: bytes */SIZE` for an unsatisfiable one, and
the whole file (200) for none, several or a malformed one (RFC 9110 lets a server ignore those).
An item not in the store yet, or not complete, is a 409 that says so.

Bytes may go while they are sent (a mount's GC evicting an entry that only a read lock held, a
window dropping spans of it): the index is read again after each chunk is read and before it is
sent, and the answer is cut short (shorter than its Content-Length, which any client notices)
rather than carry bytes the store no longer vouches for. An index commit comes before every
unlink or punch, so a chunk read before the index still says "complete" is intact. A pinned
item cannot go that way: that is what the pin is for.
"""

# Girder is untyped (Any to mypy), and its REST decorators too.
# mypy: disallow-untyped-decorators=False, disallow-untyped-calls=False

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import cherrypy  # type: ignore[import-untyped]  # Girder's web framework
from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import setContentDisposition, setResponseHeader
from girder.constants import AccessType, TokenScope
from girder.exceptions import RestException
from girder.models.file import File
from girder.models.item import Item
from wtfs_index import EntryRow, Index, IndexFailure, LockRow

from girder_plugin_wtfs.cluster import CLUSTER, answering, store_path
from girder_plugin_wtfs.dm import DataManager
from girder_plugin_wtfs.locks import find_lock, lock_id_param, viewer
from girder_plugin_wtfs.session import object_id

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read, checked against the index, and sent at a time
GIRDER_SOURCE = "girder:"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Unsatisfiable(Exception):
    """The Range names no byte of the file (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) that a Range header asks of `size` bytes; None: send the whole file.

    One range only (`bytes=A-B`, `bytes=A-`, `bytes=-N`); several ranges or a malformed header
    are ignored, as RFC 9110 §14.2 allows. A range starting at or past the end, or a suffix of
    0 bytes, raises `Unsatisfiable`.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = size if not last else min(int(last) + 1, size)
    return start, end


def chosen_entry(index: Index, lock: LockRow, file_id: str | None) -> EntryRow:
    """The entry whose bytes the answer carries: the lock's own entry (a mount's read lock),
    or the item's current complete one (a pin), or 409/400 saying why there is none."""
    if lock.entry_key is not None:
        entry = index.get_entry(lock.entry_key)
        candidates = [] if entry is None else [entry]
    else:
        candidates = index.current_entries(lock.item_id)
    if file_id is not None:
        candidates = [e for e in candidates if e.source_key == GIRDER_SOURCE + file_id]
    what = f"item {lock.item_id}" + (f" (file {file_id})" if file_id else "")
    if not candidates:
        raise RestException(
            f"{what} is not in the store yet: no mount has read it since it was last evicted "
            "or changed; read it through a mount, then download it here",
            409,
        )
    complete = [e for e in candidates if e.complete]
    if not complete:
        partial = candidates[0]
        raise RestException(
            f"{what} is not complete in the store yet ({partial.present} of {partial.size} "
            "bytes): a mount fetches the rest when it is read in full",
            409,
        )
    if len(complete) > 1:
        files = ", ".join(e.source_key.removeprefix(GIRDER_SOURCE) for e in complete)
        raise RestException(f"{what} has {len(complete)} files in the store ({files}): name one "
                            "with fileId")  # fmt: skip
    return complete[0]


def open_store_file(root: Path, entry: EntryRow) -> IO[bytes]:
    data = root / "data"
    path = data / entry.file_name
    if os.path.commonpath([data, os.path.normpath(path)]) != str(data):  # the index is input
        raise RestException(f"entry {entry.key} names a file outside the store", 500)
    try:
        return open(path, "rb", buffering=0)  # closed by the stream, or when collected
    except FileNotFoundError:
        raise RestException(
            f"item {entry.item_id} is not in the store at {root}: the index knows it, the "
            f"directory has no {entry.file_name} (is wtfs.store_path the mounts' "
            "private_storage_path, as this server sees it?)",
            409,
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RestException(
                f"the Girder server (uid {os.getuid()}) cannot read the store at {root}: "
                "give it read access, or set wtfs.store_path to a copy it can read",
                503,
            ) from None
        raise RestException(f"the store at {root}: {exc.strerror or exc}", 503) from None


def content_type_and_name(entry: EntryRow, item: dict[str, Any]) -> tuple[str, str]:
    if entry.source_key.startswith(GIRDER_SOURCE):
        oid = object_id(entry.source_key.removeprefix(GIRDER_SOURCE))
        doc = File().load(oid, force=True) if oid is not None else None
        if doc is not None:
            return str(doc.get("mimeType") or "application/octet-stream"), str(doc["name"])
    return "application/octet-stream", str(item["name"])


def stream(
    index: Index, entry: EntryRow, lock_id: int, f: IO[bytes], start: int, end: int
) -> Callable[[], Iterator[bytes]]:
    """The answer's body: [start, end) of the store file, each chunk sent only once the index,
    read after the chunk, still says the entry is there whole (module docstring)."""

    def chunks() -> Iterator[bytes]:
        with f:
            position = start
            while position < end:
                data = os.pread(f.fileno(), min(CHUNK, end - position), position)
                try:
                    now = index.get_entry(entry.key)
                except IndexFailure as exc:
                    log.warning("wtfs: lock %d: download cut short: %s", lock_id, exc.cause)
                    return
                if now is None or not now.complete or now.file_name != entry.file_name:
                    log.warning(
                        "wtfs: lock %d: download of %s cut short at byte %d: the store dropped "
                        "the entry's bytes meanwhile",
                        lock_id,
                        entry.key,
                        position,
                    )
                    return
                if not data:
                    log.warning("wtfs: lock %d: store file of %s ends early", lock_id, entry.key)
                    return
                yield data
                position += len(data)

    return chunks


@access.user(scope=TokenScope.DATA_READ)
@autoDescribeRoute(
    lock_id_param(Description("Download the locked item's bytes from the cluster's store."))
    .notes(
        "Accepts one HTTP Range (206 with Content-Range; 416 when unsatisfiable). Needs "
        "wtfs.store_path. 409 when the item is not (completely) in the store."
    )
    .param("fileId", "The file, for an item with several files in the store.", required=False)
    .errorResponse("No such lock, or the item has several files and fileId names none.")
    .errorResponse("Read access was denied on the lock's session or its item.", 403)
    .errorResponse("The item is not in the store yet, or not complete.", 409)
    .errorResponse("The Range names no byte of the file.", 416)
    .errorResponse("The plugin has no index or store set, or cannot reach them.", 503)
)
def download(id: int, fileId: str | None) -> Callable[[], Iterator[bytes]]:
    who = viewer()
    lock = find_lock(id, who, AccessType.READ)
    root = store_path()
    oid = object_id(lock.item_id)
    item = Item().load(oid, user=who.user, level=AccessType.READ) if oid is not None else None
    if item is None:
        raise RestException(f"item {lock.item_id} of lock {id} is not in Girder any more")
    with answering():
        index = CLUSTER.index()
        entry = chosen_entry(index, lock, fileId)
    f = open_store_file(root, entry)
    try:
        span = byte_range(cherrypy.request.headers.get("Range"), entry.size)
    except Unsatisfiable:
        f.close()
        setResponseHeader("Content-Range", f"bytes */{entry.size}")
        raise RestException(
            f"the Range {cherrypy.request.headers.get('Range')!r} names no byte of {entry.size}",
            416,
        ) from None
    start, end = span if span is not None else (0, entry.size)
    mime, name = content_type_and_name(entry, item)
    setResponseHeader("Content-Type", mime)
    setContentDisposition(name)
    setResponseHeader("Accept-Ranges", "bytes")
    setResponseHeader("Content-Length", str(end - start))
    if span is not None:  # Girder answers 206 when Content-Range is set
        setResponseHeader("Content-Range", f"bytes {start}-{end - 1}/{entry.size}")
    return stream(index, entry, id, f, start, end)


def add_route(dm: DataManager) -> None:
    dm.route("GET", ("lock", ":id", "download"), download)
