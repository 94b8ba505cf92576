"""wtfs mounts as containers see them: a process in another mount namespace reads the mount
through a bind, as an unprivileged uid (what `docker run -v HOST_MNT:/data:ro,rslave` gives a
notebook), and a mount made or re-made after the container started reaches it only through a
slave bind of a shared host directory.

A "container" here is `unshare --mount` running one `sh`: every bind it makes lives in its own
namespace and dies with it. The notebook user is uid/gid 1000 (`setpriv`, no supplementary
groups); it needs no passwd entry.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.seed import SampleData

from tests.support.mounts import ROOT, mounted, write_config, write_session
from wtfs.daemon.ready import ReadyPipe

NOTEBOOK = 1000
AS_NOTEBOOK = f"setpriv --reuid={NOTEBOOK} --regid={NOTEBOOK} --clear-groups"
AS_OTHER = f"setpriv --reuid={NOTEBOOK + 1} --regid={NOTEBOOK + 1} --clear-groups"
CSV = "experiment/raw/measurements.csv"
CSV_KEY = "experiment/raw/measurements.csv/measurements.csv"
DENIED = "Permission denied"
GONE = "No such file or directory"
DEAD = "Transport endpoint is not connected"


def experiment(sample: SampleData) -> list[dict[str, str]]:
    return [{"itemId": sample.folders["experiment"], "mountPath": "/experiment"}]


def shared_with_notebook(config: dict[str, Any], **mount: Any) -> dict[str, Any]:
    return {**config, "mount": {"allow_other": True, "uid": NOTEBOOK, "gid": NOTEBOOK, **mount}}


def mount_table() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def world() -> Iterator[Path]:
    """A 0755 directory outside pytest's 0700 tree, so uid 1000 can walk to the binds in it."""
    root = Path(tempfile.mkdtemp(prefix="wtfs-ctr-"))
    root.chmod(0o755)
    for sub in ("data", "host", "host/wtfs", "side"):
        (root / sub).mkdir()
        (root / sub).chmod(0o755)
    try:
        yield root
    finally:
        leftovers = [line for line in mount_table().splitlines() if str(root) in line]
        for sub in ("data", "host"):
            if os.path.ismount(root / sub):
                subprocess.run(["umount", "--lazy", str(root / sub)], check=False)
        if not leftovers:
            shutil.rmtree(root)  # nothing is mounted in it: rmtree cannot reach a mount
        assert not leftovers, f"mounts left behind under {root}:\n" + "\n".join(leftovers)


def in_container(
    script: str, env: dict[str, str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new, private mount namespace that ends with it."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bind_and_read(reader: str, extra: str = "") -> str:
    """The container script: bind the mount to $CTR/data, then read the CSV as ``reader``."""
    return f"""
        mount --bind "$MNT" "$CTR/data"
        echo bound
        {extra}
        {reader} sha256sum "$CTR/data/{CSV}"
    """


def env_of(mnt: Path, world: Path) -> dict[str, str]:
    return {"MNT": str(mnt), "CTR": str(world)}


def test_notebook_uid_in_another_namespace_reads_through_a_bind_with_allow_other(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    with mounted(tmp_path, shared_with_notebook(base_config), experiment(sample)) as m:
        stat = f'{AS_NOTEBOOK} stat -c "%u:%g %a %n" "$CTR/data/experiment" "$CTR/data/{CSV}"'
        result = in_container(bind_and_read(AS_NOTEBOOK, stat), env_of(m.mountpoint, world))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "bound"
        assert lines[1] == f"1000:1000 555 {world}/data/experiment"
        assert lines[2] == f"1000:1000 444 {world}/data/{CSV}"
        assert lines[3].split()[0] == sample.sha256[CSV_KEY]
        # The bind lived in the container's namespace only.
        assert not os.path.ismount(world / "data")
        assert str(world / "data") not in mount_table()


def test_without_allow_other_the_notebook_uid_is_refused_through_the_bind(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    config = {**base_config, "mount": {"allow_other": False, "uid": NOTEBOOK, "gid": NOTEBOOK}}
    with mounted(tmp_path, config, experiment(sample)) as m:
        listing = f'{AS_NOTEBOOK} ls "$CTR/data" || true'
        result = in_container(bind_and_read(AS_NOTEBOOK, listing), env_of(m.mountpoint, world))
        assert result.stdout.splitlines() == ["bound"]
        assert result.returncode != 0
        # Even the mount's root is refused: FUSE checks the caller before any permission bits
        # (the files claim to be uid 1000's, and 0444).
        assert f"ls: cannot access '{world}/data': {DENIED}" in result.stderr
        assert f"{world}/data/{CSV}: {DENIED}" in result.stderr


def test_root_in_another_namespace_reads_a_mount_without_allow_other(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    # FUSE's check is "same uid as the mounter, in the same user namespace": mount namespaces
    # play no part, so root (the mounter here) reads through the bind.
    with mounted(tmp_path, base_config, experiment(sample)) as m:
        result = in_container(bind_and_read(""), env_of(m.mountpoint, world))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].split()[0] == sample.sha256[CSV_KEY]


@pytest.mark.parametrize("allow_other", [False, True])
def test_root_of_a_user_namespace_is_not_the_mounter(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path, allow_other: bool
) -> None:
    # A rootless or userns-remapped container: uid 0 inside is uid 1000 outside.
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOTEBOOK}", f"--regid={NOTEBOOK}", "--clear-groups",
         "unshare", "--user", "--map-root-user", "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.fail(f"no unprivileged user namespaces here: {probe.stderr.strip()}")
    config = shared_with_notebook(base_config, allow_other=allow_other)
    as_container_root = f"{AS_NOTEBOOK} unshare --user --map-root-user"
    stat = f'{as_container_root} stat -c "%u:%g" "$CTR/data/{CSV}" || true'
    with mounted(tmp_path, config, experiment(sample)) as m:
        result = in_container(
            bind_and_read(as_container_root, stat),
            env_of(m.mountpoint, world),
        )
    if allow_other:
        assert result.returncode == 0, result.stderr
        # Files shown as uid 1000 belong to the container's root.
        assert result.stdout.splitlines()[1:] == [
            "0:0",
            f"{sample.sha256[CSV_KEY]}  {world}/data/{CSV}",
        ]
    else:
        assert result.returncode != 0
        assert f"{world}/data/{CSV}: {DENIED}" in result.stderr


def test_umask_077_lets_only_the_owner_uid_read(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    config = shared_with_notebook(base_config, umask="0o077")
    with mounted(tmp_path, config, experiment(sample)) as m:
        others = f'{AS_OTHER} sha256sum "$CTR/data/{CSV}" || echo "uid 1001 refused"'
        stat = f'stat -c "%u:%g %a" "$CTR/data/experiment" "$CTR/data/{CSV}"'
        result = in_container(
            bind_and_read(AS_NOTEBOOK, f"{stat}\n{others}"),
            env_of(m.mountpoint, world),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1:] == [
            "1000:1000 500",
            "1000:1000 400",
            "uid 1001 refused",
            f"{sample.sha256[CSV_KEY]}  {world}/data/{CSV}",
        ]
        assert f"{world}/data/{CSV}: {DENIED}" in result.stderr


def test_default_umask_lets_any_uid_read_with_allow_other(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    with mounted(tmp_path, shared_with_notebook(base_config), experiment(sample)) as m:
        result = in_container(bind_and_read(AS_OTHER), env_of(m.mountpoint, world))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].split()[0] == sample.sha256[CSV_KEY]


# --- a mount made after the container started ---------------------------------------------------


@contextmanager
def host_directory(path: Path, propagation: str) -> Iterator[Path]:
    """``path`` made a mount of its own with ``propagation`` (shared or private), undone after.

    On systemd hosts / is already shared, so any directory under it is; here / is private, so
    the recipe makes the directory a shared mount first."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", f"--make-{propagation}", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


class Container:
    """`unshare --mount --propagation slave` holding ``source`` bound at ``$CTR/data`` with the
    given propagation, as `docker run -v SOURCE:/data:ro,rslave` (or the default `rprivate`)
    does. On each `read()` it reads ``$CTR/data/FILE`` as the notebook uid and answers what it
    got: the sha256 line, or the error."""

    SCRIPT = f"""
        mount --rbind "$SOURCE" "$CTR/data"
        mount --make-r$BIND "$CTR/data"
        echo ready
        while read -r _; do
            {AS_NOTEBOOK} sha256sum "$CTR/data/$FILE" 2>&1 || true
            echo .
        done
    """

    def __init__(self, source: Path, world: Path, bind: str, file: str) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        env = {"SOURCE": str(source), "CTR": str(world), "BIND": bind, "FILE": file}
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-euc", self.SCRIPT],
            env={**os.environ, **env},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._pump, daemon=True).start()
        first = self._line()
        assert first == "ready", first

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<exited>")

    def _line(self) -> str:
        try:
            return self.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError("the container did not answer within 30 s") from None

    def read(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        answer = []
        while (line := self._line()) not in (".", "<exited>"):
            answer.append(line)
        return "\n".join(answer)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def container(
    source: Path, world: Path, bind: str, file: str = f"wtfs/{CSV}"
) -> Iterator[Container]:
    c = Container(source, world, bind, file)
    try:
        yield c
    finally:
        c.close()


def test_rslave_container_sees_a_mount_made_and_remade_after_it_started(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    config, want = shared_with_notebook(base_config), sample.sha256[CSV_KEY]
    mnt = world / "host/wtfs"
    with host_directory(world / "host", "shared") as host, container(host, world, "slave") as c:
        assert GONE in c.read()  # nothing mounted yet
        with mounted(tmp_path / "first", config, experiment(sample), mountpoint=mnt) as m:
            assert c.read().split()[0] == want
            m.wtfs("umount", str(mnt))
            assert m.process.wait(timeout=20) == 0
            assert GONE in c.read()  # the unmount reached the container too
        with mounted(tmp_path / "again", config, experiment(sample), mountpoint=mnt):
            assert c.read().split()[0] == want


def test_rslave_bind_of_a_private_host_directory_misses_a_later_mount(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    mnt = world / "host/wtfs"
    with host_directory(world / "host", "private") as host, container(host, world, "slave") as c:
        config = shared_with_notebook(base_config)
        with mounted(tmp_path, config, experiment(sample), mountpoint=mnt):
            assert os.path.ismount(mnt)
            assert GONE in c.read()


@pytest.mark.parametrize(
    ("source", "bind"),
    [("parent", "private"), ("mountpoint", "slave")],
    ids=["rprivate-bind-of-the-parent", "rslave-bind-of-the-mountpoint-itself"],
)
def test_container_holding_a_copy_of_the_mount_goes_stale_when_wtfs_is_remade(
    tmp_path: Path,
    base_config: dict[str, Any],
    sample: SampleData,
    world: Path,
    source: str,
    bind: str,
) -> None:
    # Docker's default (rprivate), or any bind of the FUSE mountpoint itself, copies the mount
    # into the container. `wtfs umount` on the host stops the daemon, so every copy dies with it
    # (ENOTCONN), and a new mount never shows in the container: it needs rslave on a parent.
    config, want = shared_with_notebook(base_config), sample.sha256[CSV_KEY]
    mnt = world / "host/wtfs"
    with (
        host_directory(world / "host", "shared") as host,
        mounted(tmp_path / "first", config, experiment(sample), mountpoint=mnt) as m,
        container(
            host if source == "parent" else mnt,
            world,
            bind,
            f"wtfs/{CSV}" if source == "parent" else CSV,
        ) as c,
    ):
        assert c.read().split()[0] == want
        m.wtfs("umount", str(mnt))
        assert not os.path.ismount(mnt)
        assert m.process.wait(timeout=20) == 0  # the daemon is gone, not serving the copy
        assert DEAD in c.read()
        with mounted(tmp_path / "again", config, experiment(sample), mountpoint=mnt):
            assert DEAD in c.read()


# --- a wtfs sidecar container -------------------------------------------------------------------


@contextmanager
def sidecar(
    workdir: Path, config: dict[str, Any], data_set: list[dict[str, str]], host: Path, side: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`wtfs mount --foreground` in a container of its own that binds ``host`` at ``side`` with
    rshared propagation (docker-compose.example.yml's `wtfs` service): it mounts at
    ``side/wtfs``, and the mount travels back to the host's ``host/wtfs``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "sidecar.log"
    config_path = write_config(workdir / "wtfs.yaml", {**config, "log_file": str(log)})
    session_path = write_session(workdir / "session.json", data_set)
    pipe = ReadyPipe()  # `wtfs mount` answers on it (wtfs.daemon.ready) from inside the script
    # `--propagation unchanged`: the namespace's copy of the shared host directory stays a peer
    # of it (as runc leaves it when a bind asks for rshared), so mounts go both ways.
    script = f"""
        mount --rbind "$HOST" "$SIDE"
        mount --make-rshared "$SIDE"
        exec {sys.executable} -m wtfs -c {config_path} mount --foreground \
            --ready-fd {pipe.fd} {session_path} "$SIDE/wtfs"
    """
    env = {k: v for k, v in os.environ.items() if k != "GIRDER_API_KEY"}
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "unchanged", "sh", "-euc", script],
        env={**env, "HOST": str(host), "SIDE": str(side)},
        cwd=ROOT, pass_fds=(pipe.fd,),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        answer = pipe.wait(60)
        assert answer.ready, f"the sidecar did not mount ({answer}):\n{log.read_text()}"
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if os.path.ismount(host / "wtfs"):  # a killed sidecar leaves a dead endpoint behind
            subprocess.run(["umount", "--lazy", str(host / "wtfs")], check=False)
        text = log.read_text() if log.exists() else ""
        assert "Traceback" not in text, f"the sidecar logged a traceback:\n{text}"


def test_sidecar_mount_reaches_a_notebook_through_rshared_then_rslave(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, world: Path
) -> None:
    config, want = shared_with_notebook(base_config), sample.sha256[CSV_KEY]
    with host_directory(world / "host", "shared") as host, container(host, world, "slave") as c:
        assert GONE in c.read()
        with sidecar(tmp_path / "one", config, experiment(sample), host, world / "side") as side:
            assert os.path.ismount(host / "wtfs")  # back on the host, through rshared
            assert c.read().split()[0] == want  # and on to the notebook, through rslave
            side.send_signal(signal.SIGTERM)  # `docker stop`
            assert side.wait(timeout=20) == 0
            assert not os.path.ismount(host / "wtfs")
            assert GONE in c.read()
        with sidecar(tmp_path / "two", config, experiment(sample), host, world / "side"):
            assert c.read().split()[0] == want
