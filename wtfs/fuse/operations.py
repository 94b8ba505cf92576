"""pyfuse3 Operations for the read-only tree. Every handler is short: metadata from memory,
bytes from the cache manager, errors translated once by `@translated`."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3

from wtfs.cache.manager import CacheManager, FileRef, Handle
from wtfs.errors import NotFound, ReadOnly
from wtfs.fuse.errors import translated
from wtfs.namespace.tree import DirNode, FileNode, Node, Tree

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(frozen=True)
class Presentation:
    """How nodes look to the kernel (from the mount config)."""

    uid: int
    gid: int
    umask: int = 0o022
    entry_timeout: float = 300.0
    attr_timeout: float = 300.0


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, manager: CacheManager, presentation: Presentation) -> None:
        super().__init__()
        self.tree = tree
        self.manager = manager
        self.look = presentation
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    # -- helpers ------------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.tree.by_inode.get(inode)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        if isinstance(node, FileNode):
            attr.st_mode = stat.S_IFREG | (0o444 & ~self.look.umask)
            attr.st_nlink = 1
            attr.st_size = node.size
        else:
            attr.st_mode = stat.S_IFDIR | (0o555 & ~self.look.umask)
            attr.st_nlink = 2
            attr.st_size = 0
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_uid = self.look.uid
        attr.st_gid = self.look.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.entry_timeout = self.look.entry_timeout
        attr.attr_timeout = self.look.attr_timeout
        return attr

    async def _children(self, node: Node) -> dict[str, Node]:
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return await self.tree.ensure_loaded(node)

    # -- metadata -----------------------------------------------------------------------------

    @translated
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            return self.attributes(parent)
        if text == "..":
            return self.attributes(parent.parent or parent)
        child = (await self._children(parent)).get(text)
        if child is None:
            raise NotFound(f"{text!r} not found")
        return self.attributes(child)

    @translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attributes(self._node(inode))

    @translated
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        await self._children(self._node(inode))
        return inode

    @translated
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        children: Sequence[Node] = list((await self._children(self._node(fh))).values())
        for index in range(start_id, len(children)):
            child = children[index]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(child.name), self.attributes(child), index + 1
            ):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    @translated
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = self.manager.settings.capacity // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.tree.by_inode)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # getxattr/listxattr are left to pyfuse3's ENOSYS: the kernel then stops asking, where
    # ENOATTR would cost `ls -l` two requests per file, every time.

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Nodes live as long as the tree: nothing to free per lookup.
        return None

    # -- files --------------------------------------------------------------------------------

    @translated
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & WRITE_FLAGS:
            raise ReadOnly("the wtfs mount is read-only")
        if not isinstance(node, FileNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        handle = await self.manager.open(file_ref(node))
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache)

    @translated
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.manager.read(self._handles[fh], off, size)

    @translated
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        await self.manager.release(handle)

    async def flush(self, fh: int) -> None:
        return None

    # -- everything that would write ----------------------------------------------------------

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _read_only
    write = _read_only
    create = _read_only
    mkdir = _read_only
    mknod = _read_only
    unlink = _read_only
    rmdir = _read_only
    symlink = _read_only
    rename = _read_only
    link = _read_only
    setxattr = _read_only
    removexattr = _read_only

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None  # nothing is ever dirty


def file_ref(node: FileNode) -> FileRef:
    return FileRef(node.key, node.item_id, node.size, node.source, node.path, node.error)
