"""`wtfs fsck`: the store's index checked against its data files, and the data files against the
index, in the manner of s3ql's and CVMFS's fsck. Here the logic; `wtfs fsck` is a thin shell.

Start-up recovery (`Store.recover`) does what is cheap at every mount; fsck looks at everything,
and says what it found. Each finding has a kind:

- `index-damaged`: the SQLite index cannot be read, or SQLite's own integrity check fails. A
  damaged PostgreSQL database is not for fsck to move aside: its server keeps its files, and
  its administrator repairs or recreates it with PostgreSQL's tools;
- `index-missing`: data files, but no index;
- `dead-owner`: locks and claims left by a process that died (start-up reclaims them too);
- `left-batch`: an unlinking batch whose owner is gone: its files are still on disk and their
  bytes still counted;
- `missing-file`: an entry with present bytes whose data file is gone;
- `wrong-size`: a data file of another size than its entry (cut or replaced behind our back);
- `missing-bytes`: present ranges the data file holds no data for (a hole: cut and extended
  again, punched) or beyond its end;
- `inconsistent`: an entry whose counters disagree with its ranges (complete, present);
- `checksum` (`--verify`): a complete entry whose bytes do not match its checksum (sha256 or
  sha512, from Girder or `meta.checksum`): the one way to find a same-size overwrite;
- `orphan`: a data file no entry names;
- `stray`: something in `data/` that is not a regular file (a symlink, a socket).

`--repair` repairs what it can, each in the index's own terms, so that nothing is ever served
as good that is not: an entry whose file is gone is forgotten (`forget_missing`); a file of
another size, or with a wrong checksum, is deleted with its entry (`delete_entry`, then
unlinked); ranges that are holes are dropped (`set_ranges`: they are fetched again when read);
counters are made to agree with the ranges; dead owners' rows are reclaimed and their batches
finished; orphans and strays are removed. A damaged SQLite index is moved aside
(`index.sqlite3.damaged-<time>`, with its -wal and -shm) and a fresh one started: every data
file is then an orphan, and is swept.

While a mount is live (`Index.owners`; for a damaged SQLite index, a process holding it open)
fsck only checks, unless forced: a live mount keeps in memory what it knew of its entries, and
would go on serving from a file fsck cut down.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wtfs_index import (
    EntryRow,
    Index,
    IndexDamaged,
    IndexFailure,
    IndexRefused,
    IndexUnavailable,
    Owner,
    Ranges,
    UnlinkBatch,
    index_location,
)

from wtfs.cache.store import Store
from wtfs.cache.verify import hash_fd
from wtfs.config import format_size


@dataclass
class Finding:
    kind: str
    #: what it is about: an entry's key, a data file's name, a batch, an owner, the index
    subject: str
    detail: str
    #: the file's path in the mount, for an entry
    path: str = ""
    #: what --repair did about it; empty when it was not repaired
    action: str = ""

    @property
    def repaired(self) -> bool:
        return bool(self.action)


@dataclass
class FsckReport:
    store: str
    index: str
    #: --repair was asked; `repairing`: and allowed (no live mount, or --force)
    repair: bool
    repairing: bool = False
    findings: list[Finding] = field(default_factory=list)
    entries: int = 0
    files: int = 0
    batches: int = 0
    verified: int = 0
    live_mounts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, kind: str, subject: str, detail: str, path: str = "") -> Finding:
        finding = Finding(kind, subject, detail, path)
        self.findings.append(finding)
        return finding

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "index": self.index,
            "checked": {
                "entries": self.entries,
                "files": self.files,
                "batches": self.batches,
                "verified": self.verified,
            },
            "problems": [{**asdict(f), "repaired": f.repaired} for f in self.findings],
            "repair": self.repair,
            "repaired": sum(f.repaired for f in self.findings),
            "liveMounts": self.live_mounts,
            "notes": self.notes,
            "clean": self.clean,
        }

    def lines(self) -> list[str]:
        """The report as plain lines: what was checked, each problem and what was done."""
        out = [f"store  {self.store}", f"index  {self.index}"]
        verified = f"; verified {self.verified} checksums" if self.verified else ""
        out.append(f"checked {self.entries} entries, {self.files} data files, "
                   f"{self.batches} unlinking batches{verified}")  # fmt: skip
        for f in self.findings:
            what = f"{f.path} ({f.subject})" if f.path else f.subject
            done = f": {f.action}" if f.action else ""
            out.append(f"{f.kind}  {what}: {f.detail}{done}")
        out += self.notes
        repaired = sum(f.repaired for f in self.findings)
        if self.clean:
            out.append("clean: no problem found")
        elif repaired == len(self.findings):
            out.append(f"{len(self.findings)} problems found, all repaired")
        elif self.repair:
            out.append(f"{len(self.findings)} problems found, {repaired} repaired")
        else:
            out.append(f"{len(self.findings)} problems found; `wtfs fsck --repair` repairs them")
        return out


def fsck(
    store: Store,
    *,
    verify: bool = False,
    repair: bool = False,
    force: bool = False,
    lease: float | None = None,
    me: Owner | None = None,
) -> FsckReport:
    """Check the store (see the module docstring); repair when asked and allowed.

    Raises the index's failure when it cannot be reached (a PostgreSQL server down).
    """
    me = me or Owner.current("fsck")
    report = FsckReport(str(store.root), index_location(store.index_url, store.root), repair)
    for _ in range(2):  # a second time on a fresh index, if the first one was found damaged
        index = _open(store, report, repair=repair, force=force, lease=lease)
        if index is None:
            return report
        try:
            _check(store, index, me, report, verify=verify, repair=repair, force=force)
            return report
        except IndexFailure as exc:  # damage the integrity check did not see, met while reading
            if not _is_damage(store, exc):
                raise
            report.findings = [f for f in report.findings if f.repaired]
            index.close()
            index = None
            if not _damaged(store, report, exc.cause, repair=repair, force=force):
                return report
        finally:
            if index is not None:
                index.close()
    return report


def _is_damage(store: Store, exc: IndexFailure) -> bool:
    """Whether a failure of the index says it is damaged: SQLite says so (IndexDamaged); a
    PostgreSQL database that answers but fails a query (a table or column gone) is damaged
    too. One that cannot be reached is not: that failure is raised as it is."""
    if isinstance(exc, IndexUnavailable | IndexRefused):
        return False
    return isinstance(exc, IndexDamaged) or store.index_url is not None


# -- the index --------------------------------------------------------------------------------


def _open(
    store: Store, report: FsckReport, *, repair: bool, force: bool, lease: float | None
) -> Index | None:
    """The store's index, or None when there is none to check (damaged and not moved aside)."""
    if store.index_url is None and not store.index_path.exists():
        files, _ = _walk(store)
        if not files:
            report.notes.append("no index yet: nothing to check")
            return None
        detail = f"there is no index, and {len(files)} data files it would name"
        finding = report.add("index-missing", str(store.index_path), detail)
        if not repair:
            report.files = len(files)
            report.notes.append("with --repair: a fresh index, and every data file swept")
            return None
        finding.action = "a fresh index was started"
    try:
        index = store.open_index(lease=lease)
    except IndexFailure as exc:
        if not _is_damage(store, exc):
            raise
        if not _damaged(store, report, exc.cause, repair=repair, force=force):
            return None
        return store.open_index(lease=lease)
    try:
        problems = index.integrity_problems()
    except IndexFailure as exc:
        if not _is_damage(store, exc):
            index.close()
            raise
        problems = [exc.cause]
    except BaseException:
        index.close()
        raise
    if not problems:
        return index
    index.close()
    cause = f"SQLite's integrity check: {'; '.join(' '.join(p.split()) for p in problems[:3])}"
    if not _damaged(store, report, cause, repair=repair, force=force):
        return None
    return store.open_index(lease=lease)


def _damaged(store: Store, report: FsckReport, cause: str, *, repair: bool, force: bool) -> bool:
    """Report a damaged index; move a SQLite one aside when repairing. True: a fresh index
    can be opened now."""
    finding = report.add("index-damaged", report.index, cause)
    if store.index_url is not None:
        report.notes.append(
            "a damaged PostgreSQL database is not for wtfs fsck to move aside: repair or "
            "recreate it with PostgreSQL's tools (wtfs starts an empty one), then "
            "`wtfs fsck --repair` sweeps the data files it does not name"
        )
        return False
    files, _ = _walk(store)
    report.files = len(files)
    if not repair:
        report.notes.append(
            f"with --repair: the index moved aside and a fresh one started; its {len(files)} "
            "data files are then orphans, and are swept (their bytes are fetched again)"
        )
        return False
    users = processes_using(store.index_path)
    if users and not force:
        report.notes.append(
            f"not moved aside: processes {', '.join(map(str, users))} have the index open "
            "(a mount?): stop them, or --force"
        )
        return False
    moved = move_aside(store.index_path)
    finding.action = (
        f"moved aside to {moved.name} (with its -wal and -shm); a fresh index was started, "
        "so every data file is an orphan now, swept below"
    )
    report.repairing = True
    return True


def move_aside(path: Path) -> Path:
    """Rename a damaged SQLite index and its -wal and -shm to `<name>.damaged-<time>[-wal|-shm]`
    (SQLite's own naming, so the copy opens with its log for whoever looks into it)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            os.rename(companion, Path(f"{target}{suffix}"))
    return target


def processes_using(path: Path) -> list[int]:
    """Pids of other processes of this PID namespace holding `path` (or its -wal, -shm) open."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if names.intersection(links):
            found.append(int(pid_dir.name))
    return sorted(found)


# -- the store --------------------------------------------------------------------------------


def _walk(store: Store) -> tuple[set[str], list[str]]:
    """(regular files, anything else that is not a directory) under `data/`, by relative name."""
    files: set[str] = set()
    strays: list[str] = []
    if not store.data.is_dir():
        return files, strays
    for dirpath, dirnames, names in os.walk(store.data):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in names + links:
            full = os.path.join(dirpath, name)
            try:
                mode = os.lstat(full).st_mode
            except FileNotFoundError:
                continue
            rel = os.path.relpath(full, store.data)
            if stat.S_ISREG(mode):
                files.add(rel)
            else:
                strays.append(rel)
    return files, sorted(strays)


def _check(
    store: Store,
    index: Index,
    me: Owner,
    report: FsckReport,
    *,
    verify: bool,
    repair: bool,
    force: bool,
) -> None:
    owners = index.owners(me)
    report.live_mounts = sorted(str(o.mountpoint) for o in owners if o.kind == "mount" and o.alive)
    if repair and report.live_mounts and not force:
        report.notes.append(
            f"not repaired: {len(report.live_mounts)} mounts are live "
            f"({', '.join(report.live_mounts)}); fsck only checks while a mount runs: "
            "unmount it, or --force"
        )
    report.repairing = repair and (not report.live_mounts or force)
    fix = report.repairing
    alive = {o.owner_id for o in owners if o.alive}

    # Rows and batches of processes that died.
    dead = [o for o in owners if not o.alive]
    locks = [lock for lock in index.locks(me) if not lock.alive]
    claims = [c for c in index.claims() if c.owner_id not in alive]
    left: list[UnlinkBatch] = []
    pending: set[str] = set()
    batches = index.unlink_batches()
    report.batches = len(batches)
    for batch in batches:
        if batch.owner_id in alive:
            pending.update(batch.files)
        else:
            left.append(batch)
    if dead or locks or claims:
        who = ", ".join(o.owner_id for o in dead) or "owners no longer registered"
        detail = (
            f"{len(locks)} locks and {len(claims)} claims of processes that died (or pins "
            "whose lease ran out)"
        )
        finding = report.add("dead-owner", who, detail)
        if fix:
            counts = index.reclaim_dead(me)
            finding.action = f"reclaimed ({counts['locks']} locks, {counts['claims']} claims)"
    finished: set[int] = set()
    if fix and left:
        index.reclaim_dead(me)
        # Taken in the index, one process at a time: a daemon's GC pass may be finishing the
        # same batches now, and a span punched twice may already hold bytes fetched again.
        finished.update(store.finish_orphan_unlinks(index, me))
    for batch in left:
        finding = report.add(
            "left-batch", f"batch {batch.id} of {batch.owner_id or 'nobody'}",
            f"{len(batch.files)} files and {len(batch.punches)} spans to drop, "
            f"{format_size(batch.bytes)} still counted: its owner is gone",
        )  # fmt: skip
        if fix:
            finding.action = (
                "finished: files unlinked, spans punched"
                if batch.id in finished
                else "finished meanwhile by another process"
            )
    batch_files = pending.union(*(b.files for b in left))

    # Files first, then entries: a file created meanwhile always has its entry already.
    files, strays = _walk(store)
    report.files = len(files)
    entries = index.entries()
    report.entries = len(entries)
    unverifiable = 0
    for entry in entries:
        if entry.file_name not in files:
            if entry.present > 0:
                finding = report.add("missing-file", entry.key, f"its data file "
                                     f"{entry.file_name} is gone", entry.path)  # fmt: skip
                if fix:
                    index.forget_missing([entry.file_name])
                    finding.action = "entry dropped (fetched again when read)"
            continue
        if not _check_entry(store, index, me, report, entry, fix=fix):
            continue
        if verify and entry.complete:
            if not entry.checksum:
                unverifiable += 1
            elif _verify(store, index, me, report, entry, fix=fix):
                report.verified += 1
    if verify and unverifiable:
        report.notes.append(
            f"{unverifiable} complete entries have no checksum: a same-size overwrite of "
            "their files cannot be found"
        )
    named = {e.file_name for e in entries}
    for rel in sorted(files - named - batch_files):
        finding = report.add("orphan", f"data/{rel}", "no entry names this data file")
        if fix:
            store.unlink_many([rel])
            finding.action = "removed"
    for rel in strays:
        finding = report.add("stray", f"data/{rel}", "not a regular file")
        if fix:
            try:
                os.unlink(store.data / rel)
                finding.action = "removed"
            except OSError as exc:
                finding.detail += f" (not removed: {exc.strerror})"


def _check_entry(
    store: Store, index: Index, me: Owner, report: FsckReport, entry: EntryRow, *, fix: bool
) -> bool:
    """Size, present ranges and counters of an entry whose file exists. False: it is gone."""
    try:
        size = os.stat(store.path_of(entry.file_name)).st_size
    except FileNotFoundError:
        return False
    if size != entry.size:
        detail = f"its data file has {size} bytes, the entry {entry.size}"
        if fix:
            _delete(store, index, me, entry, "damaged: file size changed")
        report.add("wrong-size", entry.key, detail, entry.path).action = _deleted(fix)
        return False
    kept = Ranges(entry.ranges)
    kept.remove(entry.size, max(entry.size, _end(entry.ranges)))
    beyond = entry.ranges.total - kept.total
    try:
        holes = store.holes(entry.file_name, kept)
    except FileNotFoundError:
        return False
    for start, end in holes:
        kept.remove(start, end)
    if kept != entry.ranges:
        lost = entry.ranges.total - kept.total
        where = f", {beyond} of them past the end" if beyond else ""
        finding = report.add("missing-bytes", entry.key, f"{lost} bytes of its present ranges "
                             f"are not in its data file (holes{where})", entry.path)  # fmt: skip
        if fix:
            index.set_ranges(entry.key, kept, "damaged: bytes missing from the file", me.owner_id)
            finding.action = "those ranges dropped (fetched again when read)"
        return False
    # (Complete but not marked is no damage: the next open verifies and marks it.)
    if entry.present != entry.ranges.total or (entry.complete and kept.total != entry.size):
        finding = report.add("inconsistent", entry.key, f"present {entry.present}, complete "
                             f"{entry.complete}, but its ranges hold {entry.ranges.total} of "
                             f"{entry.size} bytes", entry.path)  # fmt: skip
        if fix:
            index.set_ranges(entry.key, entry.ranges, "fsck: counters", me.owner_id)
            finding.action = "counters set from the ranges (completed again at the next open)"
        return False
    return True


def _verify(
    store: Store, index: Index, me: Owner, report: FsckReport, entry: EntryRow, *, fix: bool
) -> bool:
    """Hash a complete entry's file against its checksum. True when it could be checked."""
    assert entry.checksum is not None
    algo, _, expected = entry.checksum.partition(":")
    try:
        fd = os.open(store.path_of(entry.file_name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        actual = hash_fd(fd, algo, entry.size)
    finally:
        os.close(fd)
    if actual is None:
        report.notes.append(f"{entry.path or entry.key}: unknown checksum algorithm {algo!r}")
        return False
    if actual != expected.lower():
        detail = f"{algo} of its data file is {actual[:16]}…, expected {expected[:16]}…"
        if fix:
            _delete(store, index, me, entry, "checksum mismatch (fsck)")
        report.add("checksum", entry.key, detail, entry.path).action = _deleted(fix)
    return True


def _delete(store: Store, index: Index, me: Owner, entry: EntryRow, reason: str) -> None:
    eviction = index.delete_entry(entry.key, reason, me.owner_id)
    store.apply(eviction)
    if eviction.unlink_id is not None:
        index.finish_unlink(eviction.unlink_id)


def _deleted(fix: bool) -> str:
    """A finding's action after `_delete`, when it ran."""
    return "entry and file deleted (fetched again when read)" if fix else ""


def _end(ranges: Ranges) -> int:
    return max((end for _, end in ranges), default=0)


__all__ = ["Finding", "FsckReport", "fsck", "move_aside", "processes_using"]
