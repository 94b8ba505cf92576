"""The records the index hands out, and the one definition of an entry's identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from wtfs_index.ranges import Ranges


class TransferStatus(IntEnum):
    """The Data Manager's transfer codes (WholeTale's DM API uses exactly these)."""

    INITIALIZING = 0
    QUEUED = 1
    TRANSFERRING = 2
    DONE = 3
    FAILED = 4


class LockKind:
    #: a reader's lock (an open file): it keeps the entry, and every byte of it unless the entry
    #: is windowed, then only the bytes its pin names
    READ = "read"
    #: a lock with no reader behind it (a pin set through Girder, a prefetch): every byte stays
    HOLD = "hold"


def entry_key(source_key: str, version: str) -> str:
    """An entry is one version of one source's bytes: `girder:<fileId>@<version>`.

    `source_key` names the bytes' origin (`girder:<fileId>`, or `item:<itemId>` for a
    `meta.phys_path` item); `version` fingerprints the contents (see `fingerprint`), so bytes
    that Girder has since replaced are a different entry, never served for the new ones.
    """
    return f"{source_key}@{version}"


def fingerprint(*parts: object) -> str:
    """A version fingerprint from what identifies a source's contents.

    For a Girder file: its size and its `created` time (Girder 5 changes `created` when a file's
    contents are replaced, even by the same number of bytes, and nothing else the REST API shows
    changes then), plus its sha512 when the server exposes one. For a `meta.phys_path` item: its
    `meta.size`, the item's `updated` time and `meta.checksum` when given. Empty parts are left
    out, so a hash learnt later does not change an older fingerprint's meaning.
    """
    return "/".join(str(p) for p in parts if p not in (None, ""))


@dataclass(frozen=True)
class NewEntry:
    """An entry as its reader knows it before the store does: what `ensure_entry` and
    `open_entry` create. The index adds the rest of `EntryRow` (file name, ranges, counters)."""

    key: str
    source_key: str
    version: str
    item_id: str
    size: int
    source: str
    path: str
    checksum: str | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class EntryRow:
    key: str
    source_key: str
    version: str
    item_id: str
    file_name: str
    size: int
    checksum: str | None
    content_hash: str | None
    source: str
    path: str
    ranges: Ranges
    present: int
    complete: bool
    windowed: bool
    superseded: bool
    atime: float
    #: store files of older versions this call made unreachable, for the caller to unlink
    #: (with `finish_unlink(unlink_id)` after): their bytes stay counted until then
    unlink: Eviction | None = None


@dataclass(frozen=True)
class Reservation:
    """Outcome of `reserve`: a claim id, or why not."""

    claim_id: int | None = None
    ranges: Ranges | None = None  # the entry's ranges as committed now
    busy: bool = False  # another live owner is fetching an overlapping span
    no_room: bool = False
    stale: bool = False  # the entry was replaced or dropped since the caller loaded it
    usage: int = 0
    windowed: bool = False


class Evicted(NamedTuple):  # a tuple: a pass builds tens of thousands of them
    key: str
    item_id: str
    file_name: str
    bytes: int
    path: str = ""


class Punch(NamedTuple):
    """Bytes [start, end) of a store file, dropped from the index, to be punched out of it.
    Until the punch is done (`finish_unlink`), nobody may fetch these bytes again: the late
    punch would make a hole of the fresh bytes (`reserve` answers busy)."""

    file_name: str
    start: int
    end: int
    key: str = ""  # the entry's


class Eviction(list[Evicted]):
    """What one eviction or drop removed: whole entries, and spans of windowed ones.

    `unlink_id` names its batch: the bytes stay counted in the capacity until the caller has
    unlinked the files and punched the spans and called `finish_unlink(unlink_id)`.
    """

    unlink_id: int | None = None
    punches: list[Punch]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.punches = []

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self) + sum(p.end - p.start for p in self.punches)


@dataclass
class WindowResult:
    """What `Index.window` did: the bytes it dropped, and what stands in the way of more."""

    eviction: Eviction = field(default_factory=lambda: Eviction())
    #: (lock id, entry key) of the caller's own locks that must pin before their entry's bytes
    #: can be dropped
    to_pin: list[tuple[int, str]] = field(default_factory=list)
    #: bytes of windowed entries that wait for other processes' readers to pin
    awaiting: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learnt. `registered` is False when the owner's row was gone (its lease
    ran out, say while the process was stopped): the caller must register again and re-take
    its locks before it trusts anything it knew."""

    registered: bool
    #: (lock id, entry key) of this owner's read locks whose entry is windowed and that have no
    #: pin yet: their readers must pin (`set_pins`) before any byte of them can be dropped
    to_pin: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PinState:
    """An entry as a pin saw it: the ranges it may trust inside its pinned span."""

    file_name: str | None  # None: the entry is gone
    ranges: Ranges
    windowed: bool
    complete: bool


@dataclass(frozen=True)
class StoreSummary:
    present: int
    reserved: int
    unlinking: int
    entries: int
    complete: int

    @property
    def usage(self) -> int:
        return self.present + self.reserved + self.unlinking


@dataclass(frozen=True)
class OwnerRow:
    owner_id: str
    kind: str
    host: str
    boot_id: str | None
    pidns: str | None
    pid: int | None
    pid_start: int | None
    mountpoint: str | None
    session_id: str | None
    session_origin: str | None
    started: float
    heartbeat: float
    expires: float
    stats: dict[str, int]
    alive: bool  # judged by the caller's point of view (owner.Owner.judges_alive)


@dataclass(frozen=True)
class ClaimRow:
    """A fetch in flight: [start, end) of entry `key`, reserving `bytes` of capacity."""

    id: int
    key: str
    start: int
    end: int
    bytes: int
    owner_id: str


@dataclass(frozen=True)
class UnlinkBatch:
    """Files and spans the index no longer counts as present, whose bytes stay counted (as
    `unlinking`) until their owner has unlinked and punched them (`finish_unlink`)."""

    id: int
    owner_id: str
    bytes: int
    files: list[str]
    punches: list[Punch]
    time: float


@dataclass(frozen=True)
class LockRow:
    id: int
    item_id: str
    entry_key: str | None
    session_id: str
    owner_id: str
    kind: str
    pin_start: int | None
    pin_end: int | None
    mountpoint: str | None
    path: str | None
    created: float
    expires: float | None
    host: str | None
    alive: bool


@dataclass(frozen=True)
class TransferRow:
    id: int
    key: str
    item_id: str
    path: str
    session_id: str
    owner_id: str
    source: str
    status: int
    size: int
    start_offset: int
    transferred: int
    start_time: float | None
    end_time: float | None
    error: str | None
    attempts: int
    created: float
    retry_requested: bool


@dataclass(frozen=True)
class EvictionRow:
    key: str
    item_id: str
    path: str
    bytes: int
    time: float
    reason: str
    by_owner: str


@dataclass(frozen=True)
class FailureRow:
    time: float
    kind: str
    key: str | None
    cause: str
    owner_id: str


class PrefetchState:
    """Where a `wtfs prefetch` run is: asked of a mount and not picked up yet, running, ended."""

    REQUESTED = "requested"
    RUNNING = "running"
    DONE = "done"  # every file asked for is complete in the store
    FAILED = "failed"  # a transfer failed, the GC start mark was reached, or the runner died
    CANCELLED = "cancelled"
    ENDED = (DONE, FAILED, CANCELLED)


@dataclass(frozen=True)
class PrefetchRow:
    id: int
    session_id: str
    #: the mount asked to run it; None: the `wtfs prefetch` command runs it itself
    mountpoint: str | None
    paths: list[str]
    owner_id: str | None
    state: str
    files_total: int
    files_done: int
    files_failed: int
    bytes_total: int
    #: bytes of the files asked for that are in the store (fetched now or before)
    bytes_done: int
    #: bytes this run downloaded (the rate's numerator: bytes already there cost nothing)
    bytes_fetched: int
    current: str | None
    error: str | None
    cancel: bool
    created: float
    started: float | None
    updated: float
    ended: float | None


@dataclass(frozen=True)
class PrefetchFileRow:
    path: str
    size: int
    state: str  # pending, done, failed
    fetched: int
    error: str | None
