"""One cached file while this process uses it (rclone's Item), and the handles readers hold.

A `LiveEntry` owns the store file's descriptor. Its lifetime is counted, not guessed: every open
handle, every fetch run and every open() in progress holds a reference (`retain`), and the
descriptor is closed when the last one is released. So no read or run can ever meet a closed
descriptor, however an open races the end of a run (the EBADF of the load issue).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from wtfs_index import EntryRow, Ranges, entry_key

from wtfs.errors import WtfsError
from wtfs.providers.base import Source

if TYPE_CHECKING:
    from wtfs.cache.runs import Run


@dataclass(frozen=True)
class FileRef:
    """What the cache needs to know of a file in the tree (the cache never sees FUSE)."""

    source_key: str  # girder:<fileId>, or item:<itemId> for a meta.phys_path item
    version: str  # the contents' fingerprint (wtfs_index.fingerprint)
    item_id: str
    size: int
    source: Source
    path: str
    error: str | None = None  # set when the file can never be fetched (reads get EIO)
    content_hash: str | None = None

    @property
    def key(self) -> str:
        return entry_key(self.source_key, self.version)


@dataclass(eq=False)
class LiveEntry:
    ref: FileRef
    file_name: str
    fd: int
    #: what this process knows of the present bytes. Whole truth while the entry is not
    #: windowed (our locks keep every byte); once windowed, true only inside our pins
    ranges: Ranges
    complete: bool
    windowed: bool = False
    refs: int = 0
    handles: set[Handle] = field(default_factory=set)
    runs: set[Run] = field(default_factory=set)
    #: a failure that sticks to the open file (retrying cannot help while it is open)
    failure: WtfsError | None = None
    #: until when (trio clock) another process is known to be fetching a block: block → time
    busy_until: dict[int, float] = field(default_factory=dict)
    #: no longer the manager's entry for its key (replaced, found evicted): new opens load anew
    retired: bool = False
    #: an older version of a source that has a newer one open here: it fetches nothing more
    #: (Girder serves the new contents), it serves what the store holds
    replaced: bool = False
    #: one pin change at a time (manager._set_pins)
    pin_lock: trio.Lock = field(default_factory=trio.Lock)
    #: block → (failure, trio clock time) of the run that last failed to bring it: a read of
    #: it soon after (the kernel asks again at once) gets that failure instead of a new wait
    block_errors: dict[int, tuple[WtfsError, float]] = field(default_factory=dict)
    #: set while the entry is being marked complete (its checksum read): one at a time
    completing: trio.Event | None = None

    def learn(self, ranges: Ranges) -> None:
        """Take what the index answered, unless we already know a later state: answers of
        concurrent calls may come back out of order, and an older one could claim bytes that
        another process has dropped since (read as the hole's zeros)."""
        if ranges.gen >= self.ranges.gen:
            self.ranges = ranges

    def know(self, row: EntryRow) -> None:
        """Take the index's row of this entry as the truth, as of when it was read: the caller
        holds a lock taken before that read, or nothing it knew of the entry would hold."""
        self.learn(row.ranges)
        self.complete = row.complete
        self.windowed = row.windowed

    def retain(self) -> None:
        self.refs += 1

    def release(self) -> bool:
        """Drop a reference; close the descriptor with the last one. True when closed."""
        self.refs -= 1
        assert self.refs >= 0, "LiveEntry released more often than retained"
        if self.refs == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            return True
        return False

    def low_water(self) -> int:
        """The offset of the slowest reader."""
        return min((h.next_offset for h in self.handles), default=0)

    def unwritten(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) the store file does not hold yet: neither committed nor
        written by a run of ours (bytes under our claim, not committed yet, can be read)."""
        missing = self.ranges.find_missing(start, end)
        if not missing or not self.runs:
            return missing
        known = Ranges(self.ranges)
        for run in self.runs:
            known.insert(run.claimed_from, run.position)
        return known.find_missing(start, end)


@dataclass(eq=False)
class Handle:  # eq=False: hashable by identity, kept in LiveEntry.handles
    entry: LiveEntry
    lock_id: int
    next_offset: int = 0  # where a sequential reader would read next
    #: the span this reader's lock pins while the entry is windowed (None: not pinned)
    pin: tuple[int, int] | None = None
    #: the spans of this handle's reads waiting for bytes (the kernel reads ahead in parallel)
    reading: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)

    @property
    def keep_cache(self) -> bool:
        return self.entry.complete

    def pinned(self, start: int, end: int) -> bool:
        return self.pin is not None and self.pin[0] <= start and end <= self.pin[1]
