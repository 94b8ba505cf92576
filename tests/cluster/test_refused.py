"""SQLite's index cannot be shared through a network or FUSE filesystem: a mount whose store
is inside one is refused before anything is written, with one line naming `index_url`.

The FUSE filesystem is real: a tiny pyfuse3 passthrough of a temporary directory
(tests/support/passthroughfs.py), through which a file written shows in the directory below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.seed import SampleData

from tests.support.mounts import ROOT, run_wtfs, write_config, write_session


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def fuse_dir(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mountpoint, backing directory) of a passthrough FUSE filesystem."""
    backing, mnt, ready = tmp_path / "backing", tmp_path / "fuse", tmp_path / "fuse.ready"
    backing.mkdir()
    mnt.mkdir()
    log = open(tmp_path / "passthrough.log", "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.passthroughfs", str(backing), str(mnt), str(ready)],
        cwd=ROOT, stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, (tmp_path / "passthrough.log").read_text()
            assert time.monotonic() < deadline, "the passthrough filesystem did not mount"
            time.sleep(0.05)
        yield mnt, backing
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("store", ["new", "existing"])
def test_sqlite_store_inside_a_fuse_filesystem_is_refused_at_mount(
    tmp_path: Path,
    base_config: dict[str, Any],
    sample: SampleData,
    fuse_dir: tuple[Path, Path],
    store: str,
) -> None:
    mnt, backing = fuse_dir
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(mnt)], capture_output=True, text=True)
    assert fstype.stdout.strip().startswith("fuse"), fstype
    (mnt / "probe").write_text("through FUSE\n")  # a real passthrough: it lands below
    assert (backing / "probe").read_text() == "through FUSE\n"
    (mnt / "probe").unlink()
    if store == "existing":
        (mnt / "store").mkdir()
    before = tree(backing)
    config = {**base_config, "private_storage_path": str(mnt / "store")}
    config_path = write_config(tmp_path / "wtfs.yaml", config)
    session = write_session(
        tmp_path / "session.json",
        [{"itemId": sample.folders["experiment"], "mountPath": "/experiment"}],
    )
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    result = run_wtfs(  # `wtfs mount` as a user runs it: the daemon in the background
        ["-c", str(config_path), "mount", str(session), str(mountpoint)],
        env, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FUSE filesystem" in lines[0] and "index_url" in lines[0], lines[0]
    assert tree(backing) == before  # nothing written: no store, no index, no data/
    assert not os.path.ismount(mountpoint)
