"""A tiny pyfuse3 passthrough filesystem of a directory, for tests that need a real FUSE
filesystem under a path (e.g. a store that must be refused there): lookups, attributes,
directories, and files created, read and written, all passed to the directory underneath.

    python -m tests.support.passthroughfs SOURCE MOUNTPOINT READY_FILE

It writes READY_FILE once mounted, and unmounts on SIGTERM or `fusermount3 -u`.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import trio


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: Path) -> None:
        super().__init__()
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: str(source)}
        self._inodes: dict[int, int] = {os.lstat(source).st_ino: pyfuse3.ROOT_INODE}
        self._dirs: dict[int, list[str]] = {}
        self._next_dir = 1

    # -- inodes -----------------------------------------------------------------------------

    def _path(self, inode: int) -> str:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attrs(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        inode = self._inodes.setdefault(st.st_ino, st.st_ino + 1)  # 1 is the root's
        self._paths[inode] = path
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks"):
            setattr(attrs, name, getattr(st, name))
        attrs.st_blksize = 4096
        attrs.st_atime_ns, attrs.st_mtime_ns, attrs.st_ctime_ns = (
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip
        attrs.entry_timeout = attrs.attr_timeout = 0
        return attrs

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        return self._attrs(self._child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attrs(self._path(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        path = self._path(inode)
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return self._attrs(path)

    async def statfs(self, ctx: Any) -> Any:
        st = os.statvfs(self._paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):  # fmt: skip
            setattr(data, name, getattr(st, name))
        return data

    # -- directories ------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> Any:
        handle = self._next_dir
        self._next_dir += 1
        self._dirs[handle] = sorted(os.listdir(self._path(inode)))
        self._paths[-handle] = self._path(inode)
        return handle

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        base = self._paths[-fh]
        names = self._dirs[fh]
        for index in range(start_id, len(names)):
            attrs = self._attrs(os.path.join(base, names[index]))
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attrs, index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._paths.pop(-fh, None)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        try:
            os.mkdir(path, mode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return self._attrs(path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.rmdir(self._child(parent_inode, name))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        try:
            os.unlink(self._child(parent_inode, name))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    # -- files ------------------------------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = self._child(parent_inode, name)
        try:
            fd = os.open(path, flags | os.O_CREAT, mode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=fd), self._attrs(path)

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=fd)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def release(self, fh: int) -> None:
        os.close(fh)


async def _serve(ready: Path) -> None:
    async with trio.open_nursery() as nursery:

        async def on_term() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_term)
        await trio.Path(ready).write_text("mounted\n")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    source, mountpoint, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    options = set(pyfuse3.default_options) | {"fsname=passthrough"}
    options.discard("default_permissions")
    pyfuse3.init(Passthrough(source), mountpoint, options)
    try:
        trio.run(_serve, ready)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
