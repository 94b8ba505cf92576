"""`/dm/lock` and `/dm/transfer`: seed 001's locks and transfers, answered from the cluster's index.

    GET    /dm/lock[?sessionId=&itemId=&ownerId=]          locks (filters combine)
    GET    /dm/session/{id}/lock                           the locks of one session
    GET    /dm/lock/{id}                                   one lock
    POST   /dm/lock?sessionId=&itemId=[&ownerId=][&expiresIn=]   pin an item, or renew its pin
    DELETE /dm/lock/{id}                                   release a pin (or a dead mount's lock)
    GET    /dm/lock/{id}/download                          the locked item's bytes (`download`)
    GET    /dm/transfer[?sessionId=][&discardOld=false]    transfers

The index is the truth: mounts take and drop their locks there as files open and close, and a
pin set here is a lock there, honoured by every mount's GC. Records are shaped by
`wtfs_index.records`, as `wtfs status --json` shapes them; `userId` is the Girder user who owns
the session, `_accessLevel` the caller's level on it.

A *pin* is how a client that is not a mount keeps an item in the store: a `hold` lock on the
whole item (every entry, every byte: never evicted, never windowed) with an expiry the caller
chooses, owned by a lease-only owner (`ownerId`, the sessionId unless given). Asking again for
the same session, item and owner renews it (same id, later expiry). It goes when it expires
(reclaimed like any lease), when released here, or when its session is deleted.

Access follows the lock's session, as for any Girder resource: READ on it to see its locks and
transfers, ADMIN (its owner, or a site admin) to pin or release; 403 otherwise. Locks and
transfers of a session that is not a Girder session (a mount of a session file) are for site
admins only. A listing without `sessionId` shows a non-admin only the rows of sessions they
may read.
"""

# Girder is untyped (Any to mypy), and its REST decorators too.
# mypy: disallow-untyped-decorators=False, disallow-untyped-calls=False

from __future__ import annotations

import logging
import math
import time
from typing import Any

from girder import events
from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import getCurrentUser
from girder.constants import AccessType, TokenScope
from girder.exceptions import AccessException, RestException
from girder.models.item import Item
from wtfs_index import DISCARD_AFTER, LockRow, Owner
from wtfs_index.records import lock_record, transfer_record

from girder_plugin_wtfs.cluster import CLUSTER, answering, me, plugin_owner
from girder_plugin_wtfs.dm import DataManager, in_data_set
from girder_plugin_wtfs.session import SESSION_DELETE_EVENT, Session, object_id

log = logging.getLogger(__name__)

#: a pin's lifetime when the caller names none, and the longest one may ask for (seconds)
DEFAULT_PIN_SECONDS = 3600.0
MAX_PIN_SECONDS = 7 * 86400.0
MIN_PIN_SECONDS = 1.0
OWNER_ID_MAX = 255


class Viewer:
    """The caller, and their access level on each session a request meets (loaded once)."""

    def __init__(self, user: dict[str, Any]) -> None:
        self.user = user
        self.admin = bool(user.get("admin"))
        self._sessions: dict[str, dict[str, Any] | None] = {}

    def session(self, session_id: str) -> dict[str, Any] | None:
        if session_id not in self._sessions:
            oid = object_id(session_id)
            self._sessions[session_id] = (
                Session().load(oid, force=True) if oid is not None else None
            )
        return self._sessions[session_id]

    def level(self, session_id: str) -> int:
        """The caller's AccessType on the session (NONE for a session not in Girder, unless a
        site admin asks)."""
        if self.admin:
            return int(AccessType.ADMIN)
        session = self.session(session_id)
        if session is None:
            return int(AccessType.NONE)
        return int(Session().getAccessLevel(session, self.user))

    def require(self, session_id: str, level: int) -> dict[str, Any] | None:
        """The session, or 403 when the caller lacks `level` on it."""
        if self.level(session_id) >= level:
            return self.session(session_id)
        if self.session(session_id) is None:
            raise AccessException(
                f"session {session_id} is not a Girder session: its locks and transfers are "
                "for site admins only"
            )
        need = "read" if level == AccessType.READ else "admin"
        raise AccessException(f"{need} access to session {session_id} was denied")

    def owner_of(self, session_id: str) -> str | None:
        session = self.session(session_id)
        return None if session is None else str(session["ownerId"])

    def lock(self, row: LockRow) -> dict[str, Any]:
        return lock_record(
            row, user_id=self.owner_of(row.session_id), access_level=self.level(row.session_id)
        )


def viewer() -> Viewer:
    return Viewer(getCurrentUser())


def find_lock(lock_id: int, who: Viewer, level: int) -> LockRow:
    """Lock `lock_id` if the caller has `level` on its session (400 if there is none)."""
    with answering():
        row = CLUSTER.index().get_lock(lock_id, me())
    if row is None:
        raise RestException(f"Invalid lock id ({lock_id}).")
    who.require(row.session_id, level)
    return row


def lock_id_param(description: Description) -> Description:
    return description.param("id", "The lock's id (an integer).", "path", dataType="integer")


# -- locks ---------------------------------------------------------------------------------------


@access.user(scope=TokenScope.DATA_READ)
@autoDescribeRoute(
    Description("List locks in the cluster's store (a mount's open files, pins).")
    .param("sessionId", "Only the locks taken under this session.", required=False)
    .param("itemId", "Only the locks on this item.", required=False)
    .param("ownerId", "Only the locks of this owner (a mount, or a pin's owner).", required=False)
    .errorResponse("Read access was denied on the session.", 403)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def list_locks(sessionId: str | None, itemId: str | None, ownerId: str | None) -> Any:
    return _locks(viewer(), sessionId, itemId, ownerId)


@access.user(scope=TokenScope.DATA_READ)
@autoDescribeRoute(
    Description("List the locks taken under a session.")
    .modelParam("id", model=Session, level=AccessType.READ)
    .errorResponse("Read access was denied on the session.", 403)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def session_locks(session: dict[str, Any]) -> Any:
    return _locks(viewer(), str(session["_id"]), None, None)


def _locks(
    who: Viewer, session_id: str | None, item_id: str | None, owner_id: str | None
) -> list[dict[str, Any]]:
    if session_id is not None:
        who.require(session_id, AccessType.READ)
    with answering():
        rows = CLUSTER.index().locks(
            me(), session_id=session_id, item_id=item_id, owner_id=owner_id
        )
    return [who.lock(row) for row in rows if who.level(row.session_id) >= AccessType.READ]


@access.user(scope=TokenScope.DATA_READ)
@autoDescribeRoute(
    lock_id_param(Description("Get a lock."))
    .errorResponse("No such lock.")
    .errorResponse("Read access was denied on the lock's session.", 403)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def get_lock(id: int) -> dict[str, Any]:
    who = viewer()
    return who.lock(find_lock(id, who, AccessType.READ))


@access.user(scope=TokenScope.DATA_WRITE)
@autoDescribeRoute(
    Description("Pin an item in the cluster's store, or renew its pin.")
    .notes(
        "A pin keeps every byte of the item in the store (no mount's GC evicts it) until it "
        "expires. Asking again for the same session, item and owner renews the pin: same id, "
        "new expiry. The caller must own the session (or be a site admin) and read the item, "
        "which must be in the session's dataSet."
    )
    .param("sessionId", "The session the pin is taken under.", required=True)
    .param("itemId", "The item to pin: one of the session's dataSet, or below its folders.")
    .param(
        "ownerId",
        "Who holds the pin (any string up to 255 characters; default: the sessionId).",
        required=False,
    )
    .param(
        "expiresIn",
        f"Seconds until the pin expires ({MIN_PIN_SECONDS:g} to {MAX_PIN_SECONDS:g}; "
        f"default {DEFAULT_PIN_SECONDS:g}).",
        dataType="number",
        required=False,
        default=DEFAULT_PIN_SECONDS,
    )
    .errorResponse("Bad expiresIn or ownerId, no such item, or not in the session's dataSet.")
    .errorResponse("Admin access to the session or read access to the item was denied.", 403)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def pin_item(sessionId: str, itemId: str, ownerId: str | None, expiresIn: float) -> dict[str, Any]:
    who = viewer()
    if not math.isfinite(expiresIn) or not MIN_PIN_SECONDS <= expiresIn <= MAX_PIN_SECONDS:
        raise RestException(
            f"expiresIn must be {MIN_PIN_SECONDS:g} to {MAX_PIN_SECONDS:g} seconds "
            f"(7 days), got {expiresIn:g}"
        )
    owner_id = sessionId if ownerId is None else ownerId.strip()
    if not owner_id or len(owner_id) > OWNER_ID_MAX or not owner_id.isprintable():
        raise RestException(f"ownerId must be 1 to {OWNER_ID_MAX} printable characters")
    session = who.session(sessionId)
    if session is None:
        raise RestException(f"Invalid session id ({sessionId}).")
    who.require(sessionId, AccessType.ADMIN)
    oid = object_id(itemId)
    item = Item().load(oid, user=who.user, level=AccessType.READ) if oid is not None else None
    if item is None:
        raise RestException(f"Invalid item id ({itemId}).")
    if not in_data_set(item, session):
        raise RestException(f"item {itemId} is not in session {sessionId}'s dataSet")
    with answering():
        index = CLUSTER.index()
        lock_id, renewed = index.hold_item(
            str(item["_id"]), sessionId, Owner.lease_only(owner_id), expires_in=expiresIn
        )
        row = index.get_lock(lock_id, me())
    if row is None:  # released (or its session deleted) between the two calls
        raise RestException(f"lock {lock_id} was released while it was being taken", 409)
    log.info("wtfs: pin %d of item %s (session %s) for %gs", lock_id, itemId, sessionId, expiresIn)
    access_list = Session().filter(session, who.user).get("access")
    return {**who.lock(row), "renewed": renewed, "access": access_list}


@access.user(scope=TokenScope.DATA_WRITE)
@autoDescribeRoute(
    lock_id_param(Description("Release a lock: a pin, or the lock of a mount that is gone."))
    .notes(
        "A running mount's lock stays: it goes when the mount closes the file or unmounts. "
        "Releasing it here would let the store evict bytes under a file still open."
    )
    .errorResponse("No such lock.")
    .errorResponse("Admin access was denied on the lock's session.", 403)
    .errorResponse("The lock belongs to a running mount.", 409)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def release_lock(id: int) -> dict[str, str]:
    row = find_lock(id, viewer(), AccessType.ADMIN)
    if row.expires is None and row.alive:
        where = f"{row.mountpoint or 'a mount'} on {row.host or 'its host'}"
        raise RestException(
            f"lock {id} is held by the running mount {where} ({row.path or row.item_id} is "
            "open): it goes when the file is closed or the mount unmounted (wtfs umount)",
            409,
        )
    with answering():
        # Superseded versions that go with this lock are left in an unlinking batch owned by
        # no registered owner: the next mount's GC pass adopts it and unlinks their files.
        CLUSTER.index().release_lock(id, plugin_owner())
    return {"message": f"Released lock {id}."}


# -- transfers -----------------------------------------------------------------------------------


@access.user(scope=TokenScope.DATA_READ)
@autoDescribeRoute(
    Description("List transfers: the store's fetches from Girder and other sources, oldest first.")
    .param("sessionId", "Only the transfers of this session.", required=False)
    .param(
        "discardOld",
        f"Hide transfers that ended more than {DISCARD_AFTER:g} seconds ago.",
        dataType="boolean",
        required=False,
        default=True,
    )
    .errorResponse("Read access was denied on the session.", 403)
    .errorResponse("The plugin has no index (wtfs.index_url), or cannot reach it.", 503)
)
def list_transfers(sessionId: str | None, discardOld: bool) -> list[dict[str, Any]]:
    who = viewer()
    if sessionId is not None:
        who.require(sessionId, AccessType.READ)
    now = time.time()
    with answering():
        rows = CLUSTER.index().transfers(
            session_id=sessionId, ended_after=now - DISCARD_AFTER if discardOld else None
        )
    return [
        transfer_record(row, now, access_level=who.level(row.session_id))
        for row in rows
        if who.level(row.session_id) >= AccessType.READ
    ]


# -- deleting a session --------------------------------------------------------------------------


def release_session_locks(event: Any) -> None:
    """`SESSION_DELETE_EVENT`: release every lock taken under the session (pins, and mounts'
    locks of files still open). Raising keeps the session (the request answers 503), so an
    index that cannot be reached never leaves a deleted session's locks held. Without an index
    set there is nothing this server could have locked."""
    if not CLUSTER.configured():
        return
    session_id = str(event.info["_id"])
    with answering():
        count = CLUSTER.index().release_locks(session_id=session_id)
    log.info("wtfs: session %s deleted: released %d locks", session_id, count)


def add_routes(dm: DataManager) -> None:
    """Serve these endpoints under `/dm` and release a deleted session's locks."""
    dm.route("GET", ("lock",), list_locks)
    dm.route("POST", ("lock",), pin_item)
    dm.route("GET", ("lock", ":id"), get_lock)
    dm.route("DELETE", ("lock", ":id"), release_lock)
    dm.route("GET", ("session", ":id", "lock"), session_locks)
    dm.route("GET", ("transfer",), list_transfers)
    events.bind(SESSION_DELETE_EVENT, "wtfs.release_session_locks", release_session_locks)
