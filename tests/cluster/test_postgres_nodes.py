"""A cluster: nodes sharing one store directory and one PostgreSQL index (tests/support/nodes.py
plays each node in namespaces of its own). Downloads are counted at the Girder server.

- node B reads a file node A fetched: right bytes, no download;
- claims in flight count across nodes: B reading a file A is fetching waits for A's blocks
  rather than fetching them again;
- node A frozen (SIGSTOP) past its lease, while B evicts its file and fetches it again under
  pressure, then thawed: A registers again and serves no wrong byte;
- PostgreSQL stopped during reads and started again: complete cached files are still served, a
  fetch that needs the index fails at the read deadline with a cause naming the index, and work
  resumes once it is back;
- `wtfs status` on any node (and on the host) lists every node's mounts, locks and transfers.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder

from tests.cluster.conftest import node_config, session_of
from tests.cluster.test_two_nodes import current_entry
from tests.support.bigdata import BigFile, MiB
from tests.support.index import store_index
from tests.support.mounts import drop_page_cache, run_wtfs, write_config
from tests.support.nodes import Cluster, wait_until
from tests.support.postgres import PostgresServer

BLOCK = 4 * MiB


@pytest.fixture
def config(base_config: dict[str, Any], postgres_url: str) -> dict[str, Any]:
    return node_config(base_config, index_url=postgres_url)


def test_node_b_reads_what_node_a_fetched_without_a_download(
    config: dict[str, Any], files: dict[str, BigFile], cluster: Cluster, girder: LocalGirder
) -> None:
    f = files["f0.bin"]
    a = cluster.node("node-a", config, session_of(f))
    b = cluster.node("node-b", config, session_of(f))
    girder.reset_stats()
    assert a.sha256(f.name) == f.sha256
    assert girder.stats()["download_bytes"] == f.size
    girder.reset_stats()
    assert b.sha256(f.name) == f.sha256
    stats = girder.stats()
    assert (stats["downloads"], stats["download_bytes"]) == (0, 0)


def test_node_b_waits_for_the_blocks_node_a_is_fetching(
    config: dict[str, Any], files: dict[str, BigFile], cluster: Cluster, girder: LocalGirder
) -> None:
    f = files["stream.bin"]  # 32 MiB: 8 blocks, about 4 s at 8 MiB/s
    a = cluster.node("node-a", config, session_of(f))
    b = cluster.node("node-b", config, session_of(f))
    girder.reset_stats()
    girder.throttle(8 * MiB)
    try:
        first = a.submit("sha256", path=a.path(f.name))
        wait_until(lambda: girder.stats()["download_bytes"] >= MiB, timeout=30)
        second = b.submit("sha256", path=b.path(f.name))
        answers = [first.result(timeout=120), second.result(timeout=120)]
    finally:
        girder.throttle(None)
    assert [answer.get("sha256") for answer in answers] == [f.sha256, f.sha256], answers
    stats = girder.stats()
    print(f"\n{f.size / MiB:.0f} MiB read by two nodes at once: {stats['downloads']} downloads, "
          f"{stats['download_bytes'] / MiB:.2f} MiB sent by Girder")  # fmt: skip
    # Each block came once: B either waited for A's claim or fetched blocks A had not reached
    # (and A then waited for B's). A run that stopped at another's claim may have been sent a
    # little more than it kept (what was in flight when it stopped): less than a block each.
    assert stats["download_bytes"] < f.size + BLOCK


def test_a_frozen_node_registers_again_and_serves_no_wrong_byte(
    config: dict[str, Any], files: dict[str, BigFile], cluster: Cluster
) -> None:
    config = {**config, "private_storage_capacity": 32 * MiB}
    lease = float(config["lease"])
    held = files["held.bin"]
    others = [files[f"f{n}.bin"] for n in range(8)]
    data = session_of(held, *others)
    a = cluster.node("node-a", config, data)
    b = cluster.node("node-b", config, data)
    handle = a.open(held.name)
    assert a.pread(handle, 0, held.size).sha256 == held.sha256
    index = store_index(config)
    try:
        before = current_entry(index, held.item_id)
        a.freeze()
        frozen = time.monotonic()
        wait_until(lambda: index.lock_count(held.item_id) == 0, timeout=10 * lease)
        reclaimed = time.monotonic() - frozen
        # Meanwhile B reads past the capacity: A's file goes, and comes again as a new file.
        for f in others[:4]:
            assert b.sha256(f.name) == f.sha256
        assert current_entry(index, held.item_id) is None or (
            current_entry(index, held.item_id).file_name != before.file_name
        )
        assert b.sha256(held.name) == held.sha256
        refetched = current_entry(index, held.item_id)
        assert refetched is not None and refetched.file_name != before.file_name
        frozen_for = time.monotonic() - frozen
        a.thaw()
        drop_page_cache()  # A's reads reach its daemon, not the page cache
        read_by_b: dict[str, str] = {}

        def more_pressure() -> None:
            for f in others[4:]:
                read_by_b[f.name] = b.sha256(f.name)

        pressure = threading.Thread(target=more_pressure)
        pressure.start()
        compared = a.submit_compare(held.path, handle=handle).result(timeout=300)
        pressure.join(timeout=300)
        assert read_by_b == {f.name: f.sha256 for f in others[4:]}
    finally:
        index.close()
    print(f"\nlease {lease:g} s: A's lock reclaimed {reclaimed:.2f} s after SIGSTOP; A frozen "
          f"{frozen_for:.1f} s in all")  # fmt: skip
    assert compared == {"size": held.size, "mismatches": []}
    assert a.sha256(others[0].name) == others[0].sha256
    assert "lease had run out: registering again" in a.log()
    a.close_handle(handle)


def test_postgres_stopped_during_reads_then_started_again(
    config: dict[str, Any],
    files: dict[str, BigFile],
    cluster: Cluster,
    postgres_server: PostgresServer,
) -> None:
    deadline = 8.0
    config = {**config, "network": {**config["network"], "read_deadline": deadline}}
    cached, fetched, other = files["f0.bin"], files["f1.bin"], files["f2.bin"]
    data = session_of(cached, fetched, other)
    a = cluster.node("node-a", config, data)
    b = cluster.node("node-b", config, data)
    assert a.sha256(cached.name) == cached.sha256  # read whole, and closed
    # ... and committed: a read returns once its bytes are written, and the run commits them
    # after. Opened before A's last commit, B took the last block for A's to fetch still, and
    # waited for the index to say more (CI of 8967c0f: ETIMEDOUT once PostgreSQL was down).
    index = store_index(config)
    try:
        wait_until(lambda: getattr(current_entry(index, cached.item_id), "complete", False), 30)
    finally:
        index.close()
    held = b.open(cached.name)  # open across the outage, not read yet by B
    waiting = b.open(fetched.name)  # open, nothing of it in the store
    postgres_server.stop()
    try:
        drop_page_cache()
        # Complete cached files: served from the store, opened again or read through a handle.
        assert a.sha256(cached.name) == cached.sha256
        assert b.pread(held, 0, cached.size).sha256 == cached.sha256
        # A fetch that needs the index (to reserve its blocks) waits for it up to the read
        # deadline, and fails with a cause that names it; so does an open that needs a lock.
        started = time.monotonic()
        read = b.pread(waiting, 0, 4096, timeout=deadline * 4)
        read_took = time.monotonic() - started
        started = time.monotonic()
        opened = a.read(other.name, 0, 4096, timeout=deadline * 4)
        open_took = time.monotonic() - started
        drop_page_cache()
        assert a.sha256(cached.name) == cached.sha256  # still, a lease and more later
    finally:
        postgres_server.start_again()
    print(f"\nwith PostgreSQL down: a read waiting for the index failed after {read_took:.1f} s, "
          f"an open after {open_took:.1f} s (read_deadline {deadline:g} s)")  # fmt: skip
    # ETIMEDOUT for the read that waited, or EIO with the failed fetch's cause for the kernel's
    # read-ahead of the same bytes answered at the same time
    assert read.errno in (errno.ETIMEDOUT, errno.EIO), read
    assert opened.errno == errno.EIO, opened
    assert deadline <= read_took <= deadline * 2
    assert deadline <= open_took <= deadline * 2
    index_named = postgres_server.url_for("").split("@")[1].split("/")[0]  # 127.0.0.1:PORT
    failed_read = [line for line in b.log().splitlines() if "read: /f1.bin:" in line]
    assert failed_read and index_named in failed_read[0], b.log()
    failed_open = [line for line in a.log().splitlines() if "/f2.bin: cannot be opened" in line]
    assert failed_open and index_named in failed_open[0], a.log()
    # Work resumes: right bytes everywhere, the waiting handle included.
    assert b.pread(waiting, 0, fetched.size).sha256 == fetched.sha256
    assert a.sha256(other.name) == other.sha256
    assert b.sha256(fetched.name) == fetched.sha256
    assert b.pread(held, 0, cached.size).sha256 == cached.sha256
    b.close_handle(held)
    b.close_handle(waiting)


def test_status_on_any_node_lists_every_nodes_mounts_locks_and_transfers(
    config: dict[str, Any],
    files: dict[str, BigFile],
    cluster: Cluster,
    girder: LocalGirder,
    tmp_path: Path,
) -> None:
    held, f = files["held.bin"], files["stream.bin"]
    nodes = [cluster.node(f"node-{n}", config, session_of(held, f)) for n in "abc"]
    a, b, c = nodes
    handle = b.open(held.name)
    assert b.pread(handle, 0, 4096).ok
    girder.throttle(4 * MiB)
    try:
        reading = a.submit("sha256", path=a.path(f.name))
        wait_until(lambda: girder.stats()["download_bytes"] >= MiB, timeout=30)
        host = write_config(tmp_path / "host.yaml", config)
        env = {k: v for k, v in a.env.items() if k != "PYTHONPATH"}
        answers = {node.name: node.status() for node in nodes}
        result = run_wtfs(["-c", str(host), "status", "--json"], env, check=False)
        assert result.returncode in (0, 3), result.stderr
        answers["host"] = json.loads(result.stdout)
        plain = c.wtfs("status").stdout
    finally:
        girder.throttle(None)
    assert reading.result(timeout=120).get("sha256") == f.sha256
    a_owner = next(m["ownerId"] for m in answers["node-a"]["mounts"] if m["host"] == "node-a")
    for where, status in answers.items():
        mounts = sorted((m["host"], m["alive"]) for m in status["mounts"])
        assert mounts == [("node-a", True), ("node-b", True), ("node-c", True)], where
        locks = {(lock["host"], lock["path"]) for lock in status["locks"]}
        assert ("node-b", "/held.bin") in locks, (where, status["locks"])
        assert ("node-a", "/stream.bin") in locks, (where, status["locks"])
        moving = [t for t in status["transfers"] if t["path"] == "/stream.bin"]
        assert moving and {t["ownerId"] for t in moving} == {a_owner}, (where, moving)
        assert any(t["statusName"] == "TRANSFERRING" for t in moving), (where, moving)
    for name in ("node-a", "node-b", "node-c"):
        assert name in plain, plain
    b.close_handle(handle)
