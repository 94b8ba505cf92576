"""The `session` model: a user's dataSet, stored by Girder like any access-controlled resource.

An `AccessControlledModel`, so that who may use a session is decided the way Girder decides it
for folders: the creator gets ADMIN on it, site admins may do anything, anyone else gets 403
(and a session could be shared through the usual access list). Records follow seed 001's
examples: `_id`, `dataSet` (`itemId` + `mountPath`), `ownerId`, and, through `filter`,
`_modelType: "session"` and the caller's `_accessLevel`; `created`/`updated` are Girder's usual
timestamps; `access` is shown to those with ADMIN on the session, as Girder does for `/access`.

Deleting a session releases the locks taken under it: they live in the cluster's index
(`girder_plugin_wtfs.cluster`), and `girder_plugin_wtfs.locks` binds `SESSION_DELETE_EVENT` to
`Index.release_locks(session_id=...)`.
"""

# Girder is untyped (Any to mypy), and a Girder model must subclass it.
# mypy: disallow-subclassing-any=False

from __future__ import annotations

import datetime
from typing import Any

from bson.errors import InvalidId
from bson.objectid import ObjectId
from girder import events
from girder.constants import AccessType
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.model_base import AccessControlledModel
from wtfs_index.dataset import DataSetEntry

SESSION_DELETE_EVENT = "dm.session.delete"
"""The hook for releasing a session's locks: fired just before a session is removed.

`girder.events.trigger(SESSION_DELETE_EVENT, info=session_document)` runs synchronously, in the
request that deletes the session (`DELETE /dm/session/{id}` or any other `Session().remove`),
before the record is gone. A handler bound to it (`events.bind(SESSION_DELETE_EVENT, name, fn)`)
must release every lock whose `sessionId` is `str(event.info["_id"])`. If a handler raises, the
session is kept and the request fails, so a lock store that cannot be reached never leaves a
session deleted with its locks still held. `girder_plugin_wtfs.locks.release_session_locks` is
bound to it when the plugin loads (a no-op while `wtfs.index_url` is not set).
"""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def object_id(value: Any) -> ObjectId | None:
    """``value`` as an ObjectId, or None when it cannot be one (a dataSet's id is user input)."""
    if isinstance(value, ObjectId):
        return value
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


def find_object(value: Any) -> tuple[str, dict[str, Any]] | None:
    """("item" | "folder", document) for a dataSet `itemId`, unchecked for access; None if neither.

    A dataSet names items and folders by one key (seed 001), so both collections are asked,
    items first, as the client does.
    """
    oid = object_id(value)
    if oid is None:
        return None
    item = Item().load(oid, force=True)
    if item is not None:
        return "item", item
    folder = Folder().load(oid, force=True)
    if folder is not None:
        return "folder", folder
    return None


def model_of(kind: str) -> Any:
    return Item() if kind == "item" else Folder()


class Session(AccessControlledModel):
    def initialize(self) -> None:
        self.name = "session"
        self.ensureIndices(["ownerId"])
        self.exposeFields(
            level=AccessType.READ, fields={"_id", "dataSet", "ownerId", "created", "updated"}
        )
        self.exposeFields(level=AccessType.ADMIN, fields={"access"})

    def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Sessions are checked before they are built (`createSession`): nothing left to do."""
        return doc

    def createSession(self, user: dict[str, Any], entries: list[DataSetEntry]) -> dict[str, Any]:
        """Store a session of already checked ``entries`` owned by ``user`` (ADMIN on it)."""
        when = now()
        doc: dict[str, Any] = {
            "ownerId": user["_id"],
            "dataSet": [
                {"itemId": ObjectId(e.item_id), "mountPath": e.mount_path} for e in entries
            ],
            "public": False,
            "access": {"users": [], "groups": []},
            "created": when,
            "updated": when,
        }
        self.setUserAccess(doc, user, level=AccessType.ADMIN, save=False)
        saved: dict[str, Any] = self.save(doc)
        return saved

    def remove(self, doc: dict[str, Any], **kwargs: Any) -> Any:
        """Release the session's locks (`SESSION_DELETE_EVENT`), then remove the record."""
        events.trigger(SESSION_DELETE_EVENT, info=doc)
        return super().remove(doc, **kwargs)
