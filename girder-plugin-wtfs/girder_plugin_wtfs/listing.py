"""Bulk listing: a folder's items *with their files* in one request per page.

Stock Girder can only list the files of one item per request (`GET /item/{id}/files`), so a
client that must tell a one-file item (shown as a file) from a multi-file item (a directory)
needs N + 1 requests for a folder of N items: ~40 s for 10,000 items. This plugin answers

    GET /wtfs/folder/{id}/items?limit=&offset=

with the same items, in the same order and with the same access checks as
`GET /item?folderId={id}&sort=_id`, each carrying a `files` list as `GET /item/{id}/files`
would give it, plus each file's `sha512` when the assetstore recorded one (Girder's own answer
leaves it out): two database queries per page (the files by `itemId $in`, an indexed field).
Items and files carry only the fields a mount shows (`ITEM_FIELDS`, `FILE_FIELDS`): reading,
copying and encoding the rest (creators, parents, assetstores) was most of a page's time
(a page of 5,000 items with files on the development Girder).

It runs inside the Girder server, never in the wtfs daemon: Girder loads it when the
`girder-plugin-wtfs` distribution is installed in the server's environment (entry point
`girder.plugin`, see `girder_plugin_wtfs.WtfsPlugin`). The daemon uses it when present and
falls back to per-item requests when it is not.
"""

# Girder is untyped (Any to mypy), and a Girder REST resource must subclass and decorate with it.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False

from __future__ import annotations

from typing import Any

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import Resource
from girder.constants import AccessType, SortDir, TokenScope
from girder.models.file import File
from girder.models.folder import Folder
from girder.models.item import Item

ROUTE = "wtfs"
#: the largest page; the wtfs client asks for pages of this size (wtfs.girder.client
#: BULK_PAGE_SIZE) and takes a shorter one for the last: lowering it needs the client's lowered
MAX_LIMIT = 5000
#: what the wtfs client reads of an item (`wtfs.namespace.tree`: its name, times, `meta` for
#: `phys_path` items) and of a file (its size, times and sha512 make its version; its
#: mimeType too, which a mount does not read)
ITEM_FIELDS = ("_id", "name", "folderId", "size", "created", "updated", "meta")
FILE_FIELDS = ("_id", "itemId", "name", "size", "mimeType", "created", "updated", "sha512")


class WtfsListing(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = ROUTE
        self.route("GET", ("folder", ":id", "items"), self.items_with_files)

    @access.public(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("List a folder's items, each with its files, sorted by _id.")
        .modelParam("id", model=Folder, level=AccessType.READ)
        .pagingParams(defaultSort="_id", defaultLimit=1000)
        .errorResponse("Read access was denied on the folder.", 403)
    )
    def items_with_files(
        self, folder: dict[str, Any], limit: int, offset: int, sort: Any
    ) -> list[dict[str, Any]]:
        user = self.getCurrentUser()
        limit = min(limit or MAX_LIMIT, MAX_LIMIT)  # 0 means "all" to Girder: bound each page
        items = [
            Item().filter(item, user)
            for item in Folder().childItems(
                folder=folder, limit=limit, offset=offset, sort=sort, fields=ITEM_FIELDS
            )
        ]
        by_item: dict[str, list[dict[str, Any]]] = {str(item["_id"]): [] for item in items}
        if items:
            files = File().find(
                {"itemId": {"$in": [item["_id"] for item in items]}},
                sort=[("_id", SortDir.ASCENDING)],
                fields=FILE_FIELDS,
            )
            for doc in files:
                shown = File().filter(doc, user)
                # The filesystem assetstore records each upload's sha512 (a copied item's files
                # keep it); Girder's filter leaves it out. wtfs fingerprints versions with it
                # and shares one store file between files of equal contents (content dedup).
                if isinstance(doc.get("sha512"), str):
                    shown["sha512"] = doc["sha512"]
                by_item[str(doc["itemId"])].append(shown)
        for item in items:
            item["files"] = by_item[str(item["_id"])]
        return items
