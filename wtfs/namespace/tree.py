"""The mounted tree: nodes built from a session's dataSet, folders loaded lazily from Girder.

Folders are listed on first access (every page of every listing), then answered from memory:
the tree is read-only, so `getattr`/`lookup` never cost a round trip after that.

A file's version (`FileNode.version`, its contents' fingerprint) is only as fresh as the file
document it was made from. Girder replaces a file's contents under the same id, and when the
new contents have as many bytes only the file document's `created` changes: not the item's
`updated` or size, which is what the metadata cache goes by. So each node records when its file
document last came from the server (`FileNode.checked`); one that came from the metadata cache
is checked against Girder at its first open (`Tree.check_version`, one `GET /file/{id}`), and
so is every node after a refresh whose listing came from the cache, and, with
`mount.revalidate_after`, any node whose last check is older than that.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import trio
from wtfs_index import fingerprint

from wtfs.cache.entry import FileRef
from wtfs.errors import NotFound, TransientError, WtfsError
from wtfs.girder.client import BadRequest, GirderClient
from wtfs.girder.metacache import MetadataCache
from wtfs.namespace.concurrency import run_all
from wtfs.namespace.names import posix_names
from wtfs.namespace.session import Session
from wtfs.providers.base import Source
from wtfs.providers.girder import deleted_in_girder

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Per-item requests in flight while listing a folder: Girder answers them one core at a time,
# and more only costs the client (connection-pool bookkeeping) without helping.
LISTING_CONCURRENCY = 8


@dataclass(eq=False)
class Node:
    inode: int
    name: str
    mtime_ns: int
    parent: DirNode | None = field(repr=False)


@dataclass(eq=False)
class FileNode(Node):
    size: int
    item_id: str
    key: str  # the source: girder:<fileId> or item:<itemId>
    source: Source
    #: set when the item cannot be fetched at all (e.g. phys_path without size): reads give EIO
    error: str | None = None
    #: the contents' fingerprint (wtfs_index.fingerprint): the store keeps each version apart
    version: str = ""
    content_hash: str | None = None
    #: `time.monotonic()` when the document this node was made from last came from the server;
    #: None when it came from the metadata cache (never checked in this mount): see the module
    #: docstring
    checked: float | None = None

    @property
    def path(self) -> str:
        return _path_of(self)

    def ref(self) -> FileRef:
        """What the cache needs to know of this file. Made here, on the tree's side, because
        the cache must never import the namespace."""
        return FileRef(
            self.key,
            self.version,
            self.item_id,
            self.size,
            self.source,
            self.path,
            self.error,
            self.content_hash,
        )


@dataclass(eq=False)
class DirNode(Node):
    #: None until listed; then POSIX name → node
    children: dict[str, Node] | None = None
    folder_id: str | None = None  # a Girder folder to list on first access
    item_id: str | None = None  # set for an item shown as a directory of its files
    load_lock: trio.Lock = field(default_factory=trio.Lock, repr=False)
    load_error: str | None = None

    @property
    def path(self) -> str:
        return _path_of(self)


def identity(node: Node) -> tuple[object, ...]:
    """What a node stands for in Girder: equal identities may share an inode across refreshes."""
    if isinstance(node, FileNode):
        return ("file", node.key, node.version, node.size, node.mtime_ns, node.error)
    assert isinstance(node, DirNode)
    if node.folder_id is not None:
        return ("folder", node.folder_id)
    if node.item_id is not None:
        return ("item", node.item_id, node.mtime_ns)
    return ("dir",)


def _path_of(node: Node) -> str:
    parts = []
    current: Node | None = node
    while current is not None and current.parent is not None:
        parts.append(current.name)
        current = current.parent
    return "/" + "/".join(reversed(parts))


def _set_girder_file(node: FileNode, doc: dict[str, Any], mtime: int | None) -> None:
    """Make `node` show the Girder file `doc` (its size, version, checksum); `mtime` None: the
    file's own time (a file of an item shown as a directory), else the item's."""
    size = int(doc.get("size") or 0)
    checksum = f"sha512:{doc['sha512']}" if isinstance(doc.get("sha512"), str) else None
    node.size = size
    node.source = Source(node.source.url or f"girder://file/{doc['_id']}", size, checksum,
                         label=str(doc.get("name", "")))  # fmt: skip
    node.version = girder_file_version(doc)
    node.content_hash = checksum
    node.mtime_ns = mtime or girder_time_ns(doc)


def girder_file_version(doc: dict[str, Any]) -> str:
    """A Girder file's version: its size and `created` time (Girder 5 gives a file whose
    contents were replaced a new `created`, even for the same number of bytes), and its sha512
    when the server shows one."""
    sha512 = doc.get("sha512") if isinstance(doc.get("sha512"), str) else None
    return fingerprint(int(doc.get("size") or 0), doc.get("created"), sha512)


@dataclass(frozen=True)
class VersionChange:
    """What `Tree.check_version` changed on a node: the kernel must forget its attributes."""

    old_version: str
    old_size: int
    old_mtime_ns: int


def girder_time_ns(document: dict[str, Any]) -> int:
    for key in ("updated", "created"):
        value = document.get(key)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return time.time_ns()


class Tree:
    """Inode table plus the logic that turns Girder objects into nodes."""

    def __init__(self, girder: GirderClient | None) -> None:
        self.girder = girder
        #: set by the daemon once the store exists: Girder answers kept across mounts
        self.metacache: MetadataCache | None = None
        self._inodes = itertools.count(ROOT_INODE + 1)
        self.by_inode: dict[int, Node] = {}
        #: how long a version check may wait for Girder (set by the daemon: read_deadline)
        self.check_deadline = 120.0
        self._checking: dict[int, trio.Lock] = {}
        self.root = DirNode(ROOT_INODE, "", time.time_ns(), None, children={})
        self.by_inode[ROOT_INODE] = self.root

    def _next(self) -> int:
        return next(self._inodes)

    def _register(self, node: Node) -> Node:
        self.by_inode[node.inode] = node
        return node

    # -- building -----------------------------------------------------------------------------

    async def populate(self, session: Session, root: DirNode | None = None) -> None:
        """Resolve every dataSet entry and hang it at its mountPath (parents are synthesised)."""
        girder = self._need_girder()
        root = root or self.root
        resolved: dict[str, tuple[str, dict[str, Any]]] = {}

        async def resolve(item_id: str) -> None:
            resolved[item_id] = await girder.resolve(item_id)

        await run_all([functools.partial(resolve, e.item_id) for e in session.data_set])
        for entry in session.data_set:
            parent = root
            for part in entry.parts[:-1]:
                parent = self._synthetic_dir(parent, part)
            kind, document = resolved[entry.item_id]
            name = entry.parts[-1]
            node: Node
            if kind == "folder":
                node = DirNode(
                    self._next(),
                    name,
                    girder_time_ns(document),
                    parent,
                    folder_id=str(document["_id"]),
                )
            else:
                files = [f async for f in girder.list_files(str(document["_id"]))]
                node = self._item_node(document, files, name, parent, fresh=True)
            assert parent.children is not None
            parent.children[name] = self._register(node)

    def _synthetic_dir(self, parent: DirNode, name: str) -> DirNode:
        assert parent.children is not None
        existing = parent.children.get(name)
        if isinstance(existing, DirNode) and existing.folder_id is None:
            return existing
        node = DirNode(self._next(), name, time.time_ns(), parent, children={})
        parent.children[name] = self._register(node)
        return node

    def _item_node(
        self,
        item: dict[str, Any],
        files: list[dict[str, Any]],
        name: str,
        parent: DirNode,
        *,
        fresh: bool,
    ) -> Node:
        """The node of an item; `fresh`: its file documents came from the server just now (not
        from the metadata cache). The item document itself always did."""
        item_id = str(item["_id"])
        mtime = girder_time_ns(item)
        meta = item.get("meta") or {}
        if "phys_path" in meta:
            return self._phys_node(item_id, meta, name, mtime, parent)
        if len(files) == 1:  # the item is what is shown: its modification time is the item's
            return self._girder_file_node(item_id, files[0], name, parent, mtime, fresh=fresh)
        # Zero files: an empty directory; several: a directory of its files.
        directory = DirNode(self._next(), name, mtime, parent, children={}, item_id=item_id)
        names = posix_names([(str(f.get("name", "")), str(f["_id"])) for f in files])
        assert directory.children is not None
        for posix_name, file_doc in zip(names, files, strict=True):
            child = self._girder_file_node(item_id, file_doc, posix_name, directory, fresh=fresh)
            directory.children[posix_name] = self._register(child)
        return directory

    def _girder_file_node(
        self,
        item_id: str,
        doc: dict[str, Any],
        name: str,
        parent: DirNode,
        mtime: int | None = None,
        *,
        fresh: bool,
    ) -> FileNode:
        file_id = str(doc["_id"])
        node = FileNode(
            self._next(), name, 0, parent, 0, item_id, f"girder:{file_id}", Source("")
        )  # fmt: skip
        _set_girder_file(node, doc, mtime)
        node.checked = time.monotonic() if fresh else None
        return node

    def _phys_node(
        self, item_id: str, meta: dict[str, Any], name: str, mtime: int, parent: DirNode
    ) -> FileNode:
        phys = str(meta["phys_path"])
        error = None
        size = meta.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            error = f"item {item_id}: meta.phys_path is set but meta.size is missing or invalid"
            size = 0
        url = phys if urlsplit(phys).scheme else f"local://{phys}"
        if not urlsplit(phys).scheme and not phys.startswith("/"):
            error = error or f"item {item_id}: meta.phys_path {phys!r} is a relative local path"
        checksum = meta.get("checksum")
        if isinstance(checksum, dict) and checksum:
            algo, digest = next(iter(checksum.items()))
            checksum = f"{algo}:{digest}"
        checksum = checksum if isinstance(checksum, str) else None
        source = Source(url, size, checksum, label=name)
        version = fingerprint(size, phys, mtime, checksum)
        return FileNode(
            self._next(), name, mtime, parent, size, item_id, f"item:{item_id}", source,
            error=error, version=version, content_hash=checksum, checked=time.monotonic(),
        )  # fmt: skip

    # -- versions -------------------------------------------------------------------------------

    async def check_version(self, node: FileNode, max_age: float | None) -> VersionChange | None:
        """Before an open: make sure `node` names the version Girder has now.

        Asks Girder (`GET /file/{id}`, or `GET /item/{id}` for a `meta.phys_path` item) when
        the node's document never came from the server in this mount (`checked` None: from
        the metadata cache), or when it is older than `max_age` seconds. A new version is
        written into the node in place (same inode: an open file of the old version keeps its
        entry, the index supersedes it); the change is returned for the kernel to forget the
        node's attributes. A file deleted in Girder raises NotFound ("...: deleted in
        Girder"); when Girder cannot be asked (unreachable, stalled past `check_deadline`),
        the known version is kept and checked again at the next open.
        """
        if self.girder is None or node.error is not None:
            return None
        if not self._check_due(node, max_age):
            return None
        lock = self._checking.setdefault(node.inode, trio.Lock())
        try:
            async with lock:  # concurrent first opens ask once
                if not self._check_due(node, max_age):
                    return None
                return await self._check(node)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._checking.pop(node.inode, None)

    @staticmethod
    def _check_due(node: FileNode, max_age: float | None) -> bool:
        if node.checked is None:
            return True
        return max_age is not None and time.monotonic() - node.checked >= max_age

    async def _check(self, node: FileNode) -> VersionChange | None:
        girder = self._need_girder()
        asked = time.monotonic()
        kind, _, object_id = node.key.partition(":")
        try:
            with trio.fail_after(self.check_deadline):
                if kind == "girder":
                    doc = await girder.get_json(f"file/{object_id}")
                elif kind == "item":
                    doc = await girder.get_item(object_id)
                else:
                    return None  # not a Girder object: nothing to ask
        except (BadRequest, NotFound):  # Girder's answer for an id it no longer has
            raise deleted_in_girder(node.source.label or node.name) from None
        except (TransientError, trio.TooSlowError) as exc:
            cause = exc.cause if isinstance(exc, WtfsError) else f"{self.check_deadline:g}s"
            log.warning("%s: version not checked, Girder did not answer (%s): serving the "
                        "version listed", node.path, cause)  # fmt: skip
            return None
        before = VersionChange(node.version, node.size, node.mtime_ns)
        if kind == "girder":
            in_item_dir = isinstance(node.parent, DirNode) and node.parent.item_id is not None
            _set_girder_file(node, doc, None if in_item_dir else node.mtime_ns)
        else:
            meta = doc.get("meta") or {}
            if "phys_path" not in meta:  # no longer a phys_path item: the next refresh says
                raise deleted_in_girder(node.name)
            fresh = self._phys_node(node.item_id, meta, node.name, girder_time_ns(doc),
                                    node.parent or self.root)  # fmt: skip
            node.size, node.source, node.error = fresh.size, fresh.source, fresh.error
            node.version, node.content_hash, node.mtime_ns = (
                fresh.version, fresh.content_hash, fresh.mtime_ns
            )  # fmt: skip
        node.checked = asked
        if node.version == before.old_version:
            return None
        log.info("%s: Girder has a new version (%s, was %s): opens read it from now on",
                 node.path, node.version, before.old_version)  # fmt: skip
        if kind == "girder" and self.metacache is not None:
            await trio.to_thread.run_sync(self.metacache.update_file, node.item_id, doc)
        return before

    # -- lazy folders -------------------------------------------------------------------------

    async def ensure_loaded(self, node: DirNode) -> dict[str, Node]:
        if node.children is not None:
            return node.children
        async with node.load_lock:
            if node.children is None:
                node.children = await self._list_folder(node)
        return node.children

    async def _files_of(
        self, items: list[dict[str, Any]]
    ) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
        """Each item's files: from the metadata cache when still valid, else one request each.
        Also the ids of the items answered from the cache (their file documents may be old)."""
        girder = self._need_girder()
        cache = self.metacache
        files = await trio.to_thread.run_sync(cache.get_files, items) if cache else {}
        missing = [i for i in items if str(i["_id"]) not in files]
        fetched: dict[str, list[dict[str, Any]]] = {}

        async def list_files(item_id: str) -> None:
            fetched[item_id] = [f async for f in girder.list_files(item_id)]

        await run_all(
            [functools.partial(list_files, str(i["_id"])) for i in missing], LISTING_CONCURRENCY
        )
        if cache is not None and fetched:
            pairs = [(i, fetched[str(i["_id"])]) for i in missing]
            await trio.to_thread.run_sync(cache.put_files, pairs)
        if items:
            log.debug("file lists: %d cached, %d fetched", len(items) - len(missing), len(missing))
        return {**files, **fetched}, set(files)

    async def _list_folder(self, node: DirNode) -> dict[str, Node]:
        girder = self._need_girder()
        assert node.folder_id is not None
        started = time.monotonic()
        folders = [f async for f in girder.list_folders(node.folder_id)]
        bulk = await girder.items_with_files(node.folder_id)
        cached: set[str] = set()
        if bulk is not None:
            items = bulk
            files = {str(i["_id"]): i.pop("files") for i in items}
        else:
            items = [i async for i in girder.list_items(node.folder_id)]
            files, cached = await self._files_of(
                [i for i in items if "phys_path" not in (i.get("meta") or {})]
            )
        objects = [(str(f.get("name", "")), str(f["_id"])) for f in folders]
        objects += [(str(i.get("name", "")), str(i["_id"])) for i in items]
        names = posix_names(objects)
        children: dict[str, Node] = {}
        for name, folder in zip(names, folders, strict=False):
            children[name] = self._register(
                DirNode(
                    self._next(), name, girder_time_ns(folder), node, folder_id=str(folder["_id"])
                )
            )
        for name, item in zip(names[len(folders) :], items, strict=True):
            item_id = str(item["_id"])
            child = self._item_node(
                item, files.get(item_id, []), name, node, fresh=item_id not in cached
            )
            children[name] = self._register(child)
        log.info(
            "listed %s: %d folders, %d items in %.2fs",
            node.path,
            len(folders),
            len(items),
            time.monotonic() - started,
        )
        return children

    # -- refresh ------------------------------------------------------------------------------

    async def refresh(self, session: Session) -> list[tuple[int, str]]:
        """Bring the tree up to date with the session and Girder, without unmounting.

        Nodes whose Girder identity is unchanged keep their inode (open files and the kernel's
        caches stay valid); new objects get new nodes. Returns (parent inode, name) of every
        name that went away or now means something else, for the kernel to forget.
        """
        fresh = DirNode(0, "", self.root.mtime_ns, None, children={})
        await self.populate(session, fresh)
        gone: list[tuple[int, str]] = []
        assert fresh.children is not None
        await self._merge(self.root, fresh.children, gone)
        return gone

    async def _merge(
        self, old: DirNode, fresh: dict[str, Node], gone: list[tuple[int, str]]
    ) -> None:
        before = old.children or {}
        merged: dict[str, Node] = {}
        for name, node in fresh.items():
            prev = before.get(name)
            if prev is None or identity(prev) != identity(node):
                node.parent = old
                merged[name] = node
                if prev is not None:
                    gone.append((old.inode, name))
                continue
            merged[name] = prev
            self.by_inode.pop(node.inode, None)  # the fresh duplicate: the old node stays
            if isinstance(prev, FileNode) and isinstance(node, FileNode):
                # As fresh as what the refresh read: a document from the metadata cache makes
                # the next open ask Girder again.
                prev.checked = node.checked
            if isinstance(prev, DirNode) and prev.children is not None:
                if prev.folder_id is not None:
                    await self._merge(prev, await self._list_folder(prev), gone)
                elif isinstance(node, DirNode) and node.children is not None:
                    await self._merge(prev, node.children, gone)  # adopts or drops each child
        gone.extend((old.inode, name) for name in before.keys() - fresh.keys())
        old.children = merged

    async def find(self, path: str) -> Node | None:
        """The node at an absolute path within the mount (listing folders on the way)."""
        node: Node = self.root
        for part in filter(None, path.split("/")):
            if not isinstance(node, DirNode):
                return None
            child = (await self.ensure_loaded(node)).get(part)
            if child is None:
                return None
            node = child
        return node

    def _need_girder(self) -> GirderClient:
        if self.girder is None:
            raise WtfsError("no Girder API URL is configured (girder.api_url)")
        return self.girder
