"""Plumbing for the wtfs benchmarks: data files, local Girders, wtfs / girder-client-mount / rclone
mounts, curl, dd, page-cache drops, RSS sampling and py-spy profiles.

Everything lives under bench/work/ (gitignored). Every process started here is registered with a
`Cleanup` stack, so mounts are unmounted (`fusermount3 -u -z`) and servers stopped even when a
scenario fails or the run is interrupted. Secrets (API key, token) only ever travel in files or
in the environment of the child that needs them, never on a command line.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import mmap
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wtfs.daemon.ready import ReadyPipe

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
PEERS_VENV = WORK / "peers-venv"
MiB = 1024 * 1024
GiB = 1024 * MiB


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- small helpers -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == target:
                return True
    return False


def fusermount_lazy(path: Path) -> None:
    for tool in ("fusermount3", "fusermount"):
        if not is_mounted(path):
            return
        subprocess.run([tool, "-u", "-z", str(path)], capture_output=True, check=False)


def fresh_dir(path: Path) -> Path:
    if path.exists():
        fusermount_lazy(path)
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def spawn(cmd: Sequence[str], stderr_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen with stdout discarded and stderr to a file (closed here; the child keeps its copy)."""
    with open(stderr_path, "wb") as err:
        return subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, **kwargs)


def page_touch_us(size: int = 256 * 1024**2) -> tuple[float, float]:
    """µs per 4 KiB page to write fresh anonymous memory, and to write it again.

    A process that stores bytes (wtfs's store, rclone's cache, the FUSE page cache) takes a
    fresh page for every 4 KiB; curl into /dev/null takes none. On bare metal a fresh page
    costs a fault and zeroing; a VM whose host backs guest memory lazily and takes freed
    memory back (free page reporting) charges a host fault on top, which a daemon's CPU
    figures then carry. Printed with the machine, so ratios can be read in the light of it."""
    page = 4096
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            for offset in range(0, size, page):
                m[offset] = 1
            times.append((time.perf_counter() - started) * 1e6 / (size // page))
    return times[0], times[1]


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Cleanup:
    """A LIFO stack of undo actions that always runs (errors in one do not skip the others)."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, label: str, action: Callable[[], None]) -> Callable[[], None]:
        self._actions.append((label, action))
        return action

    def run(self, action: Callable[[], None]) -> None:
        """Run one registered action now and forget it."""
        self._actions = [(lbl, a) for lbl, a in self._actions if a is not action]
        action()

    def close(self) -> None:
        while self._actions:
            label, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # keep cleaning up
                log(f"cleanup {label}: {exc!r}")


# -- data files ----------------------------------------------------------------------------------


def ensure_random_file(path: Path, size: int) -> Path:
    """A file of `size` random bytes, reused across runs when it already has that size."""
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"writing {size / MiB:.0f} MiB of random bytes to {path.relative_to(ROOT)}")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            f.write(chunk)
            left -= len(chunk)
    tmp.rename(path)
    return path


def read_file(path: Path, block: int = 8 * MiB) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            total += len(chunk)
    return total


# -- the local Girders ---------------------------------------------------------------------------


@dataclass
class Imported:
    name: str
    path: Path  # the bytes on local disk (= Girder's assetstore file: imported in place)
    size: int
    item_id: str
    file_id: str
    collection: str
    folder: str

    @property
    def gcm_path(self) -> str:  # girder-client-mount's layout (items are directories)
        return f"collection/{self.collection}/{self.folder}/{self.name}/{self.name}"


class Girders:
    """Lazily started LocalGirders: 'data' for data-path scenarios, 'listing' for the 10k folder."""

    def __init__(self, cleanup: Cleanup) -> None:
        self.cleanup = cleanup
        self._girders: dict[str, Any] = {}
        self._imported: dict[str, dict[str, Imported]] = {}

    def get(self, role: str) -> Any:
        if role not in self._girders:
            from wtfs_devgirder.control import LocalGirder, write_secret

            workdir = fresh_dir(WORK / f"girder-{role}")
            started = time.monotonic()
            girder = LocalGirder.start(workdir)
            self.cleanup.push(f"girder {role}", girder.stop)
            log(
                f"local Girder '{role}' up at {girder.api_url} in {time.monotonic() - started:.1f}s"
            )
            write_secret(workdir / "curl-headers", f"Girder-Token: {girder.token()}\n")
            self._girders[role] = girder
        return self._girders[role]

    def stop(self, role: str) -> None:
        girder = self._girders.pop(role, None)
        if girder is not None:
            girder.stop()
        self._imported = {k: v for k, v in self._imported.items() if not k.startswith(f"{role}:")}

    def header_file(self, role: str) -> Path:
        return Path(self.get(role).workdir) / "curl-headers"

    def import_dir(self, role: str, directory: Path) -> dict[str, Imported]:
        """Import every file of `directory` (in place, no upload) into a new public folder."""
        key = f"{role}:{directory}"
        if key in self._imported:
            return self._imported[key]
        girder = self.get(role)
        client = girder.client()
        collection_name = f"bench-{directory.name}"
        collection = client.createCollection(collection_name, public=True)
        folder = client.createFolder(
            collection["_id"], directory.name, parentType="collection", public=True
        )
        store = client.get("assetstore")[0]
        started = time.monotonic()
        client.post(
            f"assetstore/{store['_id']}/import",
            parameters={
                "importPath": str(directory),
                "destinationId": folder["_id"],
                "destinationType": "folder",
                "progress": "false",
            },
        )
        result: dict[str, Imported] = {}
        for item in client.listItem(folder["_id"]):
            files = list(client.listFile(item["_id"]))
            path = directory / item["name"]
            result[item["name"]] = Imported(
                item["name"],
                path,
                path.stat().st_size,
                item["_id"],
                files[0]["_id"],
                collection_name,
                directory.name,
            )
        seconds = time.monotonic() - started
        log(f"imported {len(result)} files from {directory.name} in {seconds:.1f}s")
        self._imported[key] = result
        return result


# -- wtfs mounts ---------------------------------------------------------------------------------


@dataclass
class WtfsMount:
    mountpoint: Path
    store: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    config_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self, pattern: str = r"ERROR|WARNING|Traceback", limit: int = 20) -> list[str]:
        lines = [ln for ln in self.log_text().splitlines() if re.search(pattern, ln)]
        return lines[-limit:]

    def stop(self) -> None:
        fusermount_lazy(self.mountpoint)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        fusermount_lazy(self.mountpoint)

    def entries(self) -> list[dict[str, Any]]:
        """The store's index entries, through the index's interface."""
        from wtfs_index import open_index

        index = open_index(None, self.store)
        try:
            return [
                {"key": e.key, "source_key": e.source_key, "file_name": e.file_name,
                 "size": e.size, "present": e.present, "complete": e.complete}
                for e in index.entries()
            ]  # fmt: skip
        finally:
            index.close()


def start_wtfs(
    cleanup: Cleanup,
    girder: Any,
    name: str,
    data_set: list[dict[str, str]],
    *,
    store: Path,
    capacity: str = "16GiB",
    extra: dict[str, Any] | None = None,
    timeout: float = 120,
) -> WtfsMount:
    """`wtfs mount --foreground --ready-fd N`; waits for its answer (wtfs.daemon.ready)."""
    base = fresh_dir(WORK / "mounts" / name)
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    log_path = base / "daemon.log"
    config: dict[str, Any] = {
        "girder": {"api_url": girder.api_url, "api_key_file": str(girder.api_key_file)},
        "private_storage_path": str(store),
        "private_storage_capacity": capacity,
        "log_file": str(log_path),
    }
    for key, value in (extra or {}).items():  # a section given in `extra` adds to the base one
        base_section = config.get(key)
        config[key] = {**base_section, **value} if isinstance(base_section, dict) else value
    config_path = base / "wtfs.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    session_path = base / "session.json"
    session_path.write_text(json.dumps({"dataSet": data_set}))
    env = dict(os.environ)
    env.pop("GIRDER_API_KEY", None)
    pipe = ReadyPipe()
    process = spawn(
        [
            sys.executable,
            "-m",
            "wtfs",
            "-c",
            str(config_path),
            "mount",
            "--foreground",
            "--ready-fd",
            str(pipe.fd),
            str(session_path),
            str(mountpoint),
        ],
        base / "stderr.txt",
        env=env,
        cwd=ROOT,
        pass_fds=(pipe.fd,),
    )
    mount = WtfsMount(mountpoint, store, log_path, process, config_path)
    cleanup.push(f"wtfs mount {name}", mount.stop)
    answer = pipe.wait(timeout)
    if not answer.ready:
        cleanup.run(mount.stop)
        raise RuntimeError(f"wtfs mount {name} not ready ({answer}):\n{mount.log_text()[-3000:]}")
    return mount


# -- peers -------------------------------------------------------------------------------------


@dataclass
class PeerMount:
    name: str
    mountpoint: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stop(self) -> None:
        fusermount_lazy(self.mountpoint)
        stop_process(self.process)
        fusermount_lazy(self.mountpoint)


def _wait_for(
    path: Path, process: subprocess.Popen[bytes], timeout: float, what: str, err: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited ({process.returncode}): {err.read_text(errors='replace')[-2000:]}"
            )
        try:
            if path.exists():
                return
        except OSError:
            pass
        time.sleep(0.05)
    tail = err.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{what}: {path} did not appear in {timeout:.0f}s: {tail}")


def _ready(
    cleanup: Cleanup, mount: PeerMount, what: str, wait_for: str, timeout: float
) -> PeerMount:
    """Register a peer mount for cleanup and wait until `wait_for` shows up in it."""
    cleanup.push(f"{what} {mount.name}", mount.stop)
    try:
        _wait_for(mount.mountpoint / wait_for, mount.process, timeout, what, mount.stderr_path)
    except BaseException:
        cleanup.run(mount.stop)
        raise
    return mount


def start_gcm(
    cleanup: Cleanup, girder: Any, name: str, wait_for: str, timeout: float = 60
) -> PeerMount:
    """girder-client-mount 0.3.4 (fusepy over libfuse2), from the peers venv; key via env."""
    exe = PEERS_VENV / "bin" / "girder-client-mount"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: run bench/run (it creates the peers venv)")
    base = fresh_dir(WORK / "mounts" / name)
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    env = dict(os.environ)
    env["GIRDER_API_KEY"] = girder.api_key()  # env, never argv
    stderr_path = base / "stderr.txt"
    process = spawn(
        [str(exe), "--api-url", girder.api_url, "-f", "-q", str(mountpoint)],
        stderr_path,
        env=env,
        cwd=base,
        start_new_session=True,
    )
    mount = PeerMount(name, mountpoint, process, stderr_path)
    return _ready(cleanup, mount, "girder-client-mount", wait_for, timeout)


class RcloneServer:
    """`rclone serve http` over hard links of the data files: a Range-capable static server."""

    def __init__(self, cleanup: Cleanup, files: Sequence[Path]) -> None:
        self.root = fresh_dir(WORK / "rclone-static")
        for path in files:
            os.link(path, self.root / path.name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        err = WORK / "rclone-serve.log"
        self.process = spawn(
            [
                "rclone",
                "serve",
                "http",
                str(self.root),
                "--addr",
                f"127.0.0.1:{self.port}",
                "--read-only",
                "--no-modtime",
            ],
            err,
            start_new_session=True,
        )
        cleanup.push("rclone serve", lambda: stop_process(self.process))
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve http did not start: {err.read_text()[-2000:]}")
            time.sleep(0.05)


def start_rclone(
    cleanup: Cleanup, server: RcloneServer, name: str, wait_for: str, timeout: float = 60
) -> PeerMount:
    """`rclone mount :http:` of the static server, --vfs-cache-mode full, a fresh cache dir."""
    base = fresh_dir(WORK / "mounts" / name)
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    stderr_path = base / "stderr.txt"
    process = spawn(
        [
            "rclone",
            "mount",
            ":http:",
            str(mountpoint),
            "--http-url",
            server.url,
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(base / "cache"),
            "--read-only",
            "--dir-cache-time",
            "300s",
            "--config",
            "/dev/null",
        ],
        stderr_path,
        start_new_session=True,
    )
    mount = PeerMount(name, mountpoint, process, stderr_path)
    return _ready(cleanup, mount, "rclone mount", wait_for, timeout)


# -- measurements --------------------------------------------------------------------------------


def dd(path: Path, block: str = "1M", timeout: float = 1200) -> tuple[int, float]:
    """`dd if=path of=/dev/null bs=block`: (bytes, seconds). Raises with dd's stderr on failure."""
    started = time.perf_counter()
    result = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", f"bs={block}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"dd {path} failed: {result.stderr.strip()}")
    match = re.search(r"^(\d+) bytes", result.stderr, re.MULTILINE)
    return (int(match.group(1)) if match else 0), seconds


def curl(
    urls: Sequence[str], header_file: Path | None = None, timeout: float = 1200
) -> tuple[int, float]:
    """curl each URL to /dev/null in one process (token header from a file): (bytes, seconds)."""
    cmd = ["curl", "-s", "-S", "-f", "-w", "%{size_download}\n"]
    if header_file is not None:
        cmd += ["-H", f"@{header_file}"]
    for url in urls:
        cmd += ["-o", "/dev/null", url]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"curl failed ({result.returncode}): {result.stderr.strip()}")
    return sum(int(x) for x in result.stdout.split()), seconds


def parallel(commands: Sequence[Callable[[], tuple[int, float]]]) -> tuple[int, float]:
    """Run the callables in threads at once: (total bytes, wall seconds)."""
    results: list[tuple[int, float] | BaseException] = [(0, 0.0)] * len(commands)

    def run(i: int) -> None:
        try:
            results[i] = commands[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commands))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return sum(r[0] for r in results if isinstance(r, tuple)), seconds


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("nan")


def random_offsets(size: int, count: int, block: int, seed: int) -> list[int]:
    """`count` random offsets, each in a distinct `block`-sized block, 4 KiB from its end."""
    rng = random.Random(seed)
    blocks = rng.sample(range(size // block), count)
    return [b * block + rng.randrange(0, block - 4096) for b in blocks]


def random_reads(
    path: Path,
    size: int,
    count: int,
    block: int,
    source: Path,
    seed: int,
    parts: list[tuple[float, float]] | None = None,
) -> list[float]:
    """`count` × (open + 4 KiB pread + close) at `random_offsets(size, count, block, seed)`.

    Returns seconds per sample; every answer is checked against the source bytes. `parts`, if
    given, gets (open, pread) seconds per sample: where the time of a first byte goes.
    """
    samples = []
    with open(source, "rb") as src:
        for offset in random_offsets(size, count, block, seed):
            started = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            opened = time.perf_counter()
            try:
                data = os.pread(fd, 4096, offset)
                if parts is not None:
                    parts.append((opened - started, time.perf_counter() - opened))
            finally:
                os.close(fd)
            samples.append(time.perf_counter() - started)
            if data != os.pread(src.fileno(), 4096, offset):
                raise RuntimeError(f"{path}: wrong bytes at offset {offset}")
    return samples


def range_round_trips(
    url: str, header_file: Path, offsets: Sequence[int], source: Path, length: int = 4096
) -> list[float]:
    """One GET with `Range: bytes=o-(o+length-1)` per offset on one kept-alive HTTP connection
    (`http.client`; the token header from `header_file`): seconds per request, from sending it
    to the last byte of the body. A first, untimed request opens the connection (and checks
    that the server answers 206 and keeps it alive). Every answer is checked against `source`.
    """
    parts = urllib.parse.urlsplit(url)
    name, _, value = header_file.read_text().strip().partition(":")
    headers = {name.strip(): value.strip()}
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)

    def get(offset: int) -> bytes:
        wanted = {**headers, "Range": f"bytes={offset}-{offset + length - 1}"}
        conn.request("GET", target, headers=wanted)
        response = conn.getresponse()
        body = response.read()
        if response.status != 206 or response.will_close:
            raise RuntimeError(
                f"GET {target} Range: HTTP {response.status}, "
                f"{'closes' if response.will_close else 'keeps'} the connection"
            )
        return body

    samples = []
    try:
        with open(source, "rb") as src:
            get(0)
            for offset in offsets:
                started = time.perf_counter()
                body = get(offset)
                samples.append(time.perf_counter() - started)
                if body != os.pread(src.fileno(), length, offset):
                    raise RuntimeError(f"{url}: wrong bytes at offset {offset}")
    finally:
        conn.close()
    return samples


def extents(path: Path) -> int:
    """The file's extent count as `filefrag` reports it (ext4 splits even a freshly
    fallocated file at its block groups' metadata, ~128 MiB apart). Syncs first: delayed
    allocation places a freshly written file's blocks only at writeback."""
    os.sync()
    result = subprocess.run(["filefrag", str(path)], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+) extents? found", result.stdout)
    if not match:
        raise RuntimeError(f"filefrag {path}: {result.stdout.strip()} {result.stderr.strip()}")
    return int(match.group(1))


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) a process has used; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (/proc/stat; idle and iowait are
    not busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass
class CpuMeter:
    """CPU seconds that named processes, and the share of every core the whole machine, used
    over a `with` block: what a throughput figure cost, and whether the cores were its bound
    (a 2-core VM runs Girder, the mount and the reader at once)."""

    pids: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    busy: float = float("nan")  # of all cores, 0-1
    _start: dict[str, float | None] = field(default_factory=dict)
    _ticks: tuple[int, int] = (0, 0)

    def __enter__(self) -> CpuMeter:
        self._start = {name: _process_cpu(pid) for name, pid in self.pids.items()}
        self._ticks = _machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = _machine_ticks()
        self.busy = (busy - self._ticks[0]) / max(1, total - self._ticks[1])
        for name, pid in self.pids.items():
            before, after = self._start[name], _process_cpu(pid)
            if before is not None and after is not None:
                self.seconds[name] = after - before


def cpu_note(what: str, meters: Mapping[str, Sequence[CpuMeter]]) -> str:
    """The CPU part of a scenario's note: each tool's `cpu_summary`, per `what` (a read, a
    run), with the machine's core count that '% busy' is a share of."""
    return (
        f"CPU seconds per {what} and the share of the machine's {os.cpu_count()} cores in use "
        "while it ran (medians): "
        + "; ".join(f"{tool}: {cpu_summary(ms)}" for tool, ms in meters.items() if ms)
    )


def cpu_summary(meters: Sequence[CpuMeter]) -> str:
    """The medians of a scenario's meters, as 'daemon 0.31 s, Girder 0.42 s, cores 91 % busy'."""
    names = [name for name in meters[0].pids if all(name in m.seconds for m in meters)]
    parts = [f"{name} {median([m.seconds[name] for m in meters]):.2f} s" for name in names]
    parts.append(f"cores {median([m.busy for m in meters]) * 100:.0f} % busy")
    return ", ".join(parts)


class RssSampler:
    """VmRSS of a pid every `interval` seconds, in a thread."""

    def __init__(
        self, pid: int, interval: float = 0.5, on_sample: Callable[[], None] | None = None
    ) -> None:
        self.pid, self.interval, self.on_sample = pid, interval, on_sample
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append((time.monotonic() - started, value))
            if self.on_sample is not None:
                self.on_sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        value = rss_kib(self.pid)
        if value is not None:
            self.samples.append((self.samples[-1][0] + self.interval if self.samples else 0, value))


# -- profiles ------------------------------------------------------------------------------------


@dataclass
class Profiler:
    """`py-spy record --format raw` of daemons while a block runs; summarised by function."""

    enabled: bool
    directory: Path = field(default_factory=lambda: WORK / "profiles")
    summaries: dict[str, str] = field(default_factory=dict)

    @contextlib.contextmanager
    def record(
        self, label: str, pids: Sequence[int], rate: int = 200, idle: bool = False
    ) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        exe = Path(sys.executable).parent / "py-spy"
        if not exe.exists():
            log("py-spy not installed in .venv: no profile (pip install py-spy)")
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        procs = []
        outputs = []
        for pid in pids:
            out = self.directory / f"{label}-{pid}.txt"
            outputs.append(out)
            cmd = [
                str(exe),
                "record",
                "-p",
                str(pid),
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "--threads",
            ]
            if idle:
                cmd.append("--idle")
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(1.0)  # let py-spy attach
        try:
            yield
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            text = summarise_raw(outputs)
            self.summaries[label] = text
            (self.directory / f"{label}-summary.txt").write_text(text)
            log(f"profile {label}:\n{text}")


# Leaves that mean "waiting", although py-spy samples them as active: trio's idle worker threads
# and the event loop blocked in epoll.
_WAIT_LEAVES = ("WorkerThread._work (", "EpollIOManager.get_events (", "_epoll_wait (")
# Frames on every main-thread stack (start-up and the trio run loop): not worth listing.
_BOILERPLATE = re.compile(
    r"^(<module>|_run_module_as_main|_run_code|Command\.|Group\.|Context\.invoke|pass_context|"
    r"guarded\.|mount \(wtfs/cli|run \(trio|unrolled_run|Thread\._bootstrap|Thread\.run)"
)


def summarise_raw(paths: Sequence[Path], top: int = 15) -> str:
    """Where the daemon's main thread spends its time, from py-spy's collapsed stacks.

    Stacks come per thread (`--threads`). The header says how busy the main thread (the trio
    loop: FUSE handlers, HTTP, the cache manager) and the worker threads (index transactions,
    punch_hole, checksums) were; then the top main-thread functions by self and by inclusive time,
    as percentages of the main thread's busy samples.
    """
    main_busy: Counter[str] = Counter()
    main_incl: Counter[str] = Counter()
    worker_busy: Counter[str] = Counter()
    main_total = main_wait = worker_total = worker_wait = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            raw = stack.split(";")
            is_main = True
            if raw and raw[0].startswith("thread "):
                is_main = "MainThread" in raw[0]
                raw = raw[1:]
            frames = [f for f in (_short(x) for x in raw) if f]
            if not frames:
                continue
            waiting = frames[-1].startswith(_WAIT_LEAVES)
            if is_main:
                main_total += count
                if waiting:
                    main_wait += count
                    continue
                main_busy[frames[-1]] += count
                for f in set(frames):
                    if not _BOILERPLATE.match(f):
                        main_incl[f] += count
            else:
                worker_total += count
                if waiting:
                    worker_wait += count
                else:
                    worker_busy[frames[-1]] += count
    busy = main_total - main_wait
    if main_total == 0:
        return "(no samples)"
    lines = [
        f"main thread: {main_total} samples, busy {100 * busy / main_total:.0f} %, waiting in "
        f"epoll {100 * main_wait / main_total:.0f} %; worker threads: {worker_total} samples, "
        f"busy {100 * (worker_total - worker_wait) / max(worker_total, 1):.0f} %"
        + (f" (top: {worker_busy.most_common(1)[0][0]})" if worker_busy else ""),
        "  self% of busy main-thread samples",
    ]
    lines += [f"  {100 * c / max(busy, 1):5.1f}  {f}" for f, c in main_busy.most_common(top)]
    lines += ["  incl% of busy main-thread samples"]
    lines += [f"  {100 * c / max(busy, 1):5.1f}  {f}" for f, c in main_incl.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    match = re.match(r"(.*) \((.*?):(\d+)\)$", frame.strip())
    if not match:
        return frame.strip()
    func, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"
