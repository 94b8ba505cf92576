"""The benchmark scenarios. Each takes a `Context` and returns `Row`s (plus notes).

Targets come from the issue; every figure is a median over `ctx.repeat` runs unless a row says
otherwise. Each scenario cleans up its own mounts and stores (its own `Cleanup`), so it can run
alone (`--only NAME`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random as pyrandom
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    WORK,
    Cleanup,
    CpuMeter,
    GiB,
    Girders,
    Imported,
    MiB,
    Profiler,
    RcloneServer,
    RssSampler,
    cpu_note,
    curl,
    dd,
    drop_caches,
    ensure_random_file,
    extents,
    fresh_dir,
    log,
    mbps,
    median,
    parallel,
    random_offsets,
    random_reads,
    range_round_trips,
    read_file,
    start_gcm,
    start_rclone,
    start_wtfs,
)

DATA = WORK / "data"
STORES = WORK / "stores"


@dataclass
class Row:
    metric: str
    wtfs: str
    anchors: str = "–"
    ratio: float | None = None
    target: str = "–"
    passed: bool | None = None  # None: informational

    @property
    def verdict(self) -> str:
        return "–" if self.passed is None else ("pass" if self.passed else "**FAIL**")


@dataclass
class Context:
    girders: Girders
    repeat: int
    quick: bool
    profiler: Profiler
    notes: list[str] = field(default_factory=list)
    #: the run's own PostgreSQL (tests/support/postgres.py), started by the first scenario
    #: that needs one and stopped by `close()`
    _postgres: Any = None
    _databases: int = 0

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"note: {text}")

    def postgres_url(self, name: str) -> str:
        """The URL of a fresh empty database on the run's PostgreSQL."""
        if self._postgres is None:
            from tests.support.postgres import PostgresServer

            self._postgres = PostgresServer.start(fresh_dir(WORK / "postgres"))
            log(f"started {self._postgres!r}")
        self._databases += 1
        url: str = self._postgres.new_database(f"{name}_{self._databases}")
        return url

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()
            self._postgres = None


def _fmt(x: float, unit: str = "", digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _ratio_row(
    metric: str,
    ours: list[float],
    anchor_name: str,
    anchor: list[float],
    target: float,
    unit: str = " MB/s",
) -> Row:
    """Medians of each side, and the median of the per-run ratios: the two sides of one run
    ran back to back, so their ratio cancels the load drifting between runs on a shared VM."""
    pairs = [a / b for a, b in zip(ours, anchor, strict=False) if b and not math.isnan(b)]
    ratio = median(pairs) if pairs else float("nan")
    ours_m, anchor_m = median(ours), median(anchor)
    return Row(
        metric,
        _fmt(ours_m, unit),
        f"{anchor_name} {_fmt(anchor_m, unit)}",
        ratio,
        f"≥ {target:g}×",
        (not math.isnan(ratio)) and ratio >= target,
    )


def _at_most_row(
    metric: str,
    ours: list[float],
    anchor_name: str,
    anchor: list[float],
    target: float,
    scale: float = 1000,
    unit: str = " ms",
    digits: int = 1,
) -> Row:
    """Like `_ratio_row` for times (smaller is better): the median of the per-run ratios
    ours / anchor must be ≤ target."""
    pairs = [a / b for a, b in zip(ours, anchor, strict=False) if b and not math.isnan(b)]
    ratio = median(pairs) if pairs else float("nan")
    return Row(
        metric,
        _fmt(median(ours) * scale, unit, digits),
        f"{anchor_name} {_fmt(median(anchor) * scale, unit, digits)}",
        ratio,
        f"≤ {target:g}×",
        (not math.isnan(ratio)) and ratio <= target,
    )


def _fresh_store(name: str) -> Path:
    path = STORES / name
    if path.exists():
        shutil.rmtree(path)
    return path  # wtfs creates it (0700)


def _item(f: Imported, path: str | None = None) -> dict[str, str]:
    return {"itemId": f.item_id, "mountPath": path or f"/{f.name}"}


def _download_url(girder: Any, f: Imported) -> str:
    return f"{girder.api_url}/file/{f.file_id}/download"


def _stop(cleanup: Cleanup, mount: Any) -> None:
    cleanup.run(mount.stop)


# -- 1. cached sequential read -------------------------------------------------------------------

CACHED_BLOCKS = ("1M", "128k")
#: pairs per run and block size. One 1 GiB read takes ~0.5 s, and on this VM one pair's ratio
#: swung 0.46-1.67x (16 pairs in a row, same store file), so the median of five pairs moved
#: 0.43-1.15x between full runs; fifteen pairs, in turns, hold steadier.
CACHED_PAIRS = 3


def _measure_cached(
    ctx: Context, target: Path, store_file: Path, label: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Per block size, `CACHED_PAIRS` pairs per run: dd through wtfs and dd of the store file,
    the page cache dropped before each, the first of a pair taking turns (a disk that is
    quicker on the first or the second read favours neither); plus one warm re-read (bs=1M)
    through wtfs per run. MB/s."""
    ours: dict[str, list[float]] = {bs: [] for bs in CACHED_BLOCKS}
    native: dict[str, list[float]] = {bs: [] for bs in CACHED_BLOCKS}
    warm: list[float] = []
    for r in range(ctx.repeat):
        for bs in CACHED_BLOCKS:
            for k in range(CACHED_PAIRS):
                turn = (r * CACHED_PAIRS + k) % 2
                pair = (store_file, target) if turn else (target, store_file)
                speeds = {}
                for path in pair:
                    drop_caches()
                    nbytes, seconds = dd(path, bs)
                    speeds[path] = mbps(nbytes, seconds)
                ours[bs].append(speeds[target])
                native[bs].append(speeds[store_file])
        dd(target)  # through wtfs into the page cache (the last read above may be the store file's)
        nbytes, seconds = dd(target)  # now from the page cache (keep_cache)
        warm.append(mbps(nbytes, seconds))
        log(
            f"cached ({label}) run {r + 1}: "
            + ", ".join(
                f"bs={bs} wtfs/store file "
                + " ".join(
                    f"{o:.0f}/{n:.0f}"
                    for o, n in zip(
                        ours[bs][-CACHED_PAIRS:], native[bs][-CACHED_PAIRS:], strict=True
                    )
                )
                for bs in CACHED_BLOCKS
            )
            + f" MB/s, warm re-read {warm[-1]:.0f} MB/s"
        )
    for bs in CACHED_BLOCKS:
        ctx.note(
            f"cached ({label}), bs={bs}: {_pair_spread(ours[bs], native[bs])}, wtfs / store file"
        )
    return ours, native, warm


def _pair_spread(ours: list[float], anchor: list[float]) -> str:
    """'N pairs, per pair from a to b, quartiles q1 and q3': how far one pair's ratio swings,
    beside the median the row reports."""
    ratios = sorted(o / a for o, a in zip(ours, anchor, strict=True))
    return (f"{len(ratios)} pairs, per pair from {ratios[0]:.2f} to {ratios[-1]:.2f}, quartiles "
            f"{ratios[len(ratios) // 4]:.2f} and {ratios[3 * len(ratios) // 4]:.2f}")  # fmt: skip


def _make_contiguous(store_file: Path, source: Path, size: int, tmp: Path) -> tuple[int, int, bool]:
    """Rewrite the store file (the daemon stopped, the index untouched) into a file allocated
    in one `fallocate` call, then copied and checked against the source, renamed over it when
    that holds fewer or as many extents. (extents of the file, of the copy, replaced)."""
    before = extents(store_file)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    subprocess.run(["fallocate", "-l", str(size), str(tmp)], check=True)
    subprocess.run(
        ["dd", f"if={store_file}", f"of={tmp}", "bs=4M", "conv=notrunc,fsync", "status=none"],
        check=True,
    )
    if subprocess.run(["cmp", "-s", str(tmp), str(source)]).returncode != 0:
        tmp.unlink()
        raise RuntimeError(f"cached: the copy of {store_file} differs from the source")
    after = extents(tmp)
    if after > before:
        tmp.unlink()
        return before, after, False
    shutil.copystat(store_file, tmp)
    st = store_file.stat()
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, store_file)
    os.sync()
    return before, after, True


def cached(ctx: Context) -> list[Row]:
    """1 GiB file fully in the store, page cache dropped, dd bs=1M and bs=128k: wtfs vs the
    store file at the same block size; then again with the store file rewritten contiguous."""
    source = ensure_random_file(DATA / "g1" / "big1g.bin", GiB)
    files = ctx.girders.import_dir("data", source.parent)
    girder = ctx.girders.get("data")
    f = files["big1g.bin"]
    key = f"girder:{f.file_id}"
    cleanup = Cleanup()
    store = _fresh_store("cached")
    tmp = STORES / "cached-contiguous.tmp"  # same filesystem as the store: renamed into it
    try:
        mount = start_wtfs(cleanup, girder, "cached", [_item(f)], store=store)
        target = mount.mountpoint / f.name
        nbytes, seconds = dd(target)
        log(f"cached: filled the store in {seconds:.1f}s ({mbps(nbytes, seconds):.0f} MB/s cold)")
        entry = _wait_complete(mount, key, 5.0)
        if not entry["complete"]:
            # wtfs completes an entry whose bytes are all present on its next open.
            os.close(os.open(target, os.O_RDONLY))
            reopened = _wait_complete(mount, key, 5.0)
            ctx.note(
                f"cached: after a full sequential read the entry was not marked complete within "
                f"5 s (present {entry['present']} of {entry['size']} bytes, complete=0); "
                f"{'a re-open completed it' if reopened['complete'] else 'a re-open did not help'}"
            )
            entry = reopened
            if not entry["complete"]:
                raise RuntimeError(f"the entry is not complete after a full read: {entry}")
        store_file = mount.store / "data" / entry["file_name"]
        filled_extents = extents(store_file)
        girder.reset_stats()
        ours, native, warm = _measure_cached(ctx, target, store_file, "as filled")
        if ctx.profiler.enabled:
            drop_caches()
            with ctx.profiler.record("cached", [mount.pid]):
                dd(target)
        bad = mount.log_lines(r"Traceback|ERROR")
        if bad:
            ctx.note("cached: daemon log errors: " + " | ".join(bad[-3:]))
        _stop(cleanup, mount)

        before, copy, replaced = _make_contiguous(store_file, f.path, f.size, tmp)
        mount = start_wtfs(cleanup, girder, "cached", [_item(f)], store=store)
        target = mount.mountpoint / f.name
        entry = next(e for e in mount.entries() if e["source_key"] == key)
        if not entry["complete"] or mount.store / "data" / entry["file_name"] != store_file:
            raise RuntimeError(f"cached: the rewritten store file is not served as is: {entry}")
        ours_c, native_c, _ = _measure_cached(ctx, target, store_file, "contiguous")
        downloads = int(girder.stats()["downloads"])
        if downloads:
            raise RuntimeError(f"cached: {downloads} Girder download(s) while reading the store")
        bad = mount.log_lines(r"Traceback|ERROR")
        if bad:
            ctx.note("cached (contiguous): daemon log errors: " + " | ".join(bad[-3:]))
    finally:
        cleanup.close()
        shutil.rmtree(store, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    ctx.note(
        f"cached: the store file held {filled_extents} extent(s) (filefrag) as wtfs filled it; "
        f"for the contiguous rows it was copied into a file fallocated in one call while the "
        f"daemon was stopped (index untouched, bytes checked against the source), which held "
        f"{copy} extent(s), and "
        + (
            "was renamed over it (same path)"
            if replaced
            else f"was dropped: kept the store file ({before}), no more fragmented than a "
            "fresh fallocate on this disk"
        )
        + f"; wtfs was restarted on that store. ext4 cuts even a fresh fallocate at its block "
        f"groups (~128 MiB), so ~{f.size // (128 * MiB)}-10 extents is contiguous for 1 GiB. "
        "No Girder download while the store was read (the rows read the store only)."
    )
    rows = []
    for variant, (o, n, ext) in {
        "as filled": (ours, native, filled_extents),
        "contiguous": (ours_c, native_c, copy if replaced else before),
    }.items():
        for bs in CACHED_BLOCKS:
            rows.append(
                _ratio_row(
                    f"1. cached seq read 1 GiB, page cache dropped, dd bs={bs}, store file "
                    f"{variant} ({ext} extents)",
                    o[bs],
                    f"dd bs={bs} of the store file",
                    n[bs],
                    0.9,
                )
            )
    rows.append(Row("1b. re-read, page cache warm, dd bs=1M (info)", _fmt(median(warm), " MB/s")))
    return rows


def _wait_complete(mount: Any, key: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        entry = next(e for e in mount.entries() if e["source_key"] == key)
        if entry["complete"] or time.monotonic() > deadline:
            return entry
        time.sleep(0.1)


# -- 2. cold sequential read ---------------------------------------------------------------------


def cold(ctx: Context) -> list[Row]:
    """256 MiB from the local Girder, fresh store each run: wtfs vs curl, gcm, rclone."""
    source = ensure_random_file(DATA / "cold" / "f256.bin", 256 * MiB)
    files = ctx.girders.import_dir("data", source.parent)
    girder = ctx.girders.get("data")
    headers = ctx.girders.header_file("data")
    f = files["f256.bin"]
    url = _download_url(girder, f)
    results: dict[str, list[float]] = {k: [] for k in ("wtfs", "curl", "gcm", "rclone", "static")}
    requests: list[int] = []
    meters: dict[str, list[CpuMeter]] = {"wtfs": [], "curl": [], "rclone": []}
    cleanup = Cleanup()
    try:
        server = RcloneServer(cleanup, [f.path])
        for r in range(ctx.repeat + (1 if ctx.profiler.enabled else 0)):
            profiling = r == ctx.repeat
            read_file(f.path)  # the Girder file is in the server's page cache for every tool
            mount = start_wtfs(cleanup, girder, "cold", [_item(f)], store=_fresh_store("cold"))
            girder.reset_stats()
            if profiling:
                with ctx.profiler.record("cold", [mount.pid]):
                    dd(mount.mountpoint / f.name)
                _stop(cleanup, mount)
                break
            with CpuMeter({"daemon": mount.pid, "Girder": girder.process.pid}) as meter:
                nbytes, seconds = dd(mount.mountpoint / f.name)
            meters["wtfs"].append(meter)
            results["wtfs"].append(mbps(nbytes, seconds))
            requests.append(int(girder.stats()["downloads"]))
            if r == 0:
                check = subprocess.run(
                    ["cmp", str(mount.mountpoint / f.name), str(f.path)],
                    capture_output=True,
                    text=True,
                )
                if check.returncode != 0:
                    ctx.note(f"cold: WRONG BYTES through wtfs: {check.stdout or check.stderr}")
            _stop(cleanup, mount)

            with CpuMeter({"Girder": girder.process.pid}) as meter:
                nbytes, seconds = curl([url], headers)
            meters["curl"].append(meter)
            results["curl"].append(mbps(nbytes, seconds))

            gcm = start_gcm(cleanup, girder, "cold-gcm", f.gcm_path)
            nbytes, seconds = dd(gcm.mountpoint / f.gcm_path)
            results["gcm"].append(mbps(nbytes, seconds))
            _stop(cleanup, gcm)

            rc = start_rclone(cleanup, server, "cold-rclone", f.name)
            pids = {"rclone mount": rc.process.pid, "its server": server.process.pid}
            with CpuMeter(pids) as meter:
                nbytes, seconds = dd(rc.mountpoint / f.name)
            meters["rclone"].append(meter)
            results["rclone"].append(mbps(nbytes, seconds))
            _stop(cleanup, rc)

            nbytes, seconds = curl([server.url + f.name])
            results["static"].append(mbps(nbytes, seconds))
            log(
                f"cold run {r + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items())
                + " MB/s"
            )
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "cold", ignore_errors=True)
    m = {k: median(v) for k, v in results.items()}
    ctx.note(
        f"cold: wtfs made {median(requests):.0f} download request(s) per 256 MiB read "
        f"(median); rclone reached {m['rclone'] / m['static']:.2f}× curl of its own static "
        f"server ({m['static']:.0f} MB/s)"
    )
    ctx.note("cold: " + cpu_note("256 MiB read", meters))
    return [
        _ratio_row(
            "2a. cold seq read 256 MiB vs curl of Girder",
            results["wtfs"],
            "curl",
            results["curl"],
            1.3,
        ),
        _ratio_row(
            "2b. cold seq read 256 MiB vs girder-client-mount 0.3.4",
            results["wtfs"],
            "gcm",
            results["gcm"],
            2.0,
        ),
        _ratio_row(
            "2c. cold seq read 256 MiB vs rclone mount (vfs full)",
            results["wtfs"],
            "rclone",
            results["rclone"],
            1.5,
        ),
        Row(
            "2d. rclone vs curl of its static server (info)",
            "–",
            f"rclone {_fmt(m['rclone'], ' MB/s')}, curl {_fmt(m['static'], ' MB/s')}",
            m["rclone"] / m["static"] if m["static"] else None,
        ),
    ]


def cold_index(ctx: Context) -> list[Row]:
    """256 MiB, fresh store each run, the index on PostgreSQL vs SQLite, back to back.

    Four pairs per repeat: one 256 MiB read takes ~0.3 s, and on this 2-core VM the ratio of a
    single pair swings 0.6-1.3x, so the median of five pairs moved 0.72-0.97x between runs."""
    source = ensure_random_file(DATA / "cold" / "f256.bin", 256 * MiB)
    files = ctx.girders.import_dir("data", source.parent)
    girder = ctx.girders.get("data")
    f = files["f256.bin"]
    results: dict[str, list[float]] = {"postgres": [], "sqlite": []}
    cleanup = Cleanup()
    try:
        for r in range(4 * ctx.repeat):
            read_file(f.path)
            for backend in ("sqlite", "postgres") if r % 2 else ("postgres", "sqlite"):
                extra = {"index_url": ctx.postgres_url("cold")} if backend == "postgres" else {}
                mount = start_wtfs(cleanup, girder, f"cold-{backend}", [_item(f)],
                                   store=_fresh_store(f"cold-{backend}"), extra=extra)  # fmt: skip
                nbytes, seconds = dd(mount.mountpoint / f.name)
                if nbytes != f.size:
                    raise RuntimeError(f"cold-index: read {nbytes} bytes of {f.size}")
                results[backend].append(mbps(nbytes, seconds))
                _stop(cleanup, mount)
            log(
                f"cold-index run {r + 1}: postgres {results['postgres'][-1]:.0f} MB/s, "
                f"sqlite {results['sqlite'][-1]:.0f} MB/s"
            )
    finally:
        cleanup.close()
        for backend in ("sqlite", "postgres"):
            shutil.rmtree(STORES / f"cold-{backend}", ignore_errors=True)
    ctx.note(f"cold-index: {_pair_spread(results['postgres'], results['sqlite'])}, "
             "PostgreSQL / SQLite")  # fmt: skip
    return [
        _ratio_row(
            "2e. cold seq read 256 MiB, index on PostgreSQL vs SQLite",
            results["postgres"],
            "SQLite",
            results["sqlite"],
            0.95,
        )
    ]


# -- 3. first byte at a random offset -------------------------------------------------------------


def random(ctx: Context) -> list[Row]:
    """20 × (open + 4 KiB pread) at random offsets in distinct blocks of an uncached 1 GiB file;
    the anchor: the same 20 Range GETs from Girder on one kept-alive connection."""
    source = ensure_random_file(DATA / "g1" / "big1g.bin", GiB)
    files = ctx.girders.import_dir("data", source.parent)
    girder = ctx.girders.get("data")
    headers = ctx.girders.header_file("data")
    f = files["big1g.bin"]
    url = _download_url(girder, f)
    block, count = 4 * MiB, 20
    names = ("wtfs", "rtt", "gcm", "rclone")
    per_run: dict[str, list[float]] = {k: [] for k in names}
    worst: dict[str, float] = dict.fromkeys(names, 0.0)
    wtfs_parts: list[tuple[float, float]] = []  # (open, pread) of each wtfs sample

    def record(name: str, samples: list[float]) -> None:
        per_run[name].append(median(samples))
        worst[name] = max(worst[name], max(samples))

    cleanup = Cleanup()
    try:
        server = RcloneServer(cleanup, [f.path])
        for r in range(ctx.repeat):
            read_file(f.path)
            mount = start_wtfs(cleanup, girder, "random", [_item(f)], store=_fresh_store("random"))
            record("wtfs", random_reads(mount.mountpoint / f.name, f.size, count, block, f.path, r,
                                        parts=wtfs_parts))  # fmt: skip
            _stop(cleanup, mount)

            offsets = random_offsets(f.size, count, block, seed=r)  # the same offsets
            record("rtt", range_round_trips(url, headers, offsets, f.path))

            gcm = start_gcm(cleanup, girder, "random-gcm", f.gcm_path)
            record(
                "gcm", random_reads(gcm.mountpoint / f.gcm_path, f.size, count, block, f.path, r)
            )
            _stop(cleanup, gcm)

            rc = start_rclone(cleanup, server, "random-rclone", f.name)
            record("rclone", random_reads(rc.mountpoint / f.name, f.size, count, block, f.path, r))
            _stop(cleanup, rc)
            log(
                f"random run {r + 1}: median ms "
                + ", ".join(f"{k} {v[-1] * 1000:.1f}" for k, v in per_run.items())
            )
        if ctx.profiler.enabled:
            mount = start_wtfs(cleanup, girder, "random", [_item(f)], store=_fresh_store("random"))
            with ctx.profiler.record("random", [mount.pid], idle=True):
                random_reads(mount.mountpoint / f.name, f.size, count, block, f.path, seed=99)
            _stop(cleanup, mount)
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "random", ignore_errors=True)
    ms = {k: median(v) * 1000 for k, v in per_run.items()}
    ctx.note(
        "random: the round trip is one GET of /file/{id}/download with a 4 KiB Range (206), "
        "timed from the request to the body's last byte, on one kept-alive http.client "
        "connection opened by an untimed first request; the same 20 offsets as the mounts. "
        f"Worst samples (ms): wtfs {worst['wtfs'] * 1000:.0f}, round trip "
        f"{worst['rtt'] * 1000:.0f}, gcm {worst['gcm'] * 1000:.0f}, rclone "
        f"{worst['rclone'] * 1000:.0f}. wtfs's median open "
        f"{median([o for o, _ in wtfs_parts]) * 1000:.1f} ms, pread "
        f"{median([p for _, p in wtfs_parts]) * 1000:.1f} ms"
    )
    metric = "3. first 4 KiB at a random offset, uncached 1 GiB (median of 20, open+pread)"
    return [
        _at_most_row(
            f"{metric} vs one Girder round trip", per_run["wtfs"], "Range GET", per_run["rtt"], 2.0
        ),
        _at_most_row(
            "3b. the same vs girder-client-mount 0.3.4 (reads through Girder too)",
            per_run["wtfs"],
            "gcm",
            per_run["gcm"],
            1.0,
        ),
        Row(
            "3c. the same, rclone mount of its own static server (info, not compared)",
            _fmt(ms["wtfs"], " ms", 1),
            f"rclone {_fmt(ms['rclone'], ' ms', 1)}",
            ms["wtfs"] / ms["rclone"] if ms["rclone"] else None,
        ),
    ]


# -- 4. ls -l of 10,000 items -------------------------------------------------------------------


def listing(ctx: Context) -> list[Row]:
    """`ls -l` of a 10,000-item folder on a separate Girder: first and warm; gcm capped at 60 s."""
    count = 10_000
    girder = ctx.girders.get("listing")
    client = girder.client()
    collection = client.createCollection("bench-listing", public=True)
    folder = client.createFolder(collection["_id"], "big", parentType="collection", public=True)
    started = time.monotonic()
    girder.bulk_items(folder["_id"], count, prefix="item", file_size=64)
    log(f"listing: created {count} items in {time.monotonic() - started:.1f}s")
    first: list[float] = []
    warm: list[float] = []
    reqs: list[int] = []
    cap = 120.0 if ctx.quick else 900.0  # the first listing; warm ones are capped at 60 s
    capped = ""
    cleanup = Cleanup()
    gcm_text = "not run"
    try:
        for r in range(ctx.repeat):
            mount = start_wtfs(
                cleanup,
                girder,
                "listing",
                [{"itemId": folder["_id"], "mountPath": "/big"}],
                store=_fresh_store("listing"),
            )
            girder.reset_stats()
            path = mount.mountpoint / "big"
            started = time.perf_counter()
            try:
                pids = [mount.pid, girder.process.pid]  # the daemon and the server
                with ctx.profiler.record("listing", pids) if r == 0 else _null():
                    lines, seconds = _ls(path, timeout=cap)
            except subprocess.TimeoutExpired:
                made = int(girder.stats()["requests"])
                elapsed = time.perf_counter() - started
                capped = (
                    f"> {cap:.0f} s ({made} Girder requests in {elapsed:.0f} s, "
                    f"{1000 * elapsed / max(made, 1):.0f} ms each)"
                )
                ctx.note(
                    f"listing: the first `ls -l` did not finish within {cap:.0f} s: {made} "
                    f"Girder requests so far; daemon log: "
                    + " | ".join(mount.log_lines(r"listed|ERROR|WARNING")[-3:])
                )
                _stop(cleanup, mount)
                break
            if lines != count + 1:
                raise RuntimeError(f"ls -l printed {lines} lines, expected {count + 1}")
            first.append(seconds)
            reqs.append(int(girder.stats()["requests"]))
            lines, seconds = _ls(path, timeout=60)
            warm.append(seconds)
            _stop(cleanup, mount)
            log(
                f"listing run {r + 1}: first {first[-1]:.2f}s ({reqs[-1]} requests, "
                f"{1000 * first[-1] / max(reqs[-1], 1):.0f} ms each), warm {warm[-1]:.3f}s"
            )
            if first[-1] > 30 and r + 1 < ctx.repeat:
                ctx.note(
                    f"listing: the first listing took {first[-1]:.0f} s: stopped after "
                    f"{r + 1} run(s) to keep the run time sane"
                )
                break
        stock, stock_reqs = _stock_listing(cleanup, girder, folder["_id"], count)
        gcm = start_gcm(cleanup, girder, "listing-gcm", "collection/bench-listing/big")
        try:
            lines, seconds = _ls(gcm.mountpoint / "collection/bench-listing/big", timeout=60)
            gcm_text = f"gcm {seconds:.1f} s"
        except subprocess.TimeoutExpired:
            gcm_text = "gcm > 60 s"
        _stop(cleanup, gcm)
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "listing", ignore_errors=True)
    if reqs:
        ctx.note(
            f"listing: the first listing made {median(reqs):.0f} Girder requests (median) "
            f"for {count} items"
        )
    stock_text = (
        f"{stock:.1f} s ({stock_reqs} requests)"
        if stock is not None
        else f"> {LISTING_STOCK_CAP:.0f} s ({stock_reqs} requests by then)"
    )
    first_text = capped or f"{median(first):.2f} s"
    warm_text = "not measured (first listing capped)" if capped else f"{median(warm):.3f} s"
    return [
        Row(
            "4a. ls -l of 10,000 items, first listing (Girder with the wtfs plugin)",
            first_text,
            gcm_text,
            None,
            f"< {LISTING_FIRST_TARGET:g} s",
            not capped and median(first) < LISTING_FIRST_TARGET,
        ),
        Row(
            "4a'. the same, stock Girder API (no wtfs plugin: a request per item; info)",
            stock_text,
            gcm_text,
        ),
        Row(
            "4b. ls -l of 10,000 items, warm listing",
            warm_text,
            "–",
            None,
            "< 0.2 s",
            not capped and median(warm) < 0.2,
        ),
    ]


LISTING_STOCK_CAP = 120.0
LISTING_FIRST_TARGET = 1.5


def _stock_listing(
    cleanup: Cleanup, girder: Any, folder_id: str, count: int
) -> tuple[float | None, int]:
    """One first `ls -l` with the server's wtfs plugin unused: what a stock Girder costs."""
    mount = start_wtfs(
        cleanup,
        girder,
        "listing-stock",
        [{"itemId": folder_id, "mountPath": "/big"}],
        store=_fresh_store("listing"),
        extra={"girder": {"bulk_listing": False}},
    )
    girder.reset_stats()
    try:
        lines, seconds = _ls(mount.mountpoint / "big", timeout=LISTING_STOCK_CAP)
    except subprocess.TimeoutExpired:
        seconds = None
    made = int(girder.stats()["requests"])
    _stop(cleanup, mount)
    if seconds is None:
        return None, made
    if lines != count + 1:
        raise RuntimeError(f"ls -l printed {lines} lines, expected {count + 1}")
    log(f"listing, stock Girder API: {seconds:.1f}s ({made} requests)")
    return seconds, made


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _ls(path: Path, timeout: float) -> tuple[int, float]:
    started = time.perf_counter()
    result = subprocess.run(
        ["ls", "-l", str(path)], capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ls -l {path} failed: {result.stderr.strip()}")
    return len(result.stdout.splitlines()), seconds


# -- 5. RSS while streaming 4 GiB ---------------------------------------------------------------


def _verify_stream(path: Path, source: Path, size: int) -> dict[str, Any]:
    """Read `path` front to back in 128 KiB reads (cmp's size), comparing each with `source`.

    `bad` counts wrong 128 KiB chunks."""
    chunk = 128 * 1024
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    bad, first_bad, first_zero, error, offset = 0, None, None, None, 0
    started = time.perf_counter()
    try:
        with open(path, "rb", buffering=0) as f, open(source, "rb", buffering=0) as src:
            while offset < size:
                n = f.readinto(buffer)
                if not n:
                    error = f"EOF at {offset}"
                    break
                if view[:n] != os.pread(src.fileno(), n, offset):
                    bad += 1
                    if first_bad is None:
                        first_bad = offset
                        first_zero = buffer[:n].count(0) == n
                offset += n
    except OSError as exc:
        error = f"{type(exc).__name__} at offset {offset}: {exc}"
    return {
        "bad": bad,
        "first_bad": first_bad,
        "zeros": first_zero,
        "error": error,
        "seconds": time.perf_counter() - started,
        "read": offset,
    }


RSS_PEAK_MIB = 48
RSS_IDLE_SECONDS = 5.0


def rss(ctx: Context) -> list[Row]:
    """VmRSS of the daemon every 0.5 s while 4 GiB stream through a 1 GiB store (verified)."""
    source = ensure_random_file(DATA / "stream" / "big4g.bin", 4 * GiB)
    files = ctx.girders.import_dir("data", source.parent)
    girder = ctx.girders.get("data")
    f = files["big4g.bin"]
    runs = max(1, min(ctx.repeat, 3))
    capacity = "1GiB"
    window_row = Row(
        "5b. 4 GiB through a 1 GiB store: bytes correct (bounded window)",
        "ok",
        "–",
        None,
        "0 wrong bytes, no error",
        True,
    )
    maxes, firsts, lasts, growths, speeds, peaks_store = [], [], [], [], [], []
    idles: list[float] = []
    idle_maxes: list[float] = []
    cleanup = Cleanup()
    try:
        read_file(f.path)
        r = 0
        while r < runs + (1 if ctx.profiler.enabled else 0):
            profiling = r == runs
            mount = start_wtfs(
                cleanup, girder, "rss", [_item(f)], store=_fresh_store("rss"), capacity=capacity
            )
            store_peak = [0]

            def store_bytes(store: Path = mount.store, peak: list[int] = store_peak) -> None:
                total = 0
                for dirpath, _, names in os.walk(store / "data"):
                    for name in names:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
                peak[0] = max(peak[0], total)

            # idle: freshly mounted, after a listing, before any read
            _ls(mount.mountpoint, timeout=60)
            with RssSampler(mount.pid) as idle_sampler:
                time.sleep(RSS_IDLE_SECONDS)
            idle_kib = [v for _, v in idle_sampler.samples]
            sampler = RssSampler(mount.pid, on_sample=store_bytes)
            with ctx.profiler.record("rss", [mount.pid]) if profiling else _null(), sampler:
                check = _verify_stream(mount.mountpoint / f.name, f.path, f.size)
            drops = len(mount.log_lines(r"made room .* inside files being read", limit=10**6))
            bad_lines = mount.log_lines(r"ERROR|Traceback")
            _stop(cleanup, mount)
            kib = [v for _, v in sampler.samples]
            half = len(kib) // 2
            summary = (
                f"max {max(kib) / 1024:.0f} MiB, first {kib[0] / 1024:.0f}, last "
                f"{kib[-1] / 1024:.0f}"
            )
            if check["bad"] or check["error"]:
                what = []
                if check["bad"]:
                    what.append(
                        f"{check['bad']} MiB of {f.size // MiB} read back WRONG, first at "
                        f"offset {check['first_bad']} "
                        f"({'all zeros' if check['zeros'] else 'not zeros'})"
                    )
                if check["error"]:
                    what.append(f"read error: {check['error']}")
                detail = "; ".join(what)
                log(f"rss run {r + 1} (capacity {capacity}): {detail}; RSS {summary}")
                if capacity == "1GiB":
                    window_row = Row(
                        window_row.metric, detail[:160], "–", None, window_row.target, False
                    )
                    ctx.note(
                        f"rss: streaming 4 GiB through a 1 GiB store FAILED: {detail}; the "
                        f"daemon logged {drops} windows (room made inside files being read) "
                        f"and {len(bad_lines)} errors"
                        + (": " + " | ".join(bad_lines[-3:]) if bad_lines else "")
                        + f"; RSS during that run: {summary}. Fell back to capacity 6 GiB "
                        "for the RSS figure."
                    )
                    capacity = "6GiB"
                    continue
                raise RuntimeError(f"streaming 4 GiB with capacity {capacity}: {detail}")
            if profiling:
                break
            idles.append(median(idle_kib) / 1024)
            idle_maxes.append(max(idle_kib) / 1024)
            maxes.append(max(kib) / 1024)
            firsts.append(kib[0] / 1024)
            lasts.append(kib[-1] / 1024)
            growths.append((max(kib[half:]) - max(kib[:half] or kib[:1])) / 1024)
            speeds.append(mbps(f.size, check["seconds"]))
            peaks_store.append(store_peak[0])
            log(
                f"rss run {r + 1} (capacity {capacity}): {summary}, 2nd-half growth "
                f"{growths[-1]:+.1f} MiB, {speeds[-1]:.0f} MB/s, store peak "
                f"{store_peak[0] / MiB:.0f} MiB on disk, {drops} window shrinks"
            )
            r += 1
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "rss", ignore_errors=True)
    flat = max(growths) < 8
    ctx.note(
        f"rss: capacity {capacity}; streaming speed {median(speeds):.0f} MB/s (128 KiB reads, "
        f"every byte compared with the source); store peak on disk "
        f"{max(peaks_store) / MiB:.0f} MiB; 'flat' = the max RSS of the second half of the "
        f"stream exceeds the first half's by < 8 MiB; idle = VmRSS every 0.5 s for "
        f"{RSS_IDLE_SECONDS:.0f} s of a fresh mount after one `ls -l` of its root, median per run"
    )
    return [
        Row(
            f"5. daemon RSS streaming 4 GiB (store {capacity})",
            f"max {max(maxes):.0f} MiB (first {median(firsts):.0f}, last {median(lasts):.0f}; "
            f"growth {max(growths):+.1f})",
            "–",
            None,
            f"≤ {RSS_PEAK_MIB} MiB, flat",
            max(maxes) <= RSS_PEAK_MIB and flat,
        ),
        Row(
            "5a. daemon RSS of an idle mount (fresh, after `ls -l`, before reads; info)",
            f"{median(idles):.0f} MiB (max {max(idle_maxes):.0f})",
        ),
        window_row,
    ]


# -- 6. GC pass over 100k entries ---------------------------------------------------------------


GC_ENTRIES, GC_SIZE = 100_000, 4096


def _gc_index(ctx: Context, backend: str, root: Path) -> Any:
    """A fresh index of `backend` for a store at `root` (PostgreSQL: a fresh database)."""
    from wtfs_index import open_index

    url = ctx.postgres_url("gc") if backend == "postgres" else None
    return open_index(url, root)


def _fill_index(index: Any, n: int, size: int) -> list[str]:
    """n complete entries of `size` bytes, atimes in order, in one transaction (both backends
    take the same SQL); their file names."""
    from wtfs_index import Ranges

    ranges = Ranges([(0, size)]).to_json()
    now = time.time()
    rows = [
        (f"bench:{i}", f"bench:{i}", "v1", f"item{i:06d}", f"{i % 256:02x}/f{i:06d}", size,
         "girder://file/x", f"/bench/f{i}", ranges, size, 1, now - n + i, now)
        for i in range(n)
    ]  # fmt: skip
    # Rows many to a statement, as a bulk load would: the index counts each statement's inserts
    # once (`wtfs_index.schema`), where a statement per row made 100,000 changes of one row in
    # one transaction (56 s on PostgreSQL, against 4.8 s).
    per = 2000
    with index._write() as tx:
        for at in range(0, n, per):
            chunk = rows[at : at + per]
            tx.execute(
                "INSERT INTO entries (key, source_key, version, item_id, file_name, size, source,"
                " path, ranges, present, complete, atime, created) VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk)),
                tuple(v for row in chunk for v in row),
            )
    return [row[4] for row in rows]


GC_TARGET = 0.5


def gc(ctx: Context) -> list[Row]:
    """A GC pass over an index of 100,000 entries, on SQLite and PostgreSQL, in the daemon's
    steps (wtfs.gc.scheduler): `evict` (the index's half: reclaim, choose, delete the rows;
    what the pass holds the index for) timed apart from `unlink` + `finish` (the files, then
    the capacity count released)."""
    from wtfs_index import Owner

    from wtfs.cache.store import Store
    from wtfs.gc.evictor import GcPolicy, collect, evict, finish, unlink

    n, size = GC_ENTRIES, GC_SIZE
    usage = n * size
    me = Owner.current("bench-gc")
    rows: list[Row] = []
    base = fresh_dir(WORK / "gc")
    for backend in ("sqlite", "postgres"):
        evict_t: list[float] = []
        evict_cpu: list[float] = []  # of this process: the pass is its only work meanwhile
        done_t: list[float] = []
        noop_t: list[float] = []
        evicted_n: list[int] = []
        kept: list[bool] = []
        for r in range(ctx.repeat):
            run = fresh_dir(base / f"{backend}-{r}")
            store = Store(run)
            store.prepare()
            index = _gc_index(ctx, backend, run)
            try:
                names = _fill_index(index, n, size)
                for d in {name.split("/")[0] for name in names}:
                    (store.data / d).mkdir(mode=0o700, exist_ok=True)
                for name in names:  # one (empty) file per entry: the pass unlinks what it evicts
                    os.close(os.open(store.data / name, os.O_CREAT | os.O_WRONLY, 0o600))
                started = time.perf_counter()
                report = collect(index, store, GcPolicy(usage * 2, 0.9, 0.5), me)
                noop_t.append(time.perf_counter() - started)
                assert not report.evicted
                policy = GcPolicy(int(usage / 0.95), 0.9, 0.5)
                started, cpu = time.perf_counter(), time.process_time()
                report = evict(index, store, policy, me)
                evict_t.append(time.perf_counter() - started)
                evict_cpu.append(time.process_time() - cpu)
                # the evicted bytes still count until `finish`: no fetch may use that room yet
                # (this check's own time is left out of the figure below)
                checked = time.perf_counter()
                kept.append(index.usage() == report.usage_before)
                started += time.perf_counter() - checked
                unlink(store, report)
                report = finish(index, store, report, unlinked=True)
                done_t.append(time.perf_counter() - started)
                evicted_n.append(len(report.evicted))
                left = sum(len(files) for _, _, files in os.walk(store.data))
                if left != n - len(report.evicted):
                    ctx.note(f"gc {backend}: {left} store files left, expected "
                             f"{n - len(report.evicted)}")  # fmt: skip
                if report.usage_after != (n - len(report.evicted)) * size:
                    ctx.note(f"gc {backend}: usage {report.usage_after} after the pass, "
                             f"expected {(n - len(report.evicted)) * size}")  # fmt: skip
            finally:
                index.close()
                shutil.rmtree(run, ignore_errors=True)
            log(f"gc {backend} run {r + 1}: no-op {noop_t[-1] * 1000:.0f} ms, eviction: index "
                f"half {evict_t[-1] * 1000:.0f} ms, unlinks done at {done_t[-1] * 1000:.0f} ms "
                f"({evicted_n[-1]} entries evicted)")  # fmt: skip
        ctx.note(
            f"gc {backend}: the eviction pass evicted {median(evicted_n):.0f} of {n} entries "
            f"(95 % → 50 % of capacity); its index half (`evict`) took "
            + ", ".join(f"{t:.2f}" for t in evict_t)
            + " s (CPU time "
            + ", ".join(f"{t:.2f}" for t in evict_cpu)
            + " s), its unlinks were done (`unlink` + `finish`) at "
            + ", ".join(f"{t:.2f}" for t in done_t)
            + " s; the capacity count kept the evicted bytes until `finish` in "
            + f"{sum(kept)} of {len(kept)} runs"
        )
        name = "SQLite" if backend == "sqlite" else "PostgreSQL"
        crit, done, noop = median(evict_t), median(done_t), median(noop_t)
        rows += [
            Row(f"6a. GC eviction pass over 100,000 entries, critical path: the index's half "
                f"({name})", f"{crit:.2f} s", "–", None, f"< {GC_TARGET:g} s",
                crit < GC_TARGET and all(kept)),
            Row(f"6a'. the same, until every unlink is done and counted (info; {name})",
                f"{done:.2f} s"),
            Row(f"6b. GC no-op pass over 100,000 entries ({name})",
                f"{noop * 1000:.0f} ms", "–", None, f"< {GC_TARGET:g} s", noop < GC_TARGET),
        ]  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)
    return rows


def index_cost(ctx: Context) -> list[Row]:
    """The index's cost per block of a fetch, timed alone (no data, no provider), on SQLite and
    PostgreSQL, in a store holding nothing else and in one holding 100,000 other entries: what
    a streaming run asks, a `reserve` of its first block and then one `commit_and_reserve` per
    block (the commit of a block and the claim of the next, one transaction)."""
    from wtfs_index import NewEntry, Owner

    from wtfs.cache.store import Store

    blocks, block = 2000, 4 * MiB
    me = Owner.current("bench-index")
    rows: list[Row] = []
    base = fresh_dir(WORK / "index-cost")
    per_block: dict[tuple[str, int], list[float]] = {}
    for backend in ("sqlite", "postgres"):
        for others in (0, GC_ENTRIES):
            times = per_block.setdefault((backend, others), [])
            for r in range(ctx.repeat):
                run = fresh_dir(base / f"{backend}-{others}-{r}")
                Store(run).prepare()
                index = _gc_index(ctx, backend, run)
                try:
                    if others:
                        _fill_index(index, others, GC_SIZE)
                    index.register_owner(me, "bench")
                    size = blocks * block
                    new = NewEntry("bench:cost", "bench:cost", "v1", "item", size,
                                   "girder://file/x", "/bench/cost")  # fmt: skip
                    entry = index.ensure_entry(new, by_owner=me.owner_id)
                    n = blocks if not others else blocks // 10
                    capacity = size * 2 + others * GC_SIZE
                    started = time.perf_counter()
                    res = index.reserve(entry.key, 0, block, me, capacity,
                                        file_name=entry.file_name)  # fmt: skip
                    for b in range(n):
                        start, end = b * block, (b + 1) * block
                        assert res.claim_id is not None, res
                        _, res = index.commit_and_reserve(
                            res.claim_id, entry.key, start, end, None,
                            next_end=min(end + block, size), owner=me, capacity=capacity,
                            file_name=entry.file_name,
                        )  # fmt: skip
                    times.append((time.perf_counter() - started) / n)
                finally:
                    index.close()
                    shutil.rmtree(run, ignore_errors=True)
                log(f"index-cost {backend}, {others} other entries, run {r + 1}: "
                    f"{times[-1] * 1e6:.0f} µs per block")  # fmt: skip
    shutil.rmtree(base, ignore_errors=True)
    for (backend, others), t in per_block.items():
        name = "SQLite" if backend == "sqlite" else "PostgreSQL"
        where = f"{others:,} other entries" if others else "an empty store"
        ctx.note(f"index-cost {backend}, {where}: " + ", ".join(f"{x * 1e6:.0f}" for x in t)
                 + " µs per block (commit and claim the next)")  # fmt: skip
        metric = f"8. index cost per 4 MiB block, commit + next claim ({name}, {where})"
        rows.append(Row(metric, f"{median(t) * 1e6:,.0f} µs", "–", None))
    return rows


# -- 7. 2 mounts × 8 readers ------------------------------------------------------------------


def parallel_readers(ctx: Context) -> list[Row]:
    """Two mounts sharing one store, 8 readers each on distinct cold files, vs 8 parallel curls."""
    file_size = 128 * MiB
    directory = DATA / "par"
    for i in range(16):
        ensure_random_file(directory / f"p{i:02d}.bin", file_size)
    files = ctx.girders.import_dir("data", directory)
    girder = ctx.girders.get("data")
    headers = ctx.girders.header_file("data")
    ordered = [files[f"p{i:02d}.bin"] for i in range(16)]
    ours, theirs, reqs = [], [], []
    meters: dict[str, list[CpuMeter]] = {"wtfs": [], "8 curls": []}
    cleanup = Cleanup()
    try:
        for r in range(ctx.repeat + (1 if ctx.profiler.enabled else 0)):
            profiling = r == ctx.repeat
            for f in ordered:
                read_file(f.path)
            store = _fresh_store("par")
            a = start_wtfs(cleanup, girder, "par-a", [_item(f) for f in ordered[:8]], store=store)
            b = start_wtfs(cleanup, girder, "par-b", [_item(f) for f in ordered[8:]], store=store)
            girder.reset_stats()
            jobs: list[Callable[[], tuple[int, float]]] = [
                (lambda p=a.mountpoint / f.name: dd(p)) for f in ordered[:8]
            ] + [(lambda p=b.mountpoint / f.name: dd(p)) for f in ordered[8:]]
            pids = {"daemon A": a.pid, "daemon B": b.pid, "Girder": girder.process.pid}
            with (
                ctx.profiler.record("parallel", [a.pid, b.pid]) if profiling else _null(),
                CpuMeter(pids) as meter,
            ):
                nbytes, seconds = parallel(jobs)
            if profiling:
                _stop(cleanup, a)
                _stop(cleanup, b)
                break
            if nbytes != 16 * file_size:
                raise RuntimeError(f"read {nbytes} bytes, expected {16 * file_size}")
            ours.append(mbps(nbytes, seconds))
            meters["wtfs"].append(meter)
            reqs.append(int(girder.stats()["downloads"]))
            bad = a.log_lines(r"Traceback|ERROR") + b.log_lines(r"Traceback|ERROR")
            if bad:
                ctx.note("parallel: daemon log errors: " + " | ".join(bad[-3:]))
            _stop(cleanup, a)
            _stop(cleanup, b)
            urls = [_download_url(girder, f) for f in ordered]
            curl_jobs: list[Callable[[], tuple[int, float]]] = [
                (lambda pair=(urls[i], urls[i + 8]): curl(list(pair), headers)) for i in range(8)
            ]
            with CpuMeter({"Girder": girder.process.pid}) as meter:
                nbytes, seconds = parallel(curl_jobs)
            meters["8 curls"].append(meter)
            theirs.append(mbps(nbytes, seconds))
            log(
                f"parallel run {r + 1}: wtfs {ours[-1]:.0f} MB/s ({reqs[-1]} downloads), "
                f"8 curls {theirs[-1]:.0f} MB/s"
            )
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "par", ignore_errors=True)
    ctx.note(
        f"parallel: 16 files × {file_size // MiB} MiB; wtfs made {median(reqs):.0f} download "
        "requests per run (median); " + cpu_note(f"run (16 × {file_size // MiB} MiB)", meters)
    )
    return [
        _ratio_row("7. 2 mounts × 8 readers, cold, aggregate", ours, "8 curls", theirs, 1.0),
    ]


# -- 8. prefetch ---------------------------------------------------------------------------------


def prefetch(ctx: Context) -> list[Row]:
    """`wtfs prefetch` of 8 × 128 MiB into a mount's fresh store vs curl of the same downloads;
    then, on another fresh store, a live reader's first 4 KiB at random offsets of an uncached
    1 GiB file during such a prefetch vs with the mount idle."""
    file_size = 128 * MiB
    directory = DATA / "par"  # the parallel scenario's files (the first 8)
    for i in range(8):
        ensure_random_file(directory / f"p{i:02d}.bin", file_size)
    big = ensure_random_file(DATA / "g1" / "big1g.bin", GiB)
    files = ctx.girders.import_dir("data", directory)
    big_f = ctx.girders.import_dir("data", big.parent)["big1g.bin"]
    girder = ctx.girders.get("data")
    headers = ctx.girders.header_file("data")
    ordered = [files[f"p{i:02d}.bin"] for i in range(8)]
    data_set = [_item(f, f"/p/{f.name}") for f in ordered]
    block = 4 * MiB
    ours, theirs, idle, busy, walls, during_mbps = [], [], [], [], [], []
    cleanup = Cleanup()
    try:
        for r in range(ctx.repeat):
            for f in [*ordered, big_f]:
                read_file(f.path)
            # A: the prefetch alone, then curl of the same downloads.
            mount = start_wtfs(cleanup, girder, "prefetch", data_set,
                               store=_fresh_store("prefetch"))  # fmt: skip
            record, wall, _ = _prefetch_run(cleanup, mount, 8 * file_size)
            ours.append(mbps(record["bytes"]["fetched"], record["seconds"]))
            walls.append(wall)
            _stop(cleanup, mount)
            nbytes, seconds = curl([_download_url(girder, f) for f in ordered], headers)
            theirs.append(mbps(nbytes, seconds))
            # B: live reads, idle and during a prefetch (distinct blocks: none finds bytes
            # another one brought).
            mount = start_wtfs(cleanup, girder, "prefetch", [*data_set, _item(big_f)],
                               store=_fresh_store("prefetch"))  # fmt: skip
            live = mount.mountpoint / big_f.name
            blocks = pyrandom.Random(r).sample(range(big_f.size // block), 50)
            offsets = [b * block + 4096 * (b % 512) for b in blocks]
            idle += [_first_bytes(live, o, big_f.path) for o in offsets[:10]]
            record, _, during = _prefetch_run(
                cleanup, mount, 8 * file_size,
                functools.partial(_nth_first_bytes, live, offsets[10:], big_f.path),
            )  # fmt: skip
            during_mbps.append(mbps(record["bytes"]["fetched"], record["seconds"]))
            busy += during
            _stop(cleanup, mount)
            log(
                f"prefetch run {r + 1}: {ours[-1]:.0f} MB/s ({wall:.1f}s with the command), "
                f"curl {theirs[-1]:.0f} MB/s; first byte idle {median(idle) * 1000:.1f} ms, "
                f"during {median(during) * 1000 if during else float('nan'):.1f} ms "
                f"({len(during)} reads; the prefetch then {during_mbps[-1]:.0f} MB/s)"
            )
    finally:
        cleanup.close()
        shutil.rmtree(STORES / "prefetch", ignore_errors=True)
    idle_ms = median(idle) * 1000
    busy_ms = median(busy) * 1000 if busy else float("nan")
    ratio = busy_ms / idle_ms if idle_ms else float("nan")
    ctx.note(
        f"prefetch: 8 files × {file_size // MiB} MiB; MB/s over the run's own time (from the "
        f"daemon taking it up to its end); the command's wall time, with its start and the "
        f"daemon's 2 s tick, was {median(walls):.1f} s (median); {len(busy)} live reads during "
        f"prefetches, which then made {median(during_mbps):.0f} MB/s (median)"
    )
    return [
        _ratio_row("8a. prefetch 8 × 128 MiB into a mount's store", ours, "curl", theirs, 0.8),
        Row(
            "8b. live first 4 KiB at a random offset during a prefetch vs idle (median)",
            f"{busy_ms:.1f} ms",
            f"idle {idle_ms:.1f} ms",
            ratio,
            "≤ 2×",
            (not math.isnan(ratio)) and ratio <= 2.0,
        ),
    ]


def _nth_first_bytes(path: Path, offsets: list[int], source: Path, n: int) -> float | None:
    return _first_bytes(path, offsets[n], source) if n < len(offsets) else None


def _prefetch_run(
    cleanup: Cleanup,
    mount: Any,
    expected: int,
    live: Callable[[int], float | None] | None = None,
) -> tuple[dict[str, Any], float, list[float]]:
    """`wtfs prefetch --json MNT/p`: its record, the command's wall time, and the seconds of
    each `live(n)` call made while the prefetch was running (until `live` answers None)."""
    started = time.perf_counter()
    run = subprocess.Popen(
        [sys.executable, "-m", "wtfs", "-c", str(mount.config_path), "prefetch", "--json",
         str(mount.mountpoint / "p")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    cleanup.push("wtfs prefetch", lambda: run.kill() if run.poll() is None else None)
    during: list[float] = []
    while live is not None and run.poll() is None:
        if not _prefetch_running(mount):
            time.sleep(0.05)
            continue
        seconds = live(len(during))
        if seconds is None:
            break
        during.append(seconds)
    out, err = run.communicate(timeout=1200)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"prefetch failed ({run.returncode}): {err.strip()}")
    record: dict[str, Any] = json.loads(out)
    if record["bytes"]["fetched"] != expected:
        raise RuntimeError(f"prefetch fetched {record['bytes']['fetched']} of {expected} bytes")
    return record, wall, during


def _first_bytes(path: Path, offset: int, source: Path) -> float:
    """Seconds for open + 4 KiB pread at `offset` + close; the bytes checked against `source`."""
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, 4096, offset)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    with open(source, "rb") as src:
        if data != os.pread(src.fileno(), 4096, offset):
            raise RuntimeError(f"{path}: wrong bytes at offset {offset}")
    return seconds


def _prefetch_running(mount: Any) -> bool:
    from wtfs_index import PrefetchState, open_index

    index = open_index(None, mount.store)
    try:
        return any(p.state == PrefetchState.RUNNING for p in index.prefetches())
    finally:
        index.close()


SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "cached": cached,
    "cold": cold,
    "random": random,
    "listing": listing,
    "rss": rss,
    "gc": gc,
    "parallel": parallel_readers,
    "cold-index": cold_index,
    "index-cost": index_cost,
    "prefetch": prefetch,
}
