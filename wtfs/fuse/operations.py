"""pyfuse3 Operations for the read-only tree. Every handler is short: metadata from memory,
bytes from the cache manager, errors translated once by `@translated`.

An open first makes sure the node names Girder's current version (`Tree.check_version`). A new
version keeps the node's inode, and the kernel's page cache belongs to the inode, not to an
open file: so while files of another version of the inode are open here, a new open bypasses
the page cache (`direct_io`), and the first open of a version the page cache may not hold
drops what it holds (no `keep_cache`). An old version held open then reads its own bytes, a new
open the new ones.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from typing import Any

import pyfuse3

from wtfs.cache.manager import CacheManager, Handle
from wtfs.config import MountConfig
from wtfs.errors import NotFound, ReadOnly, WtfsError
from wtfs.fuse.errors import translated
from wtfs.namespace.tree import DirNode, FileNode, Node, Tree

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, manager: CacheManager, mount: MountConfig) -> None:
        """`mount` says how nodes look to the kernel: owner, mode, cache timeouts."""
        super().__init__()
        self.tree = tree
        self.manager = manager
        self.mount = mount
        # Files are shown as the daemon's own unless the config names an owner.
        self.uid = os.getuid() if mount.uid is None else mount.uid
        self.gid = os.getgid() if mount.gid is None else mount.gid
        self._handles: dict[int, Handle] = {}
        self._buffer = bytearray(1024 * 1024)
        self._next_fh = 1
        #: inode → version → how many files of it are open here
        self._open_versions: dict[int, dict[str, int]] = {}
        #: inode → the version last opened through the page cache (what it may hold)
        self._cached_version: dict[int, str] = {}
        self._fh_version: dict[int, tuple[int, str]] = {}

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
            attr.st_mode = stat.S_IFREG | (0o444 & ~self.mount.umask)
            attr.st_nlink = 1
            attr.st_size = node.size
        else:
            attr.st_mode = stat.S_IFDIR | (0o555 & ~self.mount.umask)
            attr.st_nlink = 2
            attr.st_size = 0
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.entry_timeout = self.mount.entry_timeout
        attr.attr_timeout = self.mount.attr_timeout
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
        await self._check_version(node)
        handle = await self.manager.open(node.ref())
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        version = handle.entry.ref.version
        opened = self._open_versions.setdefault(inode, {})
        direct = any(n > 0 for v, n in opened.items() if v != version)
        cached = self._cached_version.get(inode, version)
        keep = handle.keep_cache and not direct and cached == version
        if not direct:
            self._cached_version[inode] = version
        opened[version] = opened.get(version, 0) + 1
        self._fh_version[fh] = (inode, version)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=direct)

    async def _check_version(self, node: FileNode) -> None:
        """Girder's current version before the open (see the module docstring); a file gone
        from Girder is ENOENT (one Girder refuses us: EACCES), its cause recorded as a FAILED
        transfer."""
        try:
            change = await self.tree.check_version(node, self.mount.revalidate_after)
        except WtfsError as exc:
            await self.manager.refused(node.ref(), exc)
            raise
        if change is not None and (change.old_size, change.old_mtime_ns) != (
            node.size,
            node.mtime_ns,
        ):
            try:  # attributes only: the page cache is the open's business (direct_io, keep_cache)
                pyfuse3.invalidate_inode(node.inode, attr_only=True)
            except OSError as exc:
                log.debug("%s: attributes not invalidated: %s", node.path, exc)

    @translated
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # One buffer for every read: pyfuse3 replies from it (any buffer does, its stub says
        # bytes) before any other request runs.
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        return await self.manager.read(self._handles[fh], off, size, self._buffer)

    @translated
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        inode, version = self._fh_version.pop(fh)
        opened = self._open_versions[inode]
        opened[version] -= 1
        if not opened[version]:
            del opened[version]
            if not opened:
                del self._open_versions[inode]
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
