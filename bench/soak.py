"""Soak test: two wtfs mounts sharing one private store far smaller than the working set, under
a mixed workload for N minutes, watched for leaks. Not run in CI.

    .venv/bin/python bench/soak.py --minutes 10

It starts its own local Girder (wtfs_devgirder) with random files imported in place plus the
seeded sample tree, mounts the same session twice (one store, capacity well below the data),
and runs 8 threads (4 per mount) doing sequential whole-file reads (sha256 checked), random
4 KiB reads (checked against the originals), listings (os.walk) and open/close churn. Every
`--interval` seconds it samples, per daemon, its RSS and open fd count (/proc/PID), and the
store's disk usage, index usage and transfer counts; it prints a row per sample, then a summary
(min / max / last / growth, and growth over the second half of the run, after warm-up).

Exit code 0 when no byte was wrong, both daemons survived and neither logged a traceback; 1
otherwise. Everything it starts is stopped on exit, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wtfs_devgirder.control import LocalGirder  # noqa: E402
from wtfs_devgirder.seed import SampleData, seed_sample_data  # noqa: E402

from tests.support.bigdata import BigFile, MiB, import_files  # noqa: E402
from tests.support.mounts import Mount, start_mount  # noqa: E402
from wtfs.cache.store import Store  # noqa: E402

SIZES = {
    **{f"big{n:02d}.bin": 32 * MiB for n in range(6)},
    **{f"mid{n:02d}.bin": 8 * MiB for n in range(16)},
    **{f"small{n:02d}.bin": 256 * 1024 for n in range(24)},
}
CAPACITY = 160 * MiB
STATUS_NAMES = {0: "init", 1: "queued", 2: "xfer", 3: "done", 4: "failed"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the workload ------------------------------------------------------------------------------


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    corrupt: list[str] = field(default_factory=list)

    def op(self, kind: str, nbytes: int = 0) -> None:
        with self.lock:
            self.ops[kind] += 1
            self.bytes_read += nbytes

    def error(self, kind: str, exc: OSError) -> None:
        with self.lock:
            self.errors[f"{kind}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1

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
        self, n: int, mount: Path, files: list[BigFile], tally: Tally, stop: threading.Event
    ) -> None:
        super().__init__(name=f"worker-{n}", daemon=True)
        self.mount, self.files, self.tally, self.stop = mount, files, tally, stop
        self.rng = random.Random(n)

    def run(self) -> None:
        actions = [self.sequential] * 3 + [self.random_reads] * 4 + [self.listing] * 2
        actions += [self.churn] * 2
        while not self.stop.is_set():
            action = self.rng.choice(actions)
            try:
                action()
            except OSError as exc:
                self.tally.error(action.__name__, exc)
                time.sleep(0.2)

    def path(self, f: BigFile) -> Path:
        return self.mount / "big" / f.name

    def sequential(self) -> None:
        f = self.rng.choice(self.files)
        digest, size = sha256_of(self.path(f))
        if digest != f.sha256:
            self.tally.wrong(f"sequential {f.name}: sha256 mismatch ({size} bytes)")
        self.tally.op("sequential", size)

    def random_reads(self) -> None:
        f = self.rng.choice([f for f in self.files if f.size > MiB])
        with open(self.path(f), "rb") as handle:
            for _ in range(8):
                offset = self.rng.randrange(f.size - 4096)
                data = os.pread(handle.fileno(), 4096, offset)
                if data != f.expected(offset, 4096):
                    self.tally.wrong(f"random {f.name}@{offset}")
                self.tally.op("random4k", len(data))

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


# -- sampling ----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def fd_count(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def index_figures(index_path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, timeout=10)
    try:
        present = db.execute("SELECT COALESCE(SUM(present), 0), COUNT(*) FROM entries").fetchone()
        reserved = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM claims").fetchone()[0]
        figures = {"present": present[0], "entries": present[1], "usage": present[0] + reserved}
        for status, count in db.execute("SELECT status, COUNT(*) FROM transfers GROUP BY status"):
            figures[STATUS_NAMES.get(status, str(status))] = count
        figures["locks"] = db.execute("SELECT COUNT(*) FROM locks").fetchone()[0]
        figures["evictions"] = db.execute("SELECT COUNT(*) FROM evictions").fetchone()[0]
        return figures
    finally:
        db.close()


COLUMNS = [
    ("t", "t(s)", 6),
    ("rss0", "rss0 MiB", 9),
    ("rss1", "rss1 MiB", 9),
    ("fd0", "fd0", 5),
    ("fd1", "fd1", 5),
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


def sample(started: float, mounts: list[Mount], store: Store, tally: Tally) -> dict[str, float]:
    row: dict[str, float] = {"t": time.monotonic() - started}
    for n, m in enumerate(mounts):
        rss = rss_kib(m.process.pid)
        row[f"rss{n}"] = rss / 1024 if rss is not None else float("nan")
        fds = fd_count(m.process.pid)
        row[f"fd{n}"] = fds if fds is not None else float("nan")
    row["disk"] = store.disk_usage() / MiB
    figures = index_figures(store.index_path)
    row["usage"] = figures["usage"] / MiB
    for key in ("entries", "locks", "done", "failed", "xfer", "evictions"):
        row[key] = figures.get(key, 0)
    with tally.lock:
        row["ops"] = sum(tally.ops.values())
        row["errors"] = sum(tally.errors.values())
    return row


def fmt(value: float, width: int) -> str:
    if value != value:  # NaN: the process is gone
        return "-".rjust(width)
    text = f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"
    return text.rjust(width)


def print_header() -> None:
    print(" ".join(title.rjust(width) for _, title, width in COLUMNS), flush=True)


def print_row(row: dict[str, float]) -> None:
    print(" ".join(fmt(row[key], width) for key, _, width in COLUMNS), flush=True)


def summary(rows: list[dict[str, float]]) -> None:
    half = rows[len(rows) // 2 :] if len(rows) >= 4 else rows
    print("\nsummary (growth = last - first; 2nd half = last - value at mid-run)")
    print(f"{'metric':>10} {'min':>9} {'max':>9} {'last':>9} {'growth':>9} {'2nd half':>9}")
    for key, title, _ in COLUMNS[1:]:
        values = [r[key] for r in rows if r[key] == r[key]]
        if not values:
            continue
        mid = [r[key] for r in half if r[key] == r[key]]
        print(
            f"{title:>10} {min(values):9.1f} {max(values):9.1f} {values[-1]:9.1f} "
            f"{values[-1] - values[0]:9.1f} {(mid[-1] - mid[0]) if mid else 0:9.1f}"
        )


# -- main --------------------------------------------------------------------------------------


def build_data(girder: LocalGirder, workdir: Path) -> tuple[dict[str, BigFile], SampleData]:
    started = time.monotonic()
    files = import_files(girder, workdir / "data", SIZES)
    (workdir / "seed").mkdir(exist_ok=True)
    sample_data = seed_sample_data(girder.client(), workdir / "seed")
    total = sum(SIZES.values()) + sum(sample_data.sizes.values())
    log(
        f"data ready: {len(files)} random files + the sample tree, {total / MiB:.0f} MiB in "
        f"{time.monotonic() - started:.1f}s"
    )
    return files, sample_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wtfs-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    girder: LocalGirder | None = None
    mounts: list[Mount] = []
    stop = threading.Event()
    tally = Tally()
    rows: list[dict[str, float]] = []
    ok = True
    try:
        girder = LocalGirder.start(workdir / "girder")
        files, sample_data = build_data(girder, workdir)
        big_folder = _folder_of(girder, next(iter(files.values())).item_id)
        session = [
            {"itemId": big_folder, "mountPath": "/big"},
            {"itemId": sample_data.folders["experiment"], "mountPath": "/exp"},
            {"itemId": sample_data.many_folder_id, "mountPath": "/many"},
        ]
        config: dict[str, Any] = {
            "girder": {"api_url": girder.api_url, "api_key_file": str(girder.api_key_file)},
            "private_storage_path": str(workdir / "store"),
            "private_storage_capacity": CAPACITY,
            "gc_run_interval": 5,
        }
        working_set = sum(SIZES.values())
        log(f"capacity {CAPACITY / MiB:.0f} MiB for a {working_set / MiB:.0f} MiB working set")
        for n in range(2):
            mounts.append(start_mount(workdir / f"m{n}", config, session))
        log(f"mounted: pids {[m.process.pid for m in mounts]}")
        store = Store(workdir / "store")
        file_list = list(files.values())
        workers = [
            Worker(n, mounts[n % 2].mountpoint, file_list, tally, stop) for n in range(args.threads)
        ]
        started = time.monotonic()
        for w in workers:
            w.start()
        print_header()
        end = started + args.minutes * 60
        next_sample = started
        while True:
            now = time.monotonic()
            if now >= next_sample:
                row = sample(started, mounts, store, tally)
                rows.append(row)
                print_row(row)
                next_sample += args.interval
                if any(m.process.poll() is not None for m in mounts):
                    log("a daemon died: stopping")
                    ok = False
                    break
            if now >= end:
                break
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        stop.set()
        for w in workers:
            w.join(timeout=60)
        rows.append(sample(started, mounts, store, tally))
        print_row(rows[-1])
        time.sleep(2.0)  # FUSE release is asynchronous: let the daemons see the last closes
        settled = index_figures(store.index_path)
        summary(rows)
        peak_usage = max(r["usage"] for r in rows)
        peak_disk = max(r["disk"] for r in rows)
        print(
            f"\ncapacity {CAPACITY / MiB:.0f} MiB: peak index usage {peak_usage:.1f} MiB, "
            f"peak disk usage {peak_disk:.1f} MiB"
        )
        print(
            f"idle after the workload: {settled.get('locks', 0)} locks, "
            f"{settled.get('xfer', 0)} transfers still active"
        )
        ok = ok and peak_usage <= CAPACITY / MiB and peak_disk <= CAPACITY / MiB
        ok = ok and settled.get("locks", 0) == 0 and settled.get("xfer", 0) == 0
        print(f"\nworkload: {dict(tally.ops)}; {tally.bytes_read / MiB:.0f} MiB read")
        print(f"errors: {dict(tally.errors) or 'none'}")
        print(f"wrong bytes: {len(tally.corrupt)} {tally.corrupt[:5]}")
        ok = ok and not tally.corrupt and not any(w.is_alive() for w in workers)
    except KeyboardInterrupt:
        log("interrupted")
        ok = False
    finally:
        stop.set()
        for m in mounts:
            m.stop()
        for n, m in enumerate(mounts):
            text = m.log()
            warnings = sum(" WARNING " in line for line in text.splitlines())
            errors = sum(" ERROR " in line for line in text.splitlines())
            traceback = "YES" if "Traceback" in text else "no"
            where = f" ({m.log_path})" if args.workdir is not None or args.keep else ""
            print(
                f"daemon {n} (pid {m.process.pid}): exit {m.process.returncode}, "
                f"{warnings} warnings, {errors} errors, "
                f"traceback: {traceback}{where}"
            )
            ok = ok and "Traceback" not in text
        if girder is not None:
            girder.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _folder_of(girder: LocalGirder, item_id: str) -> str:
    return str(girder.client().getItem(item_id)["folderId"])


if __name__ == "__main__":
    sys.exit(main())
