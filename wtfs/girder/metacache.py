"""A persistent cache of Girder metadata that stock Girder can only give one request at a time.

Stock Girder's REST API has no way to list the files of many items at once, so showing a folder
of N items costs N `GET /item/{id}/files` requests (a server with the wtfs plugin,
girder-plugin-wtfs, answers them with the listing pages instead; this cache is then unused).
Their answers are kept here (diskcache: SQLite underneath, safe across the processes sharing a
store), keyed by item id and valid while the item's `updated` time and `size` are unchanged, so
a later mount of the same data lists a 10,000-item folder with its listing pages alone. Only
what the tree needs is kept: file ids, names, sizes, times and checksums; never tokens.

It is a cache: when it cannot be read or written (its disk is full, its file is damaged), the
tree asks Girder instead, and the failure is logged, never raised into a listing. Its file
documents are only as fresh as the item they were kept for: a file whose contents Girder
replaced by as many bytes leaves the item's `updated` and `size` as they were, so the tree checks
a file listed from here against Girder at its first open (`Tree.check_version`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import diskcache

log = logging.getLogger(__name__)

KEPT_FIELDS = ("_id", "name", "size", "created", "updated", "sha512", "mimeType")
SIZE_LIMIT = 256 * 1024**2


def _version(item: Mapping[str, Any]) -> tuple[str, int]:
    return (str(item.get("updated") or item.get("created") or ""), int(item.get("size") or 0))


#: what a cache that cannot be read or written raises (diskcache is SQLite and files)
FAILURES = (sqlite3.Error, OSError)


class MetadataCache:
    def __init__(self, directory: Path) -> None:
        """Opened at its first use: a Girder with the wtfs plugin lists without it, and the
        daemon then never loads diskcache. Failing to open is failing to read or write it:
        the callers then ask Girder."""
        self._directory = directory
        self._opened: diskcache.Cache | None = None

    @property
    def _cache(self) -> diskcache.Cache:
        if self._opened is None:
            import diskcache

            self._opened = diskcache.Cache(str(self._directory), size_limit=SIZE_LIMIT)
        return self._opened

    def close(self) -> None:
        if self._opened is None:
            return
        try:
            self._opened.close()
        except FAILURES as exc:
            log.warning("metadata cache: could not close: %s", exc)

    def get_files(self, items: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The cached file lists of those items still valid, by item id (blocking: use a thread).
        Nothing when the cache cannot be read: the caller asks Girder."""
        found: dict[str, list[dict[str, Any]]] = {}
        try:
            for item in items:
                item_id = str(item["_id"])
                hit = self._cache.get(f"files:{item_id}")
                if isinstance(hit, tuple) and len(hit) == 2 and tuple(hit[0]) == _version(item):
                    found[item_id] = hit[1]
        except FAILURES as exc:
            log.warning("metadata cache: could not be read, asking Girder: %s", exc)
            return {}
        return found

    def update_file(self, item_id: str, doc: Mapping[str, Any]) -> None:
        """A file document fresher than the one kept for its item (Girder replaced the file's
        contents, which leaves the item's `updated` and size as they were): keep it instead,
        so that later listings show the new version without asking. Nothing when the item's
        list is not kept."""
        key = f"files:{item_id}"
        try:
            hit = self._cache.get(key)
            if not (isinstance(hit, tuple) and len(hit) == 2):
                return
            kept = {k: doc[k] for k in KEPT_FIELDS if k in doc}
            files = [kept if f.get("_id") == doc.get("_id") else f for f in hit[1]]
            self._cache.set(key, (hit[0], files))
        except FAILURES as exc:
            log.warning("metadata cache: file document not updated: %s", exc)

    def put_files(self, pairs: Iterable[tuple[Mapping[str, Any], list[dict[str, Any]]]]) -> None:
        """Keep file lists; when the cache cannot be written they are just not kept."""
        try:
            with self._cache.transact():
                for item, files in pairs:
                    kept = [{k: f[k] for k in KEPT_FIELDS if k in f} for f in files]
                    self._cache.set(f"files:{item['_id']}", (_version(item), kept))
        except FAILURES as exc:
            log.warning("metadata cache: file lists not kept: %s", exc)
