"""A real Girder 5 server on loopback with an in-process mongomock database.

Run as ``python -m wtfs_devgirder.server --host 127.0.0.1 --port PORT --assetstore DIR`` (or
``--fd N`` to serve a listening socket inherited from the parent, which is what
`wtfs_devgirder.control.LocalGirder` does so that port 0 never races).

Importing this module does not import Girder: the mongomock shims must be installed first
(`install_shims`), and only `main` does that. The shims, each for a failure Girder 5 meets
on mongomock without it:

1. ``pymongo.MongoClient`` is replaced by a factory returning mongomock clients sharing one store;
2. mongomock rejects a ``tzinfo`` in codec options (it already returns UTC-aware datetimes);
3. mongomock's cursor lacks ``count()``;
4. mongomock cursors must be in ``girder.api.rest._MONGO_CURSOR_TYPES`` to serialise lists;
5. one process-wide lock serialises database operations (mongomock's read-modify-write updates
   are not atomic across Girder's request threads);
6. celery runs Girder's "local" tasks (folder delete, copy, import) eagerly, inline;
7. notifications go to a loopback redis URL (without redis they are only logged).

Girder loads every plugin installed beside it (the wtfs plugin, girder-plugin-wtfs, when
scripts/bootstrap installed it); ``--no-plugins`` loads none, so that tests can ask what a stock
Girder answers on the same machine (`disable_plugins`).

The ASGI app is wrapped by `DevMiddleware`, which counts requests and bytes at the server and
serves a few unauthenticated ``/__wtfs_dev/*`` endpoints (stats, throttle, bulk and hostile item
creation, the Girder events it recorded). They exist for tests and benchmarks only: never expose
this server beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEV_PREFIX = "/__wtfs_dev"
"""Path prefix of the dev endpoints (outside /api/v1, unauthenticated, never counted)."""

RANGES_KEPT = 1000
THROTTLE_SLICE_SECONDS = 0.05
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_DB_LOCK = threading.RLock()
"""Serialises every mongomock operation in this process (shim 5)."""

_OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")

RECORDED_EVENTS = ("dm.session.delete",)
"""Girder events the dev server records for tests (``GET /__wtfs_dev/events``).

``dm.session.delete`` is the wtfs plugin's hook for releasing a session's locks
(girder_plugin_wtfs.session.SESSION_DELETE_EVENT); recording it shows a test that the hook
fires, once, with the right session, without the dev server importing the plugin.
"""
_events: deque[dict[str, Any]] = deque(maxlen=RANGES_KEPT)


def bulk_file_content(name: str, size: int) -> bytes:
    """The deterministic content of a file created by ``/__wtfs_dev/bulk_items``.

    ``name`` followed by a newline, repeated and cut to ``size`` bytes.
    """
    if size <= 0:
        return b""
    unit = (name + "\n").encode()
    return (unit * (size // len(unit) + 1))[:size]


def bulk_item_name(prefix: str, index: int, count: int) -> str:
    """The name of item ``index`` (0-based) of a bulk batch of ``count`` items."""
    width = max(5, len(str(max(count - 1, 0))))
    return f"{prefix}{index:0{width}d}"


# --------------------------------------------------------------------------------------------
# Shims


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _DB_LOCK:
            return fn(*args, **kwargs)

    return wrapper


def _lock_methods(cls: type, extra: Iterable[str] = ()) -> None:
    """Wrap the public methods of ``cls`` (and the named private ones) in the DB lock."""
    names = [n for n, v in vars(cls).items() if not n.startswith("_") and inspect.isfunction(v)]
    for name in [*names, *extra]:
        setattr(cls, name, _locked(getattr(cls, name)))


def _bump_version_after(cls: Any, name: str) -> None:
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            store = self._store.__dict__
            store["_wtfs_version"] = store.get("_wtfs_version", 0) + 1

    setattr(cls, name, wrapper)


def _indexed_candidates(store: Any, spec: dict[str, Any]) -> tuple[list[Any], str] | None:
    """Documents that may match `spec` from an equality index, and the field it answered;
    None: scan instead.

    An equality or an `$in` on one field is answered from the index, as MongoDB would.
    """
    for name, value in spec.items():
        if name.startswith("$") or "." in name or isinstance(value, list):
            continue
        if isinstance(value, dict):
            if set(value) != {"$in"} or not isinstance(value["$in"], list):
                continue
            wanted = value["$in"]
        else:
            wanted = [value]
        if name == "_id":
            return [store[v] for v in dict.fromkeys(wanted) if v in store], name
        index = _field_index(store, name)
        if index is not None:
            try:
                ids = [i for v in dict.fromkeys(wanted) for i in index.get(v, ())]
            except TypeError:
                return None
            if getattr(store, "_ttl_indexes", True):  # expiry runs on every store access
                return [store[i] for i in ids if i in store], name
            documents = store._documents  # under the DB lock: no reader lock per document
            return [documents[i] for i in ids if i in documents], name
    return None


def _sorted_matches(collection: Any, spec: Any, sort: Any) -> list[Any]:
    """The documents matching `spec`, uncopied, in `sort` order (as mongomock sorts them)."""
    import mongomock.filtering as filtering
    from bson import ObjectId

    docs = list(collection._iter_documents(spec))
    keys = [tuple(k) for k in (sort.items() if isinstance(sort, dict) else sort or [])]
    if keys == [("_id", 1)] and all(type(doc["_id"]) is ObjectId for doc in docs):
        docs.sort(key=lambda doc: doc["_id"])  # ObjectIds order by their bytes, as in BSON
        return docs
    for key, direction in reversed(keys):
        if key == "$natural":
            if direction < 0:
                docs.reverse()
            continue
        if key.startswith("$"):
            raise NotImplementedError(f"Sorting by {key} is not implemented in mongomock yet")
        docs.sort(key=functools.partial(_sort_key, filtering, key), reverse=direction < 0)
    return docs


def _sort_key(filtering: Any, key: str, doc: Any) -> Any:
    return filtering.resolve_sort_key(key, doc)


def _field_index(store: Any, field: str) -> dict[Any, list[Any]] | None:
    attrs = store.__dict__
    version = attrs.get("_wtfs_version", 0)
    cache = attrs.setdefault("_wtfs_indexes", {})
    hit = cache.get(field)
    if hit is not None and hit[0] == version:
        return cast("dict[Any, list[Any]] | None", hit[1])
    index: dict[Any, list[Any]] | None = {}
    try:
        for doc in list(store.documents):
            index.setdefault(doc.get(field), []).append(doc["_id"])  # type: ignore[union-attr]
    except TypeError:  # a value that cannot be hashed (a list, a dict): scan for this field
        index = None
    cache[field] = (version, index)
    return index


def install_shims(redis_url: str = DEFAULT_REDIS_URL) -> None:
    """Make Girder run on mongomock. Must run before anything imports ``girder``."""
    if any(m == "girder" or m.startswith("girder.") for m in sys.modules):
        raise RuntimeError("install_shims() must run before girder is imported")

    os.environ["GIRDER_NOTIFICATION_REDIS_URL"] = redis_url
    os.environ["GIRDER_WORKER_TASK_ALWAYS_EAGER"] = "true"
    os.environ.setdefault("GIRDER_MONGO_URI", "mongodb://127.0.0.1:27017/girder")

    import mongomock
    import mongomock.codec_options
    import mongomock.collection
    import mongomock.command_cursor
    import mongomock.database
    import mongomock.filtering
    import mongomock.store
    import pymongo

    # mongomock's stubs and pymongo's types do not describe monkeypatching: patch through Any.
    mm: Any = mongomock

    # 1. One in-process store for every client Girder opens.
    store = mm.store.ServerStore()

    def mongo_client(host: Any = None, *args: Any, **kwargs: Any) -> Any:
        return mm.MongoClient(host, tz_aware=kwargs.get("tz_aware", False), _store=store)

    setattr(pymongo, "MongoClient", mongo_client)  # noqa: B010

    # 2. Girder asks for tz_aware + tzinfo=utc; mongomock only refuses the tzinfo.
    original_is_supported = mm.codec_options.is_supported

    def is_supported(custom: Any) -> Any:
        if custom and getattr(custom, "tzinfo", None) is not None:
            custom = custom.with_options(tzinfo=None)
        return original_is_supported(custom)

    mm.codec_options.is_supported = is_supported

    # 3. Cursor.count(), as pymongo 3 had it.
    def count(self: Any, with_limit_and_skip: bool = False) -> int:
        return len(self._compute_results(with_limit_and_skip=with_limit_and_skip))

    mm.collection.Cursor.count = count

    # 3b. MongoDB answers equality lookups from indexes (Girder declares them: files by itemId,
    # items by folderId, ...); mongomock scans every document, so a 10,000-item folder made each
    # request of the server cost 30-60 ms. Answer equality filters from lazily built per-field
    # indexes, dropped on every write, then check the whole filter on the candidates as before.
    original_iter = mm.collection.Collection._iter_documents
    filter_applies = mm.filtering.filter_applies

    def iter_documents(self: Any, spec: Any) -> Any:
        found = _indexed_candidates(self._store, spec) if isinstance(spec, dict) else None
        if found is None:
            return original_iter(self, spec)
        # The index matched its field exactly; mongomock's `$in` check is a list scan per
        # document (quadratic for a page of ids), so only the rest of the filter is checked.
        candidates, answered = found
        rest = {k: v for k, v in spec.items() if k != answered}
        return iter([doc for doc in candidates if filter_applies(rest, doc)])

    for method in ("_insert", "_update", "_delete", "drop"):
        _bump_version_after(mm.collection.Collection, method)
    mm.collection.Collection._iter_documents = iter_documents

    # 3c. MongoDB walks an index in sort order and stops at skip + limit; mongomock copies
    # (and makes tz-aware) every match before slicing, so each 1,000-item page of a 10,000-item
    # folder cost ~0.45 s. Sort the matches uncopied and copy only the page.
    original_compute = mm.collection.Cursor._compute_results

    def compute_results(self: Any, with_limit_and_skip: bool = False) -> Any:
        if not with_limit_and_skip or not self._limit:
            return original_compute(self, with_limit_and_skip)
        window = self.__dict__.get("_wtfs_window")
        if window is not None and window[0] is self._factory:
            return window[1]
        coll = self.collection
        docs = _sorted_matches(coll, self._spec, self._sort)
        page = docs[self._skip : self._skip + abs(self._limit)]
        results = [coll._copy_only_fields(doc, self._projection, dict) for doc in page]
        if coll.codec_options.tz_aware:
            results = [mm.helpers.make_datetime_timezone_aware_in_document(r) for r in results]
        self._wtfs_window = (self._factory, results)
        return results

    mm.collection.Cursor._compute_results = compute_results

    # 5. One lock around every DB operation (reentrant: find_one runs find, and so on).
    _lock_methods(mm.collection.Collection)
    _lock_methods(mm.collection.Cursor, extra=("_compute_results", "__getitem__"))
    _lock_methods(mm.database.Database)

    # 4. Girder serialises only cursors it recognises.
    import girder.api.rest as girder_rest

    girder_rest._MONGO_CURSOR_TYPES = (
        *girder_rest._MONGO_CURSOR_TYPES,
        mm.collection.Cursor,
        mm.command_cursor.CommandCursor,
    )

    # 6. Run Girder's celery tasks inline.
    from girder_worker.app import app as celery_app

    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True


def ensure_assetstore(root: Path) -> str:
    """Create the filesystem assetstore at ``root`` unless one exists; return its id."""
    from girder.models.assetstore import Assetstore

    root.mkdir(parents=True, exist_ok=True)
    with _DB_LOCK:
        existing = Assetstore().findOne({})
        if existing is not None:
            return str(existing["_id"])
        doc = Assetstore().createFilesystemAssetstore(name="local", root=str(root.resolve()))
    logger.info("created filesystem assetstore %s at %s", doc["_id"], root)
    return str(doc["_id"])


# --------------------------------------------------------------------------------------------
# In-process item creation (bulk and hostile)


@dataclass(frozen=True)
class ItemSpec:
    name: str
    content: bytes | None = None
    file_name: str | None = None
    meta: dict[str, Any] | None = None


def _store_blob(root: str, content: bytes) -> tuple[str, str]:
    """Write ``content`` where Girder's filesystem assetstore keeps it; return (sha512, path)."""
    digest = hashlib.sha512(content).hexdigest()
    rel = os.path.join(digest[0:2], digest[2:4], digest)
    absolute = os.path.join(root, rel)
    if not os.path.exists(absolute):
        os.makedirs(os.path.dirname(absolute), exist_ok=True)
        tmp = f"{absolute}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, absolute)
    return digest, rel


def insert_items(
    folder_id: str, specs: Sequence[ItemSpec], user_id: str | None = None
) -> list[dict[str, str | None]]:
    """Insert items (and their files) straight into the collections, bypassing validation.

    Names are stored exactly as given: no stripping, no de-duplication. Folder and root sizes
    are incremented as Girder would. Returns ``[{"itemId": ..., "fileId": ... or None}]``.
    """
    from bson import ObjectId
    from girder.models.assetstore import Assetstore
    from girder.models.file import File
    from girder.models.folder import Folder
    from girder.models.item import Item
    from girder.models.user import User
    from girder.utility.model_importer import ModelImporter

    with _DB_LOCK:
        folder = Folder().load(folder_id, force=True)
        if folder is None:
            raise LookupError(f"no folder {folder_id}")
        user = User().load(user_id, force=True) if user_id else User().findOne({"admin": True})
        if user is None:
            raise LookupError("no user to own the items")
        if "baseParentType" not in folder:
            root = Item().parentsToRoot({"folderId": folder["_id"]}, user, force=True)[0]
            folder["baseParentType"] = root["type"]
            folder["baseParentId"] = root["object"]["_id"]
        assetstore = Assetstore().getCurrent()

    now = datetime.datetime.now(datetime.UTC)
    items: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    result: list[dict[str, str | None]] = []
    total = 0
    for spec in specs:
        item_id = ObjectId()
        size = len(spec.content) if spec.content is not None else 0
        items.append(
            {
                "_id": item_id,
                "name": spec.name,
                "lowerName": spec.name.lower(),
                "description": "",
                "folderId": folder["_id"],
                "creatorId": user["_id"],
                "baseParentType": folder["baseParentType"],
                "baseParentId": folder["baseParentId"],
                "created": now,
                "updated": now,
                "size": size,
                "meta": dict(spec.meta or {}),
            }
        )
        file_id = None
        if spec.content is not None:
            digest, rel = _store_blob(assetstore["root"], spec.content)
            file_name = spec.file_name if spec.file_name is not None else spec.name
            file_id = ObjectId()
            files.append(
                {
                    "_id": file_id,
                    "created": now,
                    "creatorId": user["_id"],
                    "assetstoreId": assetstore["_id"],
                    "name": file_name,
                    "mimeType": "application/octet-stream",
                    "size": size,
                    "itemId": item_id,
                    "sha512": digest,
                    "path": rel,
                    "exts": [e.lower() for e in file_name.split(".")[1:]],
                }
            )
            total += size
        result.append({"itemId": str(item_id), "fileId": str(file_id) if file_id else None})

    with _DB_LOCK:
        if items:
            Item().collection.insert_many(items)
        if files:
            File().collection.insert_many(files)
        if total:
            Folder().increment(query={"_id": folder["_id"]}, field="size", amount=total)
            ModelImporter.model(folder["baseParentType"]).increment(
                query={"_id": folder["baseParentId"]}, field="size", amount=total
            )
    return result


def revoke_tokens(payload: dict[str, Any]) -> dict[str, Any]:
    """Delete every token except those in `keep`: what an admin revoking sessions does.

    A test cannot name the token a wtfs daemon holds (it is never logged), so it revokes all
    of them, keeping its own.
    """
    from girder.models.token import Token

    keep = set(payload.get("keep", []))
    removed = 0
    for token in list(Token().find({})):
        if token["_id"] not in keep:
            Token().remove(token)
            removed += 1
    return {"removed": removed}


def bulk_items(payload: dict[str, Any]) -> dict[str, Any]:
    count = int(payload["count"])
    if count < 0:
        raise ValueError("count must be >= 0")
    prefix = str(payload.get("prefix", "item"))
    file_size = payload.get("fileSize", 0)
    specs = []
    for i in range(count):
        name = bulk_item_name(prefix, i, count)
        content = None if file_size is None else bulk_file_content(name, int(file_size))
        specs.append(ItemSpec(name=name, content=content))
    started = time.monotonic()
    created = insert_items(str(payload["folderId"]), specs, payload.get("userId"))
    elapsed = time.monotonic() - started
    logger.info("bulk_items: %d items in %s in %.2f s", count, payload["folderId"], elapsed)
    return {"itemIds": [c["itemId"] for c in created], "seconds": elapsed}


def raw_item(payload: dict[str, Any]) -> dict[str, Any]:
    content_b64 = payload.get("content")
    content = base64.b64decode(content_b64) if content_b64 is not None else None
    spec = ItemSpec(
        name=str(payload["name"]),
        content=content,
        file_name=payload.get("fileName"),
        meta=payload.get("meta"),
    )
    (created,) = insert_items(str(payload["folderId"]), [spec], payload.get("userId"))
    return dict(created)


# --------------------------------------------------------------------------------------------
# Counting middleware


def route_of(path: str) -> str:
    """Collapse a request path to a route: ids become ``{id}``, nothing after ``download``."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] != ["api", "v1"]:
        return "/" + "/".join(parts[:1])
    out: list[str] = []
    for part in parts[:6]:
        out.append("{id}" if _OBJECT_ID_RE.match(part) else part)
        if part == "download":
            break
    return "/" + "/".join(out)


@dataclass
class RouteStats:
    requests: int = 0
    bytes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class Stats:
    requests: int = 0
    bytes_sent: int = 0
    downloads: int = 0
    download_bytes: int = 0
    by_route: dict[str, RouteStats] = field(default_factory=dict)
    ranges: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RANGES_KEPT))
    since: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "downloads": self.downloads,
            "download_bytes": self.download_bytes,
            "by_route": {
                k: {"requests": v.requests, "bytes": v.bytes, "statuses": dict(v.statuses)}
                for k, v in sorted(self.by_route.items())
            },
            "ranges": list(self.ranges),
            "since": self.since,
        }


class DevMiddleware:
    """Counts requests at the server and serves the ``/__wtfs_dev`` endpoints."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.stats = Stats()
        self.throttle_bps: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == DEV_PREFIX or path.startswith(DEV_PREFIX + "/"):
            await self._dev(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    # --- counting -----------------------------------------------------------------------

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        key = f"{method} {route_of(path)}"
        is_download = "/download" in path
        range_header = None
        if is_download:
            for name, value in scope.get("headers", []):
                if name.lower() == b"range":
                    range_header = value.decode("latin-1")
        stats = self.stats
        route = stats.by_route.setdefault(key, RouteStats())
        stats.requests += 1
        route.requests += 1
        if is_download:
            stats.downloads += 1
        status = 0
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            # Counts go to the Stats this request started under: a reset while a response is
            # streaming does not leak that response's remaining bytes into the fresh counters.
            stats.bytes_sent += n
            route.bytes += n
            if is_download:
                stats.download_bytes += n

        # Bytes handed to a connection the client has closed are dropped by uvicorn without a
        # word (its `send` returns), and Girder goes on making them: counting those would count
        # bytes nobody received (a client that stopped reading, a run cut by another's claim).
        # The server's cycle knows; other servers show no such flag and everything counts.
        cycle = getattr(send, "__self__", None)

        def gone() -> bool:
            return bool(getattr(cycle, "disconnected", False))

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                await send(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            bps = self.throttle_bps
            if not (is_download and bps and body):
                await send(message)
                if not gone():
                    count(len(body))
                return
            step = max(1, int(bps * THROTTLE_SLICE_SECONDS))
            more_body = bool(message.get("more_body", False))
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                last = start + step >= len(body)
                await send(
                    {
                        "type": "http.response.body",
                        "body": piece,
                        "more_body": more_body if last else True,
                    }
                )
                if gone():
                    return  # the rest would go nowhere: stop pacing it
                count(len(piece))
                current = self.throttle_bps
                if current:
                    await asyncio.sleep(len(piece) / current)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            code = str(status)
            route.statuses[code] = route.statuses.get(code, 0) + 1
            if is_download:
                query = _redact(scope.get("query_string", b"").decode("latin-1"))
                stats.ranges.append(
                    {
                        "method": method,
                        "path": path,
                        "query": query,
                        "range": range_header,
                        "status": status,
                        "bytes": sent,
                        "time": time.time(),
                    }
                )

    # --- dev endpoints --------------------------------------------------------------------

    async def _dev(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        action = scope["path"][len(DEV_PREFIX) :].strip("/")
        try:
            if method == "GET" and action == "stats":
                await _json_response(send, 200, self.stats.to_json())
            elif method == "GET" and action == "events":
                await _json_response(send, 200, {"events": list(_events)})
            elif method == "POST" and action == "stats/reset":
                await _read_body(receive)
                self.stats = Stats()
                await _json_response(send, 200, {"ok": True})
            elif method == "POST" and action == "throttle":
                payload = await _read_json(receive)
                bps = payload.get("bytesPerSecond")
                if bps is not None and int(bps) <= 0:
                    raise ValueError("bytesPerSecond must be > 0 or null")
                self.throttle_bps = int(bps) if bps is not None else None
                logger.info("download throttle: %s B/s", self.throttle_bps)
                await _json_response(send, 200, {"bytesPerSecond": self.throttle_bps})
            elif method == "POST" and action == "bulk_items":
                payload = await _read_json(receive)
                result = await asyncio.to_thread(bulk_items, payload)
                await _json_response(send, 200, result)
            elif method == "POST" and action == "raw_item":
                payload = await _read_json(receive)
                result = await asyncio.to_thread(raw_item, payload)
                await _json_response(send, 200, result)
            elif method == "POST" and action == "revoke_tokens":
                payload = await _read_json(receive)
                result = await asyncio.to_thread(revoke_tokens, payload)
                await _json_response(send, 200, result)
            else:
                await _json_response(send, 404, {"error": f"no dev endpoint {method} {action}"})
        except (KeyError, ValueError, TypeError, LookupError) as exc:
            logger.warning("dev endpoint %s %s: bad request: %r", method, action, exc)
            await _json_response(send, 400, {"error": repr(exc)})
        except Exception as exc:
            logger.exception("dev endpoint %s %s failed", method, action)
            await _json_response(send, 500, {"error": repr(exc)})


_SECRET_PARAM_RE = re.compile(r"(^|&)(token|key|password)=[^&]*", re.IGNORECASE)


def _redact(query: str) -> str:
    """Hide credentials a client may have put in a query string."""
    return _SECRET_PARAM_RE.sub(r"\1\2=REDACTED", query)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _read_json(receive: Receive) -> dict[str, Any]:
    body = await _read_body(receive)
    payload = json.loads(body or b"{}")
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    return payload


async def _json_response(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------------------------
# Entry point


def disable_plugins() -> None:
    """Make Girder find no plugin, as if none were installed: a stock Girder.

    Girder memoises the plugins it found through the `girder.plugin` entry points in
    `girder.plugin._pluginRegistry`; an empty registry set before `girder.wsgi` is imported
    (which loads "all plugins") means none is loaded. Must run before the app is imported.
    """
    import girder.plugin

    if "girder.wsgi" in sys.modules:
        raise RuntimeError("disable_plugins() must run before girder.wsgi is imported")
    girder.plugin._pluginRegistry = {}


def record_events() -> None:
    """Bind a recorder to each of `RECORDED_EVENTS` (after the plugins load: it runs last)."""
    from girder import events

    def record(event: Any) -> None:
        info = event.info if isinstance(event.info, dict) else {}
        _events.append({"event": event.name, "id": str(info.get("_id"))})

    for name in RECORDED_EVENTS:
        events.bind(name, "wtfs_devgirder.record", record)


def build_app(
    assetstore: Path, redis_url: str = DEFAULT_REDIS_URL, *, plugins: bool = True
) -> DevMiddleware:
    """Install the shims, import Girder's ASGI app, create the assetstore, wrap the app."""
    install_shims(redis_url)
    if not plugins:
        disable_plugins()
    from girder.asgi import app as girder_app

    record_events()

    ensure_assetstore(assetstore)
    return DevMiddleware(girder_app)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wtfs_devgirder.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--fd", type=int, default=None, help="serve this inherited listening socket"
    )
    parser.add_argument("--assetstore", type=Path, required=True)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument(
        "--no-plugins", action="store_true", help="load no Girder plugin (a stock Girder)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    started = time.monotonic()
    app = build_app(args.assetstore, args.redis_url, plugins=not args.no_plugins)

    import uvicorn

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        access_log=args.access_log,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    sockets = None
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        sockets = [sock]
    logger.info("girder app ready in %.2f s, serving", time.monotonic() - started)
    server.run(sockets=sockets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
