"""A tiny real FUSE filesystem for tests that need a path on FUSE: a read-only root holding one
empty directory, `store`. Run it in its own process (pyfuse3 owns the process's event loop):

    with tiny_fuse(tmp_path / "mnt") as mountpoint:
        ...  # mountpoint / "store" is a directory on a FUSE filesystem

`statfs=False` leaves statfs(2) unimplemented (pyfuse3 answers ENOSYS), as some FUSE
filesystems do.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STORE_INODE = 2
STORE_NAME = b"store"


def _serve(mountpoint: str, with_statfs: bool) -> None:
    import pyfuse3
    import trio

    class Tiny(pyfuse3.Operations):  # type: ignore[misc]
        def _attr(self, inode: int) -> Any:
            attr = pyfuse3.EntryAttributes()
            attr.st_ino = inode
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            attr.st_uid = os.getuid()
            attr.st_gid = os.getgid()
            now = time.time_ns()
            attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = now
            attr.entry_timeout = attr.attr_timeout = 0
            return attr

        async def getattr(self, inode: int, ctx: Any = None) -> Any:
            if inode not in (pyfuse3.ROOT_INODE, STORE_INODE):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(inode)

        async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> Any:
            if parent == pyfuse3.ROOT_INODE and name == STORE_NAME:
                return self._attr(STORE_INODE)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode: int, ctx: Any) -> int:
            return inode

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            if fh == pyfuse3.ROOT_INODE and start_id == 0:
                pyfuse3.readdir_reply(token, STORE_NAME, self._attr(STORE_INODE), 1)

        async def statfs(self, ctx: Any) -> Any:
            if not with_statfs:
                raise pyfuse3.FUSEError(errno.ENOSYS)
            data = pyfuse3.StatvfsData()
            data.f_bsize = data.f_frsize = 4096
            data.f_blocks = data.f_bfree = data.f_bavail = 1 << 20
            data.f_files = data.f_ffree = data.f_favail = 1 << 10
            data.f_namemax = 255
            return data

    pyfuse3.init(Tiny(), mountpoint, {"fsname=wtfs-tinyfuse", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


@contextmanager
def tiny_fuse(mountpoint: Path, *, statfs: bool = True, timeout: float = 20) -> Iterator[Path]:
    """Mount the tiny filesystem at `mountpoint` (created if needed) for the block's duration."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.tinyfuse", str(mountpoint), str(int(statfs))],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (mountpoint / STORE_NAME.decode()).is_dir():
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"the tiny FUSE filesystem did not start:\n{stderr}")
            if time.monotonic() > deadline:
                raise AssertionError("the tiny FUSE filesystem did not appear in time")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True
        )
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2] == "1")
