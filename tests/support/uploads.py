"""Files uploaded into the dev Girder through its REST API, as a user uploads them: Girder's
filesystem assetstore records each one's sha512 (imported files carry none)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from wtfs_devgirder.control import LocalGirder


def public_folder(girder: LocalGirder, prefix: str) -> str:
    """The id of a new public folder `f` in a new public collection."""
    client = girder.client()
    collection = client.createCollection(f"{prefix}-{time.monotonic_ns()}", public=True)
    folder = client.createFolder(collection["_id"], "f", parentType="collection", public=True)
    return str(folder["_id"])


def subfolder(girder: LocalGirder, parent_id: str, name: str) -> str:
    folder = girder.client().createFolder(parent_id, name, public=True)
    return str(folder["_id"])


def upload(girder: LocalGirder, folder_id: str, name: str, content: bytes) -> str:
    """A new item `name` in the folder holding one file `name` = `content`; the item's id."""
    item = girder.client().createItem(folder_id, name)
    headers = {"Girder-Token": girder.token()}
    params: dict[str, Any] = {
        "parentType": "item", "parentId": item["_id"], "name": name, "size": len(content),
    }  # fmt: skip
    made = httpx.post(f"{girder.api_url}/file", headers=headers, params=params, timeout=60)
    made.raise_for_status()
    if content:
        chunk = httpx.post(
            f"{girder.api_url}/file/chunk", headers=headers, timeout=60,
            params={"uploadId": made.json()["_id"], "offset": 0}, content=content,
        )  # fmt: skip
        chunk.raise_for_status()
    return str(item["_id"])
