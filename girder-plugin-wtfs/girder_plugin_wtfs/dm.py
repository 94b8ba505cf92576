"""`/dm/session`: seed 001's session API, served by Girder itself.

A session names the Girder objects a mount shows and where (`dataSet`); `wtfs mount
--session-id ID` reads it with `GET /dm/session/{id}`, so that a tale's data is described once,
in Girder, with Girder's access rules, instead of in a file on every machine that mounts it.

    POST   /dm/session?dataSet=[...]            create (wtfs_index.dataset's rules)
    GET    /dm/session[?all=true]               the caller's sessions (all: every one readable)
    GET    /dm/session/{id}[?loadObjects=true]  one session (with each entry's type and object)
    DELETE /dm/session/{id}                     delete it (SESSION_DELETE_EVENT releases locks)
    GET    /dm/session/{id}/object?path=P[&children]  the folder or item at a path of the mount
    GET    /dm/session/{id}/item/{itemId}       an item of the dataSet, unfiltered
    GET    /dm/session/{id}/lock                the session's locks (girder_plugin_wtfs.locks,
                                                with /dm/lock and /dm/transfer)

Status codes follow Girder's: 400 for bad input (a message naming the dataSet entry or the path
component), 403 without access, 404 for a name the path grammar cannot find. An unknown session
id is Girder's 400 "Invalid session id"; a 404 on these routes means a Girder without this plugin.
"""

# Girder is untyped (Any to mypy), and a Girder REST resource must subclass and decorate with it.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False

from __future__ import annotations

import json
from typing import Any

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import Resource, filtermodel
from girder.constants import AccessType, SortDir, TokenScope
from girder.exceptions import RestException
from girder.models.folder import Folder
from girder.models.item import Item
from wtfs_index.dataset import DataSetError, check_data_set

from girder_plugin_wtfs.session import Session, find_object, model_of, object_id

ROUTE = "dm"
MAX_ANCESTORS = 10_000  # folder depth bound when walking an item's parents (a corrupt cycle)
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
BY_ID = [("_id", SortDir.ASCENDING)]


def flag(value: str | None) -> bool:
    """A seed-style flag: absent is False; given bare (`&children`) or with a true word is True.

    Girder's boolean parameters read a bare `&children` (an empty string) as False, while seed
    001's example asks for children with exactly that.
    """
    return value is not None and value.strip().lower() not in FALSE_WORDS


class DataManager(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = ROUTE
        self.route("POST", ("session",), self.create_session)
        self.route("GET", ("session",), self.list_sessions)
        self.route("GET", ("session", ":id"), self.get_session)
        self.route("DELETE", ("session", ":id"), self.delete_session)
        self.route("GET", ("session", ":id", "object"), self.session_object)
        self.route("GET", ("session", ":id", "item", ":itemId"), self.session_item)

    @access.user(scope=TokenScope.DATA_WRITE)
    @filtermodel(model=Session)
    @autoDescribeRoute(
        Description("Create a session: a dataSet of {itemId, mountPath}.")
        .param(
            "dataSet",
            'A JSON list of {"itemId": <item or folder id>, "mountPath": "/absolute/path"}.',
            required=True,
        )
        .errorResponse("The dataSet breaks a rule, or names an object the caller cannot read.")
    )
    def create_session(self, dataSet: str) -> dict[str, Any]:
        try:
            entries = check_data_set(json.loads(dataSet))
        except ValueError as exc:  # DataSetError, or json's JSONDecodeError
            prefix = "" if isinstance(exc, DataSetError) else "dataSet: not valid JSON: "
            raise RestException(f"{prefix}{exc}") from None
        user = self.getCurrentUser()
        for n, entry in enumerate(entries):
            found = find_object(entry.item_id)
            # One answer for "no such object" and "not yours to read": ids of private data
            # must not be probed through this endpoint.
            if found is None or not model_of(found[0]).hasAccess(found[1], user, AccessType.READ):
                raise RestException(
                    f"dataSet[{n}]: itemId {entry.item_id!r} is neither an item nor a folder "
                    "you can read"
                )
        return Session().createSession(user, entries)

    @access.user(scope=TokenScope.DATA_READ)
    @filtermodel(model=Session)
    @autoDescribeRoute(
        Description("List sessions: the caller's, or with all=true every one they may read.")
        .param(
            "all",
            "Every session the caller may read (for a site admin: everyone's), not only "
            "the caller's own.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .pagingParams(defaultSort="_id")
    )
    def list_sessions(self, all: bool, limit: int, offset: int, sort: Any) -> Any:
        user = self.getCurrentUser()
        query = {} if all else {"ownerId": user["_id"]}
        return Session().findWithPermissions(
            query, user=user, level=AccessType.READ, limit=limit, offset=offset, sort=sort
        )

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("Get a session.")
        .modelParam("id", model=Session, level=AccessType.READ)
        .param(
            "loadObjects",
            "Add each dataSet entry's type ('folder' or 'item') and obj (its Girder document, "
            "null if it was deleted since).",
            required=False,
        )
        .errorResponse("Read access was denied on the session or one of its objects.", 403)
    )
    def get_session(
        self,
        session: dict[str, Any],
        loadObjects: str | None,
    ) -> dict[str, Any]:
        user = self.getCurrentUser()
        doc: dict[str, Any] = Session().filter(session, user)
        if flag(loadObjects):
            doc["dataSet"] = [self._loaded(entry, user) for entry in doc["dataSet"]]
        return doc

    @staticmethod
    def _loaded(entry: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        found = find_object(entry["itemId"])
        if found is None:
            return {**entry, "type": None, "obj": None}
        kind, obj = found
        model = model_of(kind)
        model.requireAccess(obj, user, AccessType.READ)
        return {**entry, "type": kind, "obj": model.filter(obj, user)}

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Delete a session, releasing every lock taken under it.")
        .modelParam("id", model=Session, level=AccessType.ADMIN)
        .errorResponse("Admin access was denied on the session.", 403)
    )
    def delete_session(self, session: dict[str, Any]) -> dict[str, str]:
        Session().remove(session)
        return {"message": f"Deleted session {session['_id']}."}

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("The folder or item at a path of the session's mount.")
        .notes(
            "The path is a dataSet mountPath, then folder names, then optionally an item "
            "name, separated by '/'. Girder names: a name holding '/' cannot be reached."
        )
        .modelParam("id", model=Session, level=AccessType.READ)
        .param("path", "An absolute path, e.g. /data/raw/measurements.csv.", required=True)
        .param("children", "Also list the folder's subfolders and items.", required=False)
        .errorResponse("The path is not absolute or lies outside the dataSet.")
        .errorResponse("Read access was denied on the session or an object of the path.", 403)
        .errorResponse("No folder or item has that name.", 404)
    )
    def session_object(
        self, session: dict[str, Any], path: str, children: str | None
    ) -> dict[str, Any]:
        user = self.getCurrentUser()
        kind, doc = resolve_path(session, path, user)
        result: dict[str, Any] = {"object": {**model_of(kind).filter(doc, user), "type": kind}}
        if flag(children):
            result["children"] = list_children(kind, doc, user)
        return result

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("An item of the session's dataSet, unfiltered (the whole document).")
        .modelParam("id", model=Session, level=AccessType.READ)
        .param("itemId", "The item: one of the dataSet, or below one of its folders.", "path")
        .errorResponse("No such item, or it is not in the session's dataSet.")
        .errorResponse("Read access was denied on the session or the item.", 403)
    )
    def session_item(self, session: dict[str, Any], itemId: str) -> dict[str, Any]:
        oid = object_id(itemId)
        item: dict[str, Any] | None = Item().load(oid, force=True) if oid is not None else None
        if item is None:
            raise RestException(f"Invalid item id ({itemId}).")
        if not in_data_set(item, session):
            raise RestException(f"item {itemId} is not in session {session['_id']}'s dataSet")
        Item().requireAccess(item, self.getCurrentUser(), AccessType.READ)
        return item


def in_data_set(item: dict[str, Any], session: dict[str, Any]) -> bool:
    """True if ``item`` is an entry of the session's dataSet or lies below one of its folders."""
    ids = {object_id(entry["itemId"]) for entry in session["dataSet"]}
    if item["_id"] in ids:
        return True
    folder_id, parent_type = item.get("folderId"), "folder"
    for _ in range(MAX_ANCESTORS):
        if parent_type != "folder" or folder_id is None:
            return False
        if folder_id in ids:
            return True
        folder = Folder().load(folder_id, force=True, fields=["parentId", "parentCollection"])
        if folder is None:
            return False
        folder_id, parent_type = folder.get("parentId"), folder.get("parentCollection")
    return False


def resolve_path(
    session: dict[str, Any], path: str, user: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """("folder" | "item", document) at ``path`` of the session's mount (seed 001's grammar)."""
    if not path.startswith("/"):
        raise RestException(f"path {path!r} is not absolute")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise RestException(f"path {path!r} must not contain '.' or '..'")
    for entry in session["dataSet"]:
        mounted = entry["mountPath"].strip("/").split("/")
        if parts[: len(mounted)] == mounted:
            break
    else:
        raise RestException(f"path {path!r} lies outside the session's dataSet")
    found = find_object(entry["itemId"])
    if found is None:
        raise RestException(
            f"{entry['mountPath']}: Girder has no item or folder {entry['itemId']} any more", 404
        )
    kind, doc = found
    model_of(kind).requireAccess(doc, user, AccessType.READ)
    walked = entry["mountPath"]
    rest = parts[len(mounted) :]
    for n, name in enumerate(rest):
        if kind == "item":
            raise RestException(f"{walked} is an item: there is no {name!r} below it", 404)
        last = n == len(rest) - 1
        candidates = [
            ("folder", Folder().findOne(
                {"parentId": doc["_id"], "parentCollection": "folder", "name": name}, sort=BY_ID
            )),
            ("item", Item().findOne({"folderId": doc["_id"], "name": name}, sort=BY_ID)
             if last else None),
        ]  # fmt: skip
        present = [(k, d) for k, d in candidates if d is not None]
        if not present:
            what = "folder or item" if last else "folder"
            raise RestException(f"{walked}: no {what} named {name!r}", 404)
        kind, doc = min(present, key=lambda kd: kd[1]["_id"])  # Girder ids: oldest first
        model_of(kind).requireAccess(doc, user, AccessType.READ)
        walked = f"{walked}/{name}"
    return kind, doc


def list_children(kind: str, doc: dict[str, Any], user: dict[str, Any]) -> list[dict[str, Any]]:
    """A folder's subfolders the user may read, then its items, each with its `type`."""
    if kind != "folder":
        return []
    folders = Folder().childFolders(parent=doc, parentType="folder", user=user, sort=BY_ID)
    items = Folder().childItems(folder=doc, sort=BY_ID)
    return [{**Folder().filter(f, user), "type": "folder"} for f in folders] + [
        {**Item().filter(i, user), "type": "item"} for i in items
    ]
