"""`wtfs prefetch` on real mounts of the real dev Girder, and over the store without a mount:
every file asked for ends complete in the store and is then read with no download (counted at
the server); a path inside a mount is a subtree of it, not a session file; it stops at the GC
start mark rather than evict (exit 3, with the cause); a failed transfer is exit 3 with its
cause; Ctrl-C cancels (exit 130), leaves no claim behind, and a second run fetches only what
is missing; `wtfs status` shows the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import MiB
from tests.support.index import store_index
from tests.support.mounts import ROOT, mounted, run_wtfs, write_config, write_session
from tests.support.nodes import wait_until
from tests.support.uploads import public_folder, subfolder, upload


@dataclass(frozen=True)
class Tree:
    folder: str
    contents: dict[str, bytes]  # path under the folder → bytes

    @property
    def total(self) -> int:
        return sum(len(c) for c in self.contents.values())


@pytest.fixture(scope="module")
def tree(girder: LocalGirder) -> Tree:
    """f/a.bin (1 MiB + 17), f/sub/b.bin (5 MiB + 3), f/sub/c.txt (100 B), uploaded."""
    folder = public_folder(girder, "prefetch")
    sub = subfolder(girder, folder, "sub")
    contents = {"a.bin": os.urandom(MiB + 17), "sub/b.bin": os.urandom(5 * MiB + 3),
                "sub/c.txt": os.urandom(100)}  # fmt: skip
    for path, data in contents.items():
        upload(girder, sub if path.startswith("sub/") else folder, path.rpartition("/")[2], data)
    return Tree(folder, contents)


@pytest.fixture
def unthrottled(girder: LocalGirder) -> Iterator[None]:
    yield
    girder.throttle(None)


def interruptible() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A suite started in the background
    (`nohup`, `cmd &` in a script) passes SIGINT on ignored, and Python then installs no
    KeyboardInterrupt for it: the Ctrl-C tests saw a prefetch run to its end (exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cached(config: dict[str, Any]) -> dict[str, tuple[bool, int]]:
    """Path (in the session) → (complete, bytes present) of every entry in the store."""
    index = store_index(config)
    try:
        return {e.path: (e.complete, e.present) for e in index.entries()}
    finally:
        index.close()


def downloaded(girder: LocalGirder) -> int:
    return int(girder.stats()["download_bytes"])


def test_a_prefetch_of_a_mount_caches_every_file_and_reads_then_download_nothing(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree
) -> None:
    with mounted(tmp_path, base_config, [{"itemId": tree.folder, "mountPath": "/f"}]) as m:
        girder.reset_stats()
        result = m.wtfs("prefetch", str(m.mountpoint))
        assert f"3/3 files cached ({tree.total / MiB:.1f} MiB" in result.stdout, result.stdout
        assert "done" in result.stdout
        assert downloaded(girder) == tree.total
        assert cached(base_config) == {f"/f/{p}": (True, len(c)) for p, c in tree.contents.items()}
        girder.reset_stats()
        for path, content in tree.contents.items():
            assert (m.mountpoint / "f" / path).read_bytes() == content
        assert downloaded(girder) == 0
        # Run again: everything is there, nothing is fetched.
        again = json.loads(m.wtfs("prefetch", "--json", str(m.mountpoint)).stdout)
        assert again["state"] == "done" and again["bytes"]["fetched"] == 0
        assert again["files"] == {"total": 3, "done": 3, "failed": 0}
        assert downloaded(girder) == 0
        [record] = [p for p in m.status()["prefetches"] if p["_id"] == again["_id"]]
        assert record["state"] == "done" and record["mountpoint"] == str(m.mountpoint)


def test_a_path_inside_the_mount_is_a_subtree_not_a_session_file(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree
) -> None:
    with mounted(tmp_path, base_config, [{"itemId": tree.folder, "mountPath": "/f"}]) as m:
        result = m.wtfs("prefetch", "--json", str(m.mountpoint / "f" / "sub"))
        record = json.loads(result.stdout)
        assert record["paths"] == ["/f/sub"] and record["files"]["total"] == 2
        assert set(cached(base_config)) == {"/f/sub/b.bin", "/f/sub/c.txt"}
        # A file of the mount, and more PATHs relative to the mount's root.
        m.wtfs("prefetch", str(m.mountpoint / "f" / "a.bin"), "f/sub/c.txt")
        assert all(complete for complete, _ in cached(base_config).values())
        missing = m.wtfs("prefetch", str(m.mountpoint / "f" / "nope"), check=False)
        assert missing.returncode == 3
        assert "/f/nope: no such file or directory in the session" in missing.stderr
        # A config naming another store knows no daemon of this mount: one line, exit 2.
        other = {**base_config, "private_storage_path": str(tmp_path / "other-store")}
        run_wtfs(["-c", str(write_config(tmp_path / "other.yaml", other)), "gc"], m.env)
        refused = run_wtfs(["-c", str(tmp_path / "other.yaml"), "prefetch", str(m.mountpoint)],
                           m.env, check=False)  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert "no running wtfs daemon of this store serves it" in refused.stderr


def test_a_prefetch_without_a_mount_fills_the_store_a_later_mount_reads(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree
) -> None:
    config = write_config(tmp_path / "wtfs.yaml", base_config)
    session = write_session(tmp_path / "s.json", [{"itemId": tree.folder, "mountPath": "/f"}])
    girder.reset_stats()
    result = run_wtfs(["-c", str(config), "prefetch", "--json", str(session)], {**os.environ})
    record = json.loads(result.stdout)
    assert record["state"] == "done" and record["mountpoint"] is None
    assert record["bytes"] == {"total": tree.total, "done": tree.total, "fetched": tree.total}
    assert downloaded(girder) == tree.total
    index = store_index(base_config)
    try:  # it left no owner, lock or claim behind
        assert index.claims() == [] and index.lock_total() == 0
        assert [o.kind for o in index.owners(index_owner())] == []
    finally:
        index.close()
    girder.reset_stats()
    with mounted(tmp_path / "m", base_config, [{"itemId": tree.folder, "mountPath": "/f"}]) as m:
        for path, content in tree.contents.items():
            assert (m.mountpoint / "f" / path).read_bytes() == content
    assert downloaded(girder) == 0
    bad = run_wtfs(["-c", str(config), "prefetch", str(tmp_path / "no-such")], {}, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "neither a session file nor a path in a wtfs mount" in bad.stderr


def index_owner() -> Any:
    from wtfs_index import Owner

    return Owner.current("test")


def test_a_prefetch_stops_at_the_gc_start_mark_rather_than_evict(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree
) -> None:
    # 4 MiB of capacity, 1 MiB blocks: the GC would start at 3.6 MiB; b.bin does not fit under.
    settings = {**base_config, "private_storage_capacity": 4 * MiB, "block_size": "1MiB"}
    config = write_config(tmp_path / "wtfs.yaml", settings)
    session = write_session(tmp_path / "s.json", [{"itemId": tree.folder, "mountPath": "/f"}])
    result = run_wtfs(["-c", str(config), "prefetch", str(session)], {}, check=False)
    assert result.returncode == 3, result.stderr
    assert "stopped at the GC start mark" in result.stderr
    assert "a prefetch evicts no other cached files" in result.stderr
    index = store_index(settings)
    try:
        assert index.evictions(10) == []
        assert index.usage() <= int(4 * MiB * 0.9)
    finally:
        index.close()
    assert cached(settings)["/f/a.bin"] == (True, MiB + 17)


def test_a_failed_transfer_is_exit_3_with_its_cause(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree
) -> None:
    client = girder.client()
    item = client.createItem(public_folder(girder, "broken"), "broken.bin")
    client.addMetadataToItem(item["_id"], {"phys_path": "nosuch://host/x", "size": 100})
    data_set = [{"itemId": item["_id"], "mountPath": "/broken.bin"},
                {"itemId": tree.folder, "mountPath": "/f"}]  # fmt: skip
    with mounted(tmp_path, base_config, data_set) as m:
        result = m.wtfs("prefetch", str(m.mountpoint), check=False)
        assert result.returncode == 3
        assert "\n  /broken.bin: broken.bin: no provider for URL scheme 'nosuch'" in result.stderr
        assert "1 of 4 files failed" in result.stderr
        assert all(c for p, (c, _) in cached(base_config).items() if p.startswith("/f/"))


def test_ctrl_c_cancels_and_a_second_run_fetches_only_what_is_missing(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree, unthrottled: None
) -> None:
    settings = {**base_config, "block_size": "1MiB"}
    with mounted(tmp_path, settings, [{"itemId": tree.folder, "mountPath": "/f"}]) as m:
        # b.bin takes 20 s: Ctrl-C comes in the middle of it, whatever the two `wtfs status`
        # calls below cost (at 1 MiB/s a full CI run once saw the prefetch end before Ctrl-C).
        girder.throttle(256 * 1024)
        run = subprocess.Popen(
            [sys.executable, "-m", "wtfs", "-c", str(m.config_path), "prefetch", str(m.mountpoint)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=m.env, cwd=ROOT,
            preexec_fn=interruptible,
        )  # fmt: skip
        try:

            def fetched_past_a() -> bool:
                running = [p for p in m.status()["prefetches"] if p["state"] == "running"]
                return bool(running) and running[0]["bytes"]["fetched"] > MiB + 17

            wait_until(fetched_past_a, timeout=60)
            plain = m.wtfs("status").stdout
            assert "prefetches" in plain.splitlines()
            [row] = [line for line in plain.splitlines() if " running " in line]
            assert str(m.mountpoint) in row and "/s" in row  # where, and its rate
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 130, err
        assert "cancelled; run it again to resume" in err
        index = store_index(settings)
        try:
            assert index.claims() == []
            [record] = index.prefetches()
            assert record.state == "cancelled"
        finally:
            index.close()
        before = cached(settings)
        assert before["/f/a.bin"] == (True, MiB + 17)
        present = sum(p for _, p in before.values())
        assert MiB + 17 < present < tree.total
        girder.throttle(None)
        girder.reset_stats()
        again = json.loads(m.wtfs("prefetch", "--json", str(m.mountpoint)).stdout)
        assert again["state"] == "done"
        assert again["bytes"]["fetched"] == tree.total - present == downloaded(girder)
        for path, content in tree.contents.items():
            assert (m.mountpoint / "f" / path).read_bytes() == content


def test_ctrl_c_of_a_prefetch_without_a_mount_leaves_nothing_behind(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree, unthrottled: None
) -> None:
    settings = {**base_config, "block_size": "1MiB"}
    config = write_config(tmp_path / "wtfs.yaml", settings)
    session = write_session(tmp_path / "s.json", [{"itemId": tree.folder, "mountPath": "/f"}])
    index_file = Path(settings["private_storage_path"]) / "index.sqlite3"
    girder.throttle(MiB)
    run = subprocess.Popen(
        [sys.executable, "-m", "wtfs", "-c", str(config), "prefetch", str(session)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=interruptible,
    )  # fmt: skip
    try:

        def past_a() -> bool:
            if not index_file.exists():
                return False
            index = store_index(settings)
            try:
                return any(p.bytes_fetched > MiB + 17 for p in index.prefetches())
            finally:
                index.close()

        wait_until(past_a, timeout=60)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert "cancelled" in out and "run it again to resume" in err
    index = store_index(settings)
    try:
        assert index.claims() == [] and index.lock_total() == 0
        assert index.owners(index_owner()) == []  # unregistered
        assert [p.state for p in index.prefetches()] == ["cancelled"]
    finally:
        index.close()
    present = sum(p for _, p in cached(settings).values())
    assert MiB + 17 <= present < tree.total
    girder.throttle(None)
    girder.reset_stats()
    again = json.loads(run_wtfs(["-c", str(config), "prefetch", "--json", str(session)], {}).stdout)
    assert again["state"] == "done"
    assert again["bytes"]["fetched"] == tree.total - present == downloaded(girder)


def test_a_prefetch_in_a_mount_over_a_postgresql_index(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, tree: Tree, postgres_url: str
) -> None:
    """The cluster's backend: the request, its claim by the daemon and the progress go through
    PostgreSQL as they do through SQLite."""
    config = {**base_config, "index_url": postgres_url}
    with mounted(tmp_path, config, [{"itemId": tree.folder, "mountPath": "/f"}]) as m:
        record = json.loads(m.wtfs("prefetch", "--json", str(m.mountpoint / "f" / "sub")).stdout)
        assert record["state"] == "done" and record["files"]["done"] == 2
        assert cached(config) == {"/f/sub/b.bin": (True, 5 * MiB + 3), "/f/sub/c.txt": (True, 100)}
        [listed] = m.status()["prefetches"]
        assert listed["_id"] == record["_id"] and listed["state"] == "done"
