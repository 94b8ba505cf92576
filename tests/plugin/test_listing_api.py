"""The plugin's bulk listing as the daemon's client reads it, across a full page, on a real
Girder: every item comes once, in `_id` order, with its files."""

from __future__ import annotations

import trio
from girder_plugin_wtfs.listing import FILE_FIELDS, ITEM_FIELDS, MAX_LIMIT
from wtfs_devgirder.control import LocalGirder

from wtfs.config import Secret
from wtfs.girder.client import BULK_PAGE_SIZE, GirderClient


def test_the_clients_pages_are_the_plugins_largest() -> None:
    # A client page larger than the plugin's would end every listing after its first page:
    # the client takes a shorter page for the last one.
    assert BULK_PAGE_SIZE == MAX_LIMIT


def test_a_folder_of_more_than_a_page_lists_every_item_once_with_its_files(
    girder: LocalGirder,
) -> None:
    gc = girder.client()
    collection = gc.createCollection("bulk-pages", public=False)
    folder = gc.createFolder(collection["_id"], "many", parentType="collection")
    count = BULK_PAGE_SIZE + 2
    ids = girder.bulk_items(folder["_id"], count, prefix="p", file_size=1)

    async def listing() -> list[dict[str, object]] | None:
        client = GirderClient(girder.api_url, Secret(girder.api_key()))
        try:
            return await client.items_with_files(str(folder["_id"]))
        finally:
            await client.aclose()

    items = trio.run(listing)
    assert items is not None
    assert [str(i["_id"]) for i in items] == sorted(ids)
    assert all(isinstance(i["files"], list) and len(i["files"]) == 1 for i in items)
    # Only what a mount shows: Girder adds `_modelType` to what it filters.
    first = items[0]
    assert set(first) == {*ITEM_FIELDS, "files", "_modelType"}
    shown = set(first["files"][0])
    assert {"_id", "name", "size", "created"} <= shown <= {*FILE_FIELDS, "_modelType"}
