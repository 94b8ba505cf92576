"""`mount -t fuse.wtfs` and fstab lines, through util-linux mount(8) itself, in a private mount
namespace (`unshare -m --propagation private`): a failure cannot leave a mount in the host's
namespace, and the install steps the README documents (a link in /sbin, a `wtfs` in
/usr/local/bin) are made on an overlay inside that namespace, so the host's /sbin and
/usr/local/bin are never touched. The namespace ends with its last process; a daemon still
serving in it is found through the store's index and stopped in teardown."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.mounts import ROOT, run_wtfs, write_config, write_session

VENV_BIN = Path(sys.executable).parent
CSV = "experiment/raw/measurements.csv"

#: Lay a writable overlay on a directory of the host, for this namespace only.
OVERLAY = """
overlay() {{
  dir=$(readlink -f "$1"); layer="{tmp}/overlay-$(basename "$dir")"
  mkdir -p "$layer" && mount -t tmpfs tmpfs "$layer" && mkdir "$layer/upper" "$layer/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
}}
"""
#: The README's install step for a virtualenv, verbatim, with the venv's bin on PATH as after
#: `. .venv/bin/activate`.
INSTALL_HELPER = 'overlay /sbin && ln -s "$(command -v mount.fuse.wtfs)" /sbin/mount.fuse.wtfs'
#: What `pip install .` as root leaves behind for mount.fuse3 to find: wtfs in /usr/local/bin.
INSTALL_SYSTEM_WTFS = 'overlay /usr/local/bin && ln -sf "$(command -v wtfs)" /usr/local/bin/wtfs'


@dataclass
class Setup:
    tmp: Path
    config: Path
    session: Path
    mountpoint: Path
    log: Path
    store: Path
    env: dict[str, str]

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`script` (sh -eu) in a new private mount namespace, with the OVERLAY function."""
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-euc",
             OVERLAY.format(tmp=self.tmp) + script],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.tmp,
        )  # fmt: skip

    def daemons(self) -> list[int]:
        """Live mount daemons of this store (in whatever namespace they serve)."""
        if not self.store.exists():
            return []
        status = run_wtfs(["-c", str(self.config), "status", "--json"], self.env, check=False)
        assert status.returncode in (0, 3), status.stderr
        return [m["pid"] for m in json.loads(status.stdout)["mounts"] if m["alive"]]


@pytest.fixture
def setup(tmp_path: Path, base_config: dict[str, Any], sample: SampleData) -> Iterator[Setup]:
    log = tmp_path / "daemon.log"
    config = write_config(tmp_path / "wtfs.yaml", {**base_config, "log_file": str(log)})
    session = write_session(tmp_path / "session.json", [
        {"itemId": sample.items[CSV], "mountPath": "/measurements.csv"},
        {"itemId": sample.folders["experiment"], "mountPath": "/experiment"},
    ])  # fmt: skip
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY" and k != "WTFS_CONFIG"}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    s = Setup(tmp_path, config, session, mountpoint, log, Path(base_config["private_storage_path"]),
              env)  # fmt: skip
    try:
        yield s
    finally:
        for pid in s.daemons():  # a test that failed before unmounting
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while s.daemons() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not s.daemons(), "a mount daemon outlived its namespace's test"
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in text, f"the daemon logged a traceback:\n{text}"


def girder_bytes(girder: LocalGirder, sample: SampleData) -> bytes:
    out = io.BytesIO()
    girder.client().downloadFile(sample.csv_file_id, out)
    return out.getvalue()


def read_back(s: Setup) -> str:
    """Inside the namespace: the mount's type and options, then the file's bytes to the host."""
    return f"""
findmnt -n -o FSTYPE,OPTIONS "{s.mountpoint}" > "{s.tmp}/findmnt"
cat "{s.mountpoint}/measurements.csv" > "{s.tmp}/read.csv"
ls "{s.mountpoint}/experiment" > "{s.tmp}/ls"
"""


def assert_read_back(s: Setup, girder: LocalGirder, sample: SampleData, *flags: str) -> None:
    fstype, options = (s.tmp / "findmnt").read_text().split()
    assert fstype == "fuse.wtfs"
    assert {"ro", "nosuid", "nodev", *flags} <= set(options.split(",")), options
    assert (s.tmp / "read.csv").read_bytes() == girder_bytes(girder, sample)
    assert (s.tmp / "ls").read_text().split() == ["README.txt", "notes", "raw"]


def test_mount_t_fuse_wtfs_with_the_helper_linked_into_sbin(
    setup: Setup, girder: LocalGirder, sample: SampleData
) -> None:
    s = setup
    result = s.run(f"""
{INSTALL_HELPER}
mount -t fuse.wtfs "{s.session}" "{s.mountpoint}" -o "config={s.config},ro,nofail,_netdev,noexec"
{read_back(s)}
umount "{s.mountpoint}"
! mountpoint -q "{s.mountpoint}"
""")
    assert result.returncode == 0, result.stderr
    assert_read_back(s, girder, sample, "noexec")
    assert result.stderr.startswith("wtfs: mounted (pid ")
    deadline = time.monotonic() + 20  # umount(8) ends the daemon: its FUSE device goes away
    while s.daemons() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not s.daemons()


def test_an_fstab_line_with_systemd_options_mounts_with_mount_T(
    setup: Setup, girder: LocalGirder, sample: SampleData
) -> None:
    s = setup
    fstab = s.tmp / "fstab"
    # The README's line; `user` makes mount(8) add noexec,nosuid,nodev, which wtfs honours.
    fstab.write_text(
        "# a comment, and another entry that must be left alone\n"
        "tmpfs /nowhere tmpfs noauto 0 0\n"
        f"{s.session} {s.mountpoint} fuse.wtfs config={s.config},_netdev,nofail,noauto,user,"
        "x-systemd.automount,x-systemd.idle-timeout=10min 0 0\n"
    )
    result = s.run(f"""
{INSTALL_HELPER}
mount -T "{fstab}" "{s.mountpoint}"
{read_back(s)}
wtfs -c "{s.config}" umount "{s.mountpoint}"
! mountpoint -q "{s.mountpoint}"
""")
    assert result.returncode == 0, result.stderr
    assert_read_back(s, girder, sample, "noexec")
    assert not s.daemons()  # wtfs umount waits for its daemon to finish


def test_without_the_link_mount_fuse3_runs_wtfs_from_usr_local_bin(
    setup: Setup, girder: LocalGirder, sample: SampleData
) -> None:
    """mount(8) falls back to mount.fuse3, which runs `wtfs SOURCE MOUNTPOINT -o OPTIONS` via
    /bin/sh with sh's default PATH (mount(8) clears PATH): a root `pip install` is enough."""
    s = setup
    result = s.run(f"""
{INSTALL_SYSTEM_WTFS}
test ! -e /sbin/mount.fuse.wtfs
mount -t fuse.wtfs "{s.session}" "{s.mountpoint}" -o "config={s.config}"
{read_back(s)}
umount "{s.mountpoint}"
""")
    assert result.returncode == 0, result.stderr
    assert_read_back(s, girder, sample)


def test_bad_options_are_one_line_exit_2_and_mount_nothing(setup: Setup) -> None:
    s = setup
    cases = {
        f"config={s.config},frobnicate": "unknown mount option 'frobnicate'",
        f"config={s.config},allow_other": "set mount.allow_other: true in the wtfs config",
        f"config={s.tmp}/missing.yaml": "config file " + str(s.tmp / "missing.yaml"),
    }
    # mount.fuse3 acts on setuid= itself, before wtfs runs: only the helper sees it.
    helper_only = {f"config={s.config},setuid=nobody": "setuid=USER is not supported"}
    for route, more in ((INSTALL_HELPER, helper_only), (INSTALL_SYSTEM_WTFS, {})):
        for options, needle in {**cases, **more}.items():
            result = s.run(f"""
{route}
rc=0; mount -t fuse.wtfs "{s.session}" "{s.mountpoint}" -o "{options}" || rc=$?
if mountpoint -q "{s.mountpoint}"; then echo "mounted anyway" >&2; fi
exit $rc
""")
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2, (route, options, result.stderr)
            assert len(lines) == 1 and lines[0].startswith("wtfs: "), result.stderr
            assert needle in lines[0], (needle, lines[0])
    assert not s.store.exists(), "a refused mount created the private store"


def test_a_session_id_source_asks_girder_for_the_session(setup: Setup) -> None:
    """`session-id:ID` is `wtfs mount --session-id ID`: Girder (with the wtfs plugin) is asked
    for the session, and an unknown one is one line, exit 2."""
    s = setup
    result = s.run(f"""
{INSTALL_HELPER}
mount -t fuse.wtfs session-id:5f0000000000000000000000 "{s.mountpoint}" -o "config={s.config}"
""")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "session 5f0000000000000000000000" in line and "Invalid session id" in line


def test_mount_f_checks_the_options_and_mounts_nothing(setup: Setup) -> None:
    s = setup
    ok = s.run(f"""
{INSTALL_HELPER}
mount -f -t fuse.wtfs "{s.session}" "{s.mountpoint}" -o "config={s.config},nofail"
! mountpoint -q "{s.mountpoint}"
""")
    assert (ok.returncode, ok.stderr) == (0, "")
    bad = s.run(f"""
{INSTALL_HELPER}
mount -f -t fuse.wtfs "{s.session}" "{s.mountpoint}" -o "config={s.config},frobnicate"
""")
    assert bad.returncode == 2 and "frobnicate" in bad.stderr
    assert not s.store.exists()


def test_the_helper_is_installed_beside_wtfs() -> None:
    helper = VENV_BIN / "mount.fuse.wtfs"
    assert os.access(helper, os.X_OK), "pip install did not create the mount.fuse.wtfs script"
    result = subprocess.run([str(helper)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("wtfs: usage: mount -t fuse.wtfs ")
