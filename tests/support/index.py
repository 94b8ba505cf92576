"""The index of a test's store, through the index's own interface (whatever its backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wtfs_index import EntryRow, Index, open_index


def store_index(config: dict[str, Any]) -> Index:
    return open_index(config.get("index_url"), Path(config["private_storage_path"]))


def entry_of(config: dict[str, Any], source_key: str) -> EntryRow | None:
    """The current entry of a source (`girder:<fileId>`), whatever its version."""
    index = store_index(config)
    try:
        rows = [e for e in index.entries() if e.source_key == source_key and not e.superseded]
    finally:
        index.close()
    return rows[0] if rows else None
