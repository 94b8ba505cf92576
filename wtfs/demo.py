"""`wtfs demo`: a local Girder with sample data, mounted, read, verified against Girder, shown.

The session is created in Girder (`wtfs session create`, the wtfs server plugin's
`POST /dm/session`) and mounted by its id, the way a tale's data reaches a container.

Needs the dev Girder and the wtfs Girder plugin it loads (`pip install ./devgirder
./girder-plugin-wtfs` from a wtfs clone, or `bash scripts/demo`): neither is part of the runtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from wtfs.config import load_config
from wtfs.errors import ConfigError, WtfsError
from wtfs.status.report import gather
from wtfs.status.view import render_table

UNMOUNT_POLL = 0.1  # seconds


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_girder(api_url: str, token: str, file_id: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream(
        "GET", f"{api_url}/file/{file_id}/download", headers={"Girder-Token": token}, timeout=60
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def run_demo(workdir: Path | None, *, keep: bool = False) -> None:
    try:
        from wtfs_devgirder.control import LocalGirder
        from wtfs_devgirder.seed import seed_sample_data
    except ImportError as exc:
        raise ConfigError(
            "the demo needs the local dev Girder: pip install ./devgirder from a wtfs clone, "
            f"or run bash scripts/demo ({exc.name} missing)"
        ) from None
    if importlib.util.find_spec("girder_plugin_wtfs") is None:  # the session API is the plugin's
        raise ConfigError(
            "the demo needs the wtfs Girder plugin beside the dev Girder: "
            "pip install ./girder-plugin-wtfs from a wtfs clone, or run bash scripts/demo"
        )
    console = Console()
    started = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="wtfs-demo-")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]1. a local Girder 5 with sample data")
    girder = LocalGirder.start(workdir / "girder")
    mountpoint = workdir / "mnt"
    mounted = False
    try:
        sample = seed_sample_data(girder.client(), workdir / "girder")
        console.print(
            f"Girder at {girder.api_url}; seeded collection 'wtfs-demo' in {sample.seconds:.1f}s"
        )
        config_path, session_path = _write_files(
            workdir, girder.api_url, girder.api_key_file, sample
        )
        console.print(f"config: {config_path}\nsession: {session_path}")
        console.print(session_path.read_text())

        console.rule("[bold]2. wtfs session create, wtfs mount --session-id")
        mountpoint.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
        wtfs = [sys.executable, "-m", "wtfs", "-c", str(config_path)]
        session_id = _run([*wtfs, "session", "create", str(session_path)], env).strip()
        console.print(f"created session {session_id} in Girder (POST /dm/session)")
        _run([*wtfs, "mount", "--session-id", session_id, str(mountpoint)], env)
        mounted = True
        console.print(f"mounted session {session_id} at {mountpoint}")
        _run(["ls", "-lR", str(mountpoint / "data")], env, show=True, limit=40)

        console.rule("[bold]3. read files and check their sha256 against Girder")
        token = girder.token()
        checks = [
            ("data/experiment/README.txt", sample.files["experiment/README.txt/README.txt"]),
            ("data/experiment/raw/measurements.csv", sample.csv_file_id),
            ("data/experiment/notes/résumé des données.txt", sample.unicode_file_id),
            (
                "data/experiment/raw/scan-001/scan-001.raw",
                sample.files["experiment/raw/scan-001/scan-001.raw"],
            ),
            ("noise-64MiB.bin", sample.big_file_id),
        ]
        failures = 0
        for rel, file_id in checks:
            for attempt in ("cold", "warm"):
                t0 = time.monotonic()
                got = _sha256_file(mountpoint / rel)
                seconds = time.monotonic() - t0
                size = (mountpoint / rel).stat().st_size
                rate = f"{size / seconds / 1e6:8.1f} MB/s" if size > 1e6 else ""
                if attempt == "cold":
                    want = _sha256_girder(girder.api_url, token, file_id)
                ok = got == want
                failures += not ok
                mark = "[green]OK[/green]" if ok else "[red]MISMATCH[/red]"
                console.print(
                    f"{mark} {attempt:4} {rel:48} {size:>10} B {seconds * 1000:7.1f} ms {rate}"
                )
        head = (mountpoint / "data/experiment/raw/measurements.csv").read_text().splitlines()[:3]
        console.print("measurements.csv starts with:", *head, sep="\n  ")

        console.rule("[bold]4. wtfs status")
        config = load_config(config_path, env)
        render_table(gather(config, discard_old=False), console)
        if failures:
            raise WtfsError(f"demo: {failures} sha256 checks failed")
        console.print(f"[bold green]all {2 * len(checks)} sha256 checks passed[/bold green]")
    finally:
        if mounted and not keep:
            console.rule("[bold]5. unmount and stop")
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
            _wait_unmounted(mountpoint)
        if not keep:
            girder.stop()
        console.print(f"demo finished in {time.monotonic() - started:.1f}s (workdir {workdir})")


def _write_files(workdir: Path, api_url: str, key_file: Path, sample: Any) -> tuple[Path, Path]:
    config_path = workdir / "wtfs.yaml"
    config_path.write_text(
        "# written by `wtfs demo`\n"
        f"girder:\n  api_url: {api_url}\n  api_key_file: {key_file}\n"
        f"private_storage_path: {workdir / 'store'}\n"
        "private_storage_capacity: 1GiB\n"
        "gc_run_interval: 30\n"
    )
    session_path = workdir / "session.yaml"
    data_set = [
        {"itemId": sample.folders["experiment"], "mountPath": "/data/experiment"},
        {"itemId": sample.items["experiment/raw/noise-64MiB.bin"], "mountPath": "/noise-64MiB.bin"},
    ]
    session_path.write_text(json.dumps({"dataSet": data_set}, indent=2) + "\n")
    return config_path, session_path


def _run(argv: list[str], env: dict[str, str], *, show: bool = False, limit: int = 0) -> str:
    """Run ``argv``; its stdout (also printed, cut to ``limit`` lines, with ``show``)."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise WtfsError(f"{argv[0]} failed: {result.stderr.strip()}")
    if show:
        lines = result.stdout.splitlines()
        print("\n".join(lines[:limit] if limit else lines))
    return result.stdout


def _wait_unmounted(mountpoint: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while os.path.ismount(mountpoint) and time.monotonic() < deadline:
        time.sleep(UNMOUNT_POLL)
