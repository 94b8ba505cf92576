"""A persistent cache of Girder metadata that stock Girder can only give one request at a time.

Stock Girder's REST API has no way to list the files of many items at once, so showing a folder
of N items costs N `GET /item/{id}/files` requests (a server with the wtfs plugin,
wtfs/girder_plugin.py, answers them with the listing pages instead; this cache is then unused).
Their answers are kept here (diskcache: SQLite underneath, safe across the processes sharing a
store), keyed by item id and valid while the item's `updated` time and `size` are unchanged, so
a later mount of the same data lists a 10,000-item folder with its listing pages alone. Only
what the tree needs is kept: file ids, names, sizes, times and checksums; never tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import diskcache

log = logging.getLogger(__name__)

KEPT_FIELDS = ("_id", "name", "size", "created", "updated", "sha512", "mimeType")
SIZE_LIMIT = 256 * 1024**2


def _version(item: Mapping[str, Any]) -> tuple[str, int]:
    return (str(item.get("updated") or item.get("created") or ""), int(item.get("size") or 0))


class MetadataCache:
    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), size_limit=SIZE_LIMIT)

    def close(self) -> None:
        self._cache.close()

    def get_files(self, items: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The cached file lists of those items still valid, by item id (blocking: use a thread)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            item_id = str(item["_id"])
            hit = self._cache.get(f"files:{item_id}")
            if isinstance(hit, tuple) and len(hit) == 2 and tuple(hit[0]) == _version(item):
                found[item_id] = hit[1]
        return found

    def put_files(self, pairs: Iterable[tuple[Mapping[str, Any], list[dict[str, Any]]]]) -> None:
        with self._cache.transact():
            for item, files in pairs:
                kept = [{k: f[k] for k in KEPT_FIELDS if k in f} for f in files]
                self._cache.set(f"files:{item['_id']}", (_version(item), kept))
