"""The soak: several wtfs mounts sharing one private store far smaller than the working set,
under a mixed workload, watched for wrong bytes, failed reads, stalls and leaks.

Used by the short soak tests (`tests/soak/`, in CI) and by `bench/soak.py` (the long runs).
Worker threads do sequential whole-file reads (sha256 checked), random 4 KiB reads (checked
against the originals), listings (os.walk) and open/close churn; in a shape with a file larger
than the store, every mount also reads that one whole and at random. Every `interval` seconds
the sampler records each daemon's RSS and open fds (/proc/PID), the store's disk usage, the
index's usage and counts. `SoakResult.problems()` lists what broke the acceptance rules.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData, seed_sample_data

from tests.support.bigdata import BigFile, MiB, import_files
from tests.support.mounts import Mount, start_mount
from wtfs.cache.store import Store

STATUS_NAMES = {0: "init", 1: "queued", 2: "xfer", 3: "done", 4: "failed"}
WINDOW = 10.0  # seconds: work must complete in every such window
RSS_GROWTH_LIMIT = 16.0  # MiB over the second half of a run
#: what the data files' allocated blocks may hold beyond the bytes the capacity counts: ext4's
#: extent-tree blocks of sparse, punched files (a 64 MiB file punched into 512 extents holds
#: 8 KiB of them), which no byte count sees; the index's usage has no slack
DISK_SLACK = 256 * 1024
FD_SLACK = 4  # fds the second half's median may hold beyond the first half's


@dataclass(frozen=True)
class SoakShape:
    name: str
    sizes: dict[str, int]
    capacity: int
    threads: int
    mounts: int = 2
    block_size: int | None = None
    #: a file larger than the store that every mount reads whole and at random
    big: str | None = None

    @property
    def working_set(self) -> int:
        return sum(self.sizes.values())


#: The soak's own shape: two mounts share a 160 MiB store over a 326 MiB working set.
SOAK = SoakShape(
    "soak",
    {
        **{f"big{n:02d}.bin": 32 * MiB for n in range(6)},
        **{f"mid{n:02d}.bin": 8 * MiB for n in range(16)},
        **{f"small{n:02d}.bin": 256 * 1024 for n in range(24)},
    },
    capacity=160 * MiB,
    threads=8,
)

#: 16 threads on 2 mounts, a store a quarter of the working set, and a file 2x the store that
#: both mounts read whole and at random. 1 MiB blocks: what 16 readers pin at once (their
#: current and next blocks) must fit in the store, or ENOSPC would be the right answer.
WINDOWED = SoakShape(
    "windowed",
    {
        "huge.bin": 200 * MiB,
        **{f"mid{n:02d}.bin": 16 * MiB for n in range(10)},
        **{f"small{n:02d}.bin": 1 * MiB for n in range(40)},
    },
    capacity=100 * MiB,
    threads=16,
    block_size=1 * MiB,
    big="huge.bin",
)


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    bytes_read: int = 0
    corrupt: list[str] = field(default_factory=list)
    #: ops completed per WINDOW-second window since the start
    windows: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def op(self, kind: str, nbytes: int = 0) -> None:
        with self.lock:
            self.ops[kind] += 1
            self.bytes_read += nbytes
            self.windows[int((time.monotonic() - self.started) // WINDOW)] += 1

    def error(self, kind: str, exc: OSError) -> None:
        with self.lock:
            self.errors[f"{kind}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(f"{kind}: {exc}")

    def wrong(self, what: str) -> None:
        with self.lock:
            self.corrupt.append(what)


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class Worker(threading.Thread):
    def __init__(
        self,
        n: int,
        mount: Path,
        files: list[BigFile],
        big: BigFile | None,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"worker-{n}", daemon=True)
        self.mount, self.files, self.big, self.tally, self.stop = mount, files, big, tally, stop
        self.rng = random.Random(n)

    def run(self) -> None:
        actions: list[Callable[[], None]] = [self.sequential] * 3 + [self.random_reads] * 4
        actions += [self.listing] * 2 + [self.churn] * 2
        if self.big is not None:
            actions += [self.big_whole, self.big_random, self.big_random]
        while not self.stop.is_set():
            action = self.rng.choice(actions)
            try:
                action()
            except OSError as exc:
                self.tally.error(action.__name__, exc)
                time.sleep(0.2)

    def _when(self) -> str:
        """When and through which mount, to find a wrong read in the daemons' logs."""
        return f"at {_clock()} through {self.mount.parent.name}"

    def path(self, f: BigFile) -> Path:
        return self.mount / "big" / f.name

    def _whole(self, f: BigFile, kind: str) -> None:
        digest, size = hashlib.sha256(), 0
        wrong: list[str] = []
        with open(self.path(f), "rb") as handle:
            while chunk := handle.read(MiB):
                digest.update(chunk)
                if len(wrong) < 3 and chunk != f.expected(size, len(chunk)):
                    where = _where_wrong(chunk, f.expected(size, len(chunk)), size)
                    wrong.append(f"{where} read {self._when()}")
                size += len(chunk)
        if digest.hexdigest() != f.sha256:
            self.tally.wrong(f"{kind} {f.name}: sha256 mismatch ({size} bytes): {wrong}")
        self.tally.op(kind, size)

    def _random(self, f: BigFile, kind: str, reads: int) -> None:
        with open(self.path(f), "rb") as handle:
            for _ in range(reads):
                offset = self.rng.randrange(f.size - 4096)
                data = os.pread(handle.fileno(), 4096, offset)
                if data != f.expected(offset, 4096):
                    self.tally.wrong(f"{kind} {f.name}@{offset} {self._when()}")
                self.tally.op(kind, len(data))

    def sequential(self) -> None:
        self._whole(self.rng.choice(self.files), "sequential")

    def random_reads(self) -> None:
        self._random(self.rng.choice([f for f in self.files if f.size > MiB]), "random4k", 8)

    def big_whole(self) -> None:
        assert self.big is not None
        self._whole(self.big, "big-whole")

    def big_random(self) -> None:
        assert self.big is not None
        self._random(self.big, "big-random4k", 16)

    def listing(self) -> None:
        entries = sum(len(dirs) + len(names) for _, dirs, names in os.walk(self.mount))
        self.tally.op("walk")
        if entries < len(self.files):
            self.tally.wrong(f"listing saw only {entries} entries")

    def churn(self) -> None:
        for _ in range(20):
            f = self.rng.choice(self.files)
            with open(self.path(f), "rb") as handle:
                if self.rng.random() < 0.25:
                    handle.read(1)
            self.tally.op("open/close")


def _clock() -> str:
    """Wall-clock time as the daemons' logs write it."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f",{int(now * 1000) % 1000:03d}"


def _where_wrong(got: bytes, want: bytes, base: int) -> str:
    """Where a chunk differs, and whether the wrong bytes are zeros (a hole read as data)."""
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if first is None:
        return f"{len(got)} bytes at {base}, expected {len(want)}"
    last = max(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
    zeros = not any(got[first : last + 1])
    return f"[{base + first}, {base + last + 1}) {'zeros' if zeros else 'other bytes'}"


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fd_count(pid: int) -> float:
    with contextlib.suppress(OSError):
        return float(len(os.listdir(f"/proc/{pid}/fd")))
    return float("nan")


def index_figures(store: Store) -> dict[str, int]:
    index = store.open_index()
    try:
        summary = index.summary()
        figures = {"present": summary.present, "entries": summary.entries, "usage": summary.usage}
        for status, count in index.transfer_counts().items():
            figures[STATUS_NAMES.get(status, str(status))] = count
        figures["locks"] = index.lock_total()
        figures["evictions"] = index.eviction_count()
        return figures
    finally:
        index.close()


COLUMNS = [
    ("t", "t(s)", 6),
    ("disk", "disk MiB", 9),
    ("usage", "index MiB", 10),
    ("entries", "entries", 8),
    ("locks", "locks", 6),
    ("done", "done", 7),
    ("failed", "failed", 7),
    ("xfer", "active", 7),
    ("evictions", "evicted", 8),
    ("ops", "ops", 8),
    ("errors", "errors", 7),
]


@dataclass
class SoakResult:
    shape: SoakShape
    seconds: float
    rows: list[dict[str, float]]
    tally: Tally
    daemons: list[dict[str, Any]]  # pid, alive_at_end, traceback, warnings, errors, log
    settled: dict[str, int]
    stuck_workers: int

    def _series(self, key: str) -> list[float]:
        return [r[key] for r in self.rows if r.get(key) == r.get(key)]

    def problems(self) -> list[str]:
        """Every acceptance rule the run broke (empty: the soak passed)."""
        found: list[str] = []
        t = self.tally
        if t.corrupt:
            found.append(f"{len(t.corrupt)} wrong bytes: {t.corrupt[:3]}")
        if t.errors:
            found.append(f"{sum(t.errors.values())} failed reads: {dict(t.errors)} "
                         f"{t.error_samples[:3]}")  # fmt: skip
        windows = int(self.seconds // WINDOW)
        idle = [w for w in range(windows) if t.windows.get(w, 0) == 0]
        if idle:
            found.append(f"no work completed in the {WINDOW:g}s windows {idle}")
        if self.stuck_workers:
            found.append(f"{self.stuck_workers} reader threads still blocked after the run")
        for n, d in enumerate(self.daemons):
            if not d["alive_at_end"]:
                found.append(f"daemon {n} died")
            if d["traceback"]:
                found.append(f"daemon {n} logged a traceback")
            rss = self._series(f"rss{n}")
            if len(rss) >= 4:
                mid = len(rss) // 2
                growth = max(rss[mid:]) - rss[mid]
                if growth >= RSS_GROWTH_LIMIT:
                    found.append(f"daemon {n}: RSS grew {growth:.1f} MiB in the second half")
            fds = self._series(f"fd{n}")[1:]  # from the first sample under load
            if len(fds) >= 4:
                # Medians: the open store files and connections swing by 10 from one sample to
                # the next under load (21-32 in one run), a leak lifts every later sample. The
                # peaks of the two halves differed by 5 in a run that ended at its start count.
                mid = len(fds) // 2
                first, second = statistics.median(fds[:mid]), statistics.median(fds[mid:])
                if second > first + FD_SLACK:
                    found.append(f"daemon {n}: open fds rose from a median of {first:.0f} to "
                                 f"{second:.0f} in the second half")  # fmt: skip
        capacity = self.shape.capacity / MiB
        for key, what, slack in (("disk", "disk usage", DISK_SLACK), ("usage", "index usage", 0)):
            peak = max(self._series(key), default=0.0)
            if peak > capacity + slack / MiB:
                found.append(f"peak {what} {peak:.3f} MiB over the {capacity:.0f} MiB capacity")
        if self.settled.get("locks", 0) or self.settled.get("xfer", 0):
            found.append(f"idle after the workload: {self.settled.get('locks', 0)} locks, "
                         f"{self.settled.get('xfer', 0)} transfers still active")  # fmt: skip
        return found

    def table(self) -> str:
        cols = [(f"rss{n}", f"rss{n} MiB", 9) for n in range(len(self.daemons))]
        cols += [(f"fd{n}", f"fd{n}", 5) for n in range(len(self.daemons))]
        cols = COLUMNS[:1] + cols + COLUMNS[1:]
        lines = [" ".join(title.rjust(width) for _, title, width in cols)]
        for row in self.rows:
            lines.append(
                " ".join(_fmt(row.get(key, float("nan")), width) for key, _, width in cols)
            )
        return "\n".join(lines)

    def summary(self) -> str:
        t = self.tally
        lines = [
            f"{self.shape.name}: {self.seconds:.0f}s, {len(self.daemons)} mounts, "
            f"{self.shape.threads} threads, capacity {self.shape.capacity / MiB:.0f} MiB for a "
            f"{self.shape.working_set / MiB:.0f} MiB working set",
            f"ops {sum(t.ops.values())} {dict(t.ops)}; {t.bytes_read / 2**30:.2f} GiB read",
            f"errors {sum(t.errors.values())}; wrong bytes {len(t.corrupt)}",
            f"ops per {WINDOW:g}s window: min {min(t.windows.values(), default=0)}, "
            f"windows {len(t.windows)}",
        ]
        for n, d in enumerate(self.daemons):
            rss, fds = self._series(f"rss{n}"), self._series(f"fd{n}")
            if rss and fds:
                mid = len(rss) // 2
                lines.append(
                    f"daemon {n} (pid {d['pid']}): RSS start/mid/end {rss[0]:.1f}/{rss[mid]:.1f}/"
                    f"{rss[-1]:.1f} MiB (max {max(rss):.1f}), fds start/mid/end "
                    f"{fds[0]:.0f}/{fds[len(fds) // 2]:.0f}/{fds[-1]:.0f}; "
                    f"{d['warnings']} warnings, {d['errors']} errors, traceback: "
                    f"{'YES' if d['traceback'] else 'no'}"
                )
            lines.extend(f"    {line}" for line in d.get("first_errors", []))
        lines.append(
            f"peak disk {max(self._series('disk'), default=0):.1f} MiB, peak index usage "
            f"{max(self._series('usage'), default=0):.1f} MiB"
        )
        return "\n".join(lines)


def _fmt(value: float, width: int) -> str:
    if value != value:  # NaN: the process is gone
        return "-".rjust(width)
    text = f"{value:.1f}" if not float(value).is_integer() else f"{value:.0f}"
    return text.rjust(width)


def build_data(
    girder: LocalGirder, workdir: Path, shape: SoakShape, sample: SampleData | None
) -> tuple[dict[str, BigFile], SampleData]:
    """The shape's random files, and the sample tree (seeded unless the Girder has it)."""
    files = import_files(girder, workdir / f"data-{shape.name}", shape.sizes)
    if sample is None:
        (workdir / "seed").mkdir(exist_ok=True)
        sample = seed_sample_data(girder.client(), workdir / "seed")
    return files, sample


def run_soak(
    girder: LocalGirder,
    workdir: Path,
    shape: SoakShape,
    seconds: float,
    *,
    interval: float = 5.0,
    index_url: str | None = None,
    sample: SampleData | None = None,
    echo: Callable[[str], None] | None = None,
) -> SoakResult:
    """Run the soak to its end (it always ends: blocked readers are counted, not waited for).
    `sample`: the Girder's sample tree when it is seeded already."""
    workdir.mkdir(parents=True, exist_ok=True)
    files, sample_data = build_data(girder, workdir, shape, sample)
    folder = str(girder.client().getItem(next(iter(files.values())).item_id)["folderId"])
    session = [
        {"itemId": folder, "mountPath": "/big"},
        {"itemId": sample_data.folders["experiment"], "mountPath": "/exp"},
        {"itemId": sample_data.many_folder_id, "mountPath": "/many"},
    ]
    config: dict[str, Any] = {
        "girder": {"api_url": girder.api_url, "api_key_file": str(girder.api_key_file)},
        "private_storage_path": str(workdir / "store"),
        "private_storage_capacity": shape.capacity,
        "gc_run_interval": 5,
    }
    if shape.block_size is not None:
        config["block_size"] = shape.block_size
    if index_url is not None:
        config["index_url"] = index_url
    store = Store(workdir / "store", index_url)
    mounts: list[Mount] = []
    stop = threading.Event()
    tally = Tally()
    rows: list[dict[str, float]] = []
    workers: list[Worker] = []
    try:
        for n in range(shape.mounts):
            mounts.append(start_mount(workdir / f"m{n}", config, session))
        big = files.get(shape.big) if shape.big else None
        plain = [f for name, f in files.items() if name != shape.big]
        workers = [
            Worker(n, mounts[n % len(mounts)].mountpoint, plain, big, tally, stop)
            for n in range(shape.threads)
        ]
        tally.started = started = time.monotonic()
        for w in workers:
            w.start()
        end = started + seconds
        next_sample = started
        while time.monotonic() < end:
            row = _sample(started, mounts, store, tally)
            rows.append(row)
            if echo is not None:
                echo(" ".join(f"{k}={_fmt(v, 0).strip()}" for k, v in row.items()))
            next_sample += interval
            if any(m.process.poll() is not None for m in mounts):
                break
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        rows.append(_sample(started, mounts, store, tally))
        alive = [m.process.poll() is None for m in mounts]
        elapsed = time.monotonic() - started
        stop.set()
        for w in workers:
            w.join(timeout=30)
        time.sleep(2.0)  # FUSE release is asynchronous: let the daemons see the last closes
        settled = index_figures(store)
    finally:
        stop.set()
        for m in mounts:
            m.stop()
    stuck = sum(w.is_alive() for w in workers)
    daemons = []
    for m, was_alive in zip(mounts, alive, strict=True):
        text = m.log()
        lines = text.splitlines()
        daemons.append({
            "pid": m.process.pid, "alive_at_end": was_alive, "traceback": "Traceback" in text,
            "warnings": sum(" WARNING " in line for line in lines),
            "errors": sum(" ERROR " in line for line in lines), "log": m.log_path,
            # the causes behind failed reads, shown with the summary (the log goes with tmp)
            "first_errors": [line for line in lines if " ERROR " in line][:5],
        })  # fmt: skip
    return SoakResult(shape, elapsed, rows, tally, daemons, settled, stuck)


def _sample(started: float, mounts: list[Mount], store: Store, tally: Tally) -> dict[str, float]:
    row: dict[str, float] = {"t": time.monotonic() - started}
    for n, m in enumerate(mounts):
        row[f"rss{n}"] = rss_mib(m.process.pid)
        row[f"fd{n}"] = fd_count(m.process.pid)
    row["disk"] = store.disk_usage() / MiB
    figures = index_figures(store)
    row["usage"] = figures["usage"] / MiB
    for key in ("entries", "locks", "done", "failed", "xfer", "evictions"):
        row[key] = figures.get(key, 0)
    with tally.lock:
        row["ops"] = sum(tally.ops.values())
        row["errors"] = sum(tally.errors.values())
    return row


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
