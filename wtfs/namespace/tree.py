"""The mounted tree: nodes built from a session's dataSet, folders loaded lazily from Girder.

Folders are listed on first access (every page of every listing), then answered from memory:
the tree is read-only, so `getattr`/`lookup` never cost a round trip after that.
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

from wtfs.errors import WtfsError
from wtfs.girder.client import GirderClient
from wtfs.girder.metacache import MetadataCache
from wtfs.namespace.concurrency import run_all
from wtfs.namespace.names import posix_names
from wtfs.namespace.session import Session
from wtfs.providers.base import Source

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
    key: str  # cache key: girder:<fileId> or item:<itemId>
    source: Source
    #: set when the item cannot be fetched at all (e.g. phys_path without size): reads give EIO
    error: str | None = None

    @property
    def path(self) -> str:
        return _path_of(self)


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
        return ("file", node.key, node.size, node.mtime_ns, node.error)
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
                node = self._item_node(document, files, name, parent)
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
        self, item: dict[str, Any], files: list[dict[str, Any]], name: str, parent: DirNode
    ) -> Node:
        item_id = str(item["_id"])
        mtime = girder_time_ns(item)
        meta = item.get("meta") or {}
        if "phys_path" in meta:
            return self._phys_node(item_id, meta, name, mtime, parent)
        if len(files) == 1:  # the item is what is shown: its modification time is the item's
            return self._girder_file_node(item_id, files[0], name, parent, mtime)
        # Zero files: an empty directory; several: a directory of its files.
        directory = DirNode(self._next(), name, mtime, parent, children={}, item_id=item_id)
        names = posix_names([(str(f.get("name", "")), str(f["_id"])) for f in files])
        assert directory.children is not None
        for posix_name, file_doc in zip(names, files, strict=True):
            child = self._girder_file_node(item_id, file_doc, posix_name, directory)
            directory.children[posix_name] = self._register(child)
        return directory

    def _girder_file_node(
        self,
        item_id: str,
        doc: dict[str, Any],
        name: str,
        parent: DirNode,
        mtime: int | None = None,
    ) -> FileNode:
        file_id = str(doc["_id"])
        size = int(doc.get("size") or 0)
        checksum = f"sha512:{doc['sha512']}" if isinstance(doc.get("sha512"), str) else None
        source = Source(f"girder://file/{file_id}", size, checksum, label=str(doc.get("name", "")))
        return FileNode(
            self._next(),
            name,
            mtime or girder_time_ns(doc),
            parent,
            size,
            item_id,
            f"girder:{file_id}",
            source,
        )

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
        source = Source(url, size, checksum if isinstance(checksum, str) else None, label=name)
        return FileNode(
            self._next(), name, mtime, parent, size, item_id, f"item:{item_id}", source, error=error
        )

    # -- lazy folders -------------------------------------------------------------------------

    async def ensure_loaded(self, node: DirNode) -> dict[str, Node]:
        if node.children is not None:
            return node.children
        async with node.load_lock:
            if node.children is None:
                node.children = await self._list_folder(node)
        return node.children

    async def _files_of(self, items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Each item's files: from the metadata cache when still valid, else one request each."""
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
        return {**files, **fetched}

    async def _list_folder(self, node: DirNode) -> dict[str, Node]:
        girder = self._need_girder()
        assert node.folder_id is not None
        started = time.monotonic()
        folders = [f async for f in girder.list_folders(node.folder_id)]
        bulk = await girder.items_with_files(node.folder_id)
        if bulk is not None:
            items = bulk
            files = {str(i["_id"]): i.pop("files") for i in items}
        else:
            items = [i async for i in girder.list_items(node.folder_id)]
            files = await self._files_of(
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
            child = self._item_node(item, files.get(str(item["_id"]), []), name, node)
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
