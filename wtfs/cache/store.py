"""The private store on disk: a 0700 directory holding one sparse 0600 file per entry under
`data/` (and the SQLite index, unless the index is a PostgreSQL database). Files are named by
the index (a fresh random name per entry), so a file being deleted by one process can never be
a file another process has just created.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wtfs_index import Eviction, Index, Owner, Punch, Ranges, open_index

from wtfs.errors import ConfigError

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


@dataclass(frozen=True)
class RecoveryReport:
    orphans_removed: int
    missing_dropped: int
    reclaimed: dict[str, int]
    damaged_dropped: list[str] = field(default_factory=list)
    #: entries whose file no longer held all their present bytes: those ranges were dropped
    holes_dropped: list[str] = field(default_factory=list)


class Store:
    def __init__(self, root: Path, index_url: str | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.index_url = index_url or None
        #: unlinking batches of this process's that it stopped carrying out (the index or the
        #: disk failed it): its next GC pass finishes them (`finish_orphan_unlinks`). The
        #: others it owns are in flight, and only their maker may punch their spans.
        self.given_up: set[int] = set()

    @property
    def index_path(self) -> Path:
        """The SQLite index file (when `index_url` is not set)."""
        return self.root / "index.sqlite3"

    def has_index(self) -> bool:
        return self.index_url is not None or self.index_path.exists()

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

    def open_index(self, *, lease: float | None = None) -> Index:
        kwargs = {} if lease is None else {"lease": lease}
        index = open_index(self.index_url, self.root, **kwargs)
        if self.index_url is None:
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
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            # Readers of a store file mostly stream it: let the kernel read it ahead twice as
            # far (bench: a cached read went ~0.5x to ~0.9x of dd). Asking for each 16 MiB
            # ahead with WILLNEED instead blocked the event loop in the syscall.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_existing(self, file_name: str, size: int) -> int | None:
        """Open the store file of an entry if it is there with its size (never creating it);
        None otherwise."""
        try:
            fd = os.open(self.path_of(file_name), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        if os.fstat(fd).st_size != size:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
        """pwrite(2) until every byte is written. A filesystem that is nearly full writes part of
        a buffer and returns how much (no error): the rest must never be taken as written, or
        its range would be committed over zeros. The next call then raises ENOSPC."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

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

    def punch_many(self, punches: Iterable[Punch]) -> None:
        """Give the blocks of dropped spans back to the filesystem (files keep their size)."""
        for punch in punches:
            try:
                fd = os.open(self.path_of(punch.file_name), os.O_WRONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue  # evicted meanwhile: nothing left to punch
            try:
                # A file two entries share (content dedup, wtfs.cache.dedup): its bytes are the
                # other entry's too. The index has dropped the span for this entry, which is
                # enough: bytes fetched again for it are the same bytes.
                if os.fstat(fd).st_nlink <= 1:
                    self.punch_hole(fd, punch.start, punch.end)
            finally:
                os.close(fd)

    def apply(self, eviction: Eviction) -> None:
        """Carry out what the index decided: unlink evicted files, punch dropped spans."""
        self.unlink_many(e.file_name for e in eviction)
        self.punch_many(eviction.punches)

    @staticmethod
    def punch_hole(fd: int, start: int, end: int) -> None:
        """Give the blocks of [start, end) back to the file system, keeping the file size."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, mode, ctypes.c_long(start), ctypes.c_long(end - start)) != 0:
            err = ctypes.get_errno()
            if err == errno.EOPNOTSUPP:  # no hole punching here: zero them (still dropped)
                os.pwrite(fd, bytes(end - start), start)
                return
            raise OSError(err, os.strerror(err))

    def holes(self, file_name: str, ranges: Ranges) -> Ranges:
        """The parts of `ranges` the store file holds no data for (it was cut and extended
        again, or punched, behind our back), found with SEEK_HOLE/SEEK_DATA: one lseek per
        range when there is no hole. A filesystem that cannot tell (no SEEK_HOLE) shows none.
        Raises FileNotFoundError when the file is gone."""
        fd = os.open(self.path_of(file_name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        holes = Ranges()
        try:
            size = os.fstat(fd).st_size
            for start, end in ranges:
                position = start
                while position < end:
                    if position >= size:
                        holes.insert(position, end)
                        break
                    hole = _seek(fd, position, os.SEEK_HOLE, size)
                    if hole >= end:
                        break
                    data = _seek(fd, hole, os.SEEK_DATA, end)
                    holes.insert(hole, min(data, end))
                    position = data
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return Ranges()  # no SEEK_HOLE here: nothing to tell
        finally:
            os.close(fd)
        return holes

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

    @contextlib.contextmanager
    def carrying_out(self, unlink_id: int | None) -> Iterator[None]:
        """Around this process carrying out a batch it made (unlinks, punches, then
        `finish_unlink`): failed, the batch is given up, for the next GC pass to finish."""
        try:
            yield
        except BaseException:
            if unlink_id is not None:
                self.given_up.add(unlink_id)
            raise

    def finish_orphan_unlinks(self, index: Index, me: Owner) -> list[int]:
        """Finish the batches nobody carries out (their process died or exited mid-eviction)
        and those this process gave up on, then stop counting their bytes. Returns their ids."""
        done = []
        for unlink_id, files, punches in index.orphan_unlinks(me, self.given_up):
            self.unlink_many(files)
            self.punch_many(punches)
            index.finish_unlink(unlink_id)
            self.given_up.discard(unlink_id)
            done.append(unlink_id)
        return done

    def recover(self, index: Index, me: Owner) -> RecoveryReport:
        """Make files and index agree after a crash, cheaply: reclaim dead owners' rows, finish
        their evictions, sweep orphan files, drop entries whose file is gone or has another size
        than the entry (a file cut or replaced behind our back cannot hold the bytes its ranges
        claim). Keeps every other present range (resume, not restart). A same-size overwrite
        needs the checksums: `wtfs fsck --verify`.

        A file of the right size may still have lost bytes (cut, then extended again; punched):
        its filesystem then allocates fewer bytes than its present ranges hold. The stat each
        entry gets anyway says so (`st_blocks`), at no cost for a sound file; only then are its
        present ranges looked at with SEEK_HOLE (one lseek per range), and the ranges that are
        holes dropped. Compressing filesystems allocate less than they hold: their files are
        looked at too, and found whole. (Opening every file to look would cost an open and a
        close per entry at each start-up, for what the stat already rules out.)
        """
        reclaimed = index.reclaim_dead(me)
        self.finish_orphan_unlinks(index, me)
        # Walk first, then read the index: a row another daemon inserts meanwhile cannot make
        # its brand-new file look like an orphan.
        found = [
            os.path.relpath(os.path.join(dirpath, name), self.data)
            for dirpath, _, files in os.walk(self.data)
            for name in files
        ]
        known = index.file_names()
        orphans = 0
        for rel in found:
            if rel not in known:
                try:
                    os.unlink(self.data / rel)
                    orphans += 1
                except FileNotFoundError:
                    pass
        missing: list[str] = []
        damaged: list[str] = []
        holed: list[str] = []
        for entry in index.stored_entries():
            try:
                st = os.stat(self.path_of(entry.file_name))
            except FileNotFoundError:
                missing.append(entry.file_name)
                continue
            if st.st_size != entry.size:
                damaged.append(entry.key)
            elif st.st_blocks * 512 < entry.present:
                try:
                    holes = self.holes(entry.file_name, entry.ranges)
                except FileNotFoundError:
                    missing.append(entry.file_name)
                    continue
                if holes:
                    kept = Ranges(entry.ranges)
                    for start, end in holes:
                        kept.remove(start, end)
                    index.set_ranges(entry.key, kept, "damaged: bytes missing from the file",
                                     me.owner_id)  # fmt: skip
                    holed.append(entry.key)
        dropped = index.forget_missing(missing) if missing else 0
        for key in damaged:
            eviction = index.delete_entry(key, "damaged: file size changed", me.owner_id)
            self.apply(eviction)
            if eviction.unlink_id is not None:
                index.finish_unlink(eviction.unlink_id)
        if orphans or dropped or damaged or holed or any(reclaimed.values()):
            log.info(
                "store recovery: %d orphan files removed, %d lost entries dropped, %d damaged "
                "entries dropped, %d entries had holes in their present bytes, reclaimed %s",
                orphans,
                dropped,
                len(damaged),
                len(holed),
                reclaimed,
            )
        return RecoveryReport(orphans, dropped, reclaimed, damaged, holed)


def _seek(fd: int, offset: int, whence: int, past_end: int) -> int:
    """lseek(2) with SEEK_HOLE/SEEK_DATA; `past_end` when there is no such place (ENXIO)."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return past_end
        raise
