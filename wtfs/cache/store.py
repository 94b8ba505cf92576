"""The private store on disk: a 0700 directory holding the index and one sparse 0600 file per
entry under `data/`. Files are named by the index (a fresh random name per entry), so a file
being deleted by one process can never be a file another process has just created.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wtfs_index.index import Index

from wtfs.errors import ConfigError

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


@dataclass(frozen=True)
class RecoveryReport:
    orphans_removed: int
    missing_dropped: int
    reclaimed: dict[str, int]


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"

    @property
    def index_path(self) -> Path:
        return self.root / "index.sqlite3"

    def prepare(self) -> None:
        """Create the layout (0700 dirs), or fail with a ConfigError naming the path."""
        try:
            self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            os.chmod(self.data, 0o700)
            probe = self.root / f".probe-{os.getpid()}"
            probe.touch(mode=0o600)
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"private_storage_path: {self.root} is not a writable directory "
                f"({exc.strerror or exc})"
            ) from None

    def open_index(self) -> Index:
        index = Index(self.index_path)
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.index_path) + suffix)
            if path.exists():
                os.chmod(path, 0o600)
        return index

    def path_of(self, file_name: str) -> Path:
        return self.data / file_name

    def open_file(self, file_name: str, size: int) -> int:
        """Open (creating, sparse, 0600) the store file of an entry; returns an fd."""
        path = self.path_of(file_name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        return fd

    def unlink(self, file_name: str) -> None:
        self.unlink_many((file_name,))

    def unlink_many(self, file_names: Iterable[str]) -> None:
        """Unlink store files, a missing one being no error. A GC pass may unlink tens of
        thousands: plain `os.unlink` of str paths, without a `Path` per file (half the time).
        """
        prefix = f"{self.data}{os.sep}"
        unlink = os.unlink
        for file_name in file_names:
            try:  # noqa: SIM105 - contextlib.suppress costs more, by the ten thousand
                unlink(prefix + file_name)
            except FileNotFoundError:
                pass

    @staticmethod
    def punch_hole(fd: int, start: int, end: int) -> None:
        """Give the blocks of [start, end) back to the file system, keeping the file size."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, mode, ctypes.c_long(start), ctypes.c_long(end - start)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def disk_usage(self) -> int:
        """Bytes the data files really occupy on disk (sparse-aware)."""
        total = 0
        for dirpath, _, files in os.walk(self.data):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    continue
        return total

    def finish_dead_unlinks(self, index: Index) -> None:
        """Unlink what a process that died mid-eviction left, then stop counting those bytes."""
        for unlink_id, files in index.dead_unlinks():
            self.unlink_many(files)
            index.finish_unlink(unlink_id)

    def recover(self, index: Index) -> RecoveryReport:
        """Make files and index agree after a crash: sweep orphans, drop rows of lost files,
        reclaim dead owners' locks and claims. Keeps every present range (resume, not restart).
        """
        reclaimed = index.reclaim_dead()
        self.finish_dead_unlinks(index)
        # Walk first, then read the index: a row another daemon inserts meanwhile cannot make
        # its brand-new file look like an orphan.
        found = [
            os.path.relpath(os.path.join(dirpath, name), self.data)
            for dirpath, _, files in os.walk(self.data)
            for name in files
        ]
        known = index.file_names()
        on_disk = {rel for rel in found if rel in known}
        orphans = 0
        for rel in found:
            if rel not in known:
                try:
                    os.unlink(self.data / rel)
                    orphans += 1
                except FileNotFoundError:
                    pass
        present = {
            r["file_name"] for r in index.query("SELECT file_name FROM entries WHERE present > 0")
        }
        missing = present - on_disk
        dropped = index.forget_missing(missing) if missing else 0
        if orphans or dropped or any(reclaimed.values()):
            log.info(
                "store recovery: %d orphan files removed, %d lost entries dropped, reclaimed %s",
                orphans,
                dropped,
                reclaimed,
            )
        return RecoveryReport(orphans, dropped, reclaimed)
