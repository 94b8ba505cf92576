"""Two nodes share one store, on either backend: SQLite in the store (two PID namespaces of one
host) and PostgreSQL (the index of a cluster). Each node is a `wtfs mount` in new UTS, PID and
mount namespaces with a hostname of its own (tests/support/nodes.py), so each judges the other
alive by its lease alone, as it would a daemon on another machine.

- each keeps the other's mount and locks: `wtfs status --json` from either side lists both
  mounts (with their host) and the open file's lock for several leases, while one node reads
  far past the store's capacity; the file held open by the other is never evicted, and the
  bytes under data/ never exceed the capacity (sampled every 50 ms);
- the locks of a node killed with `kill -9` are reclaimed by the other within one lease and one
  tick of its ticker (the time is printed).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wtfs_index import Index

from tests.cluster.conftest import node_config, session_of
from tests.support.bigdata import BigFile, MiB
from tests.support.index import store_index
from tests.support.mounts import drop_page_cache
from tests.support.nodes import Cluster
from wtfs.cache.store import Store

#: the mount daemon's ticker reclaims what dead owners left every this many seconds
TICK = 2.0
BACKENDS = ["sqlite", "postgres"]


def backend_config(
    request: pytest.FixtureRequest, backend: str, base: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    config = node_config(base, **extra)
    if backend == "postgres":
        config["index_url"] = request.getfixturevalue("postgres_url")
    return config


def current_entry(index: Index, item_id: str) -> Any:
    rows = [e for e in index.entries() if e.item_id == item_id and not e.superseded]
    return rows[0] if rows else None


class DiskSampler:
    """Store.disk_usage() every 50 ms, in a thread, until stopped: the largest value seen."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.store.disk_usage())
            self._stop.wait(0.05)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_nodes_keep_each_others_mounts_and_locks_while_one_reads_past_capacity(
    request: pytest.FixtureRequest,
    backend: str,
    base_config: dict[str, Any],
    files: dict[str, BigFile],
    cluster: Cluster,
) -> None:
    capacity = 32 * MiB
    config = backend_config(request, backend, base_config, private_storage_capacity=capacity)
    lease = float(config["lease"])
    data = session_of(*files.values())
    a = cluster.node("node-a", config, data)
    b = cluster.node("node-b", config, data)
    held = files["held.bin"]
    handle = a.open("held.bin")
    assert a.pread(handle, 0, held.size).sha256 == held.sha256
    index = store_index(config)
    try:
        kept = current_entry(index, held.item_id)
        assert kept is not None and kept.complete
        others = [files[f"f{n}.bin"] for n in range(8)]  # 64 MiB through a 32 MiB store
        read: dict[str, str] = {}
        errors: list[BaseException] = []

        def read_past_capacity() -> None:
            try:
                for _ in range(2):
                    for f in others:
                        read[f.name] = b.sha256(f.name)
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=read_past_capacity)
        store = Store(Path(config["private_storage_path"]))
        with DiskSampler(store) as disk:
            reader.start()
            # Several leases: a node that took the other's live state for dead would have
            # dropped its mount and lock by then (the failure this test was written for).
            watched_until = time.monotonic() + 3 * lease
            looks = 0
            while time.monotonic() < watched_until or reader.is_alive():
                for node in (a, b):
                    status = node.status()
                    mounts = sorted((m["host"], m["alive"]) for m in status["mounts"])
                    assert mounts == [("node-a", True), ("node-b", True)], (node.name, mounts)
                    locks = [
                        (lock["host"], lock["path"], lock["alive"])
                        for lock in status["locks"]
                        if lock["itemId"] == held.item_id
                    ]
                    assert locks == [("node-a", "/held.bin", True)], (node.name, status["locks"])
                    looks += 1
                if time.monotonic() > watched_until + 300:
                    break
            reader.join(timeout=60)
        assert not errors, errors
        assert read == {f.name: f.sha256 for f in others}
        evicted = {e["itemId"] for e in b.status()["evictions"]}
        assert evicted & {f.item_id for f in others}, "node b did not read past the capacity"
        assert held.item_id not in evicted
        now = current_entry(index, held.item_id)
        assert now is not None and now.file_name == kept.file_name and now.complete
    finally:
        index.close()
    print(f"\n{backend}: {looks} looks at both statuses over {3 * lease:g} s and more; "
          f"disk usage at most {max(disk.samples) / MiB:.1f} MiB of {capacity / MiB:.0f} "
          f"({len(disk.samples)} samples)")  # fmt: skip
    assert max(disk.samples) <= capacity
    drop_page_cache()
    assert a.pread(handle, 0, held.size).sha256 == held.sha256  # from the store, not the kernel
    a.close_handle(handle)


@pytest.mark.parametrize("backend", BACKENDS)
def test_locks_of_a_node_killed_with_kill_9_are_reclaimed_within_one_lease_and_a_tick(
    request: pytest.FixtureRequest,
    backend: str,
    base_config: dict[str, Any],
    files: dict[str, BigFile],
    cluster: Cluster,
) -> None:
    config = backend_config(request, backend, base_config)
    lease = float(config["lease"])
    data = session_of(files["held.bin"])
    a = cluster.node("node-a", config, data)
    b = cluster.node("node-b", config, data)
    held = files["held.bin"]
    handle = a.open("held.bin")
    assert a.pread(handle, 0, 4096).ok
    index = store_index(config)
    try:
        assert index.lock_count(held.item_id) == 1
        a.kill()
        killed = time.monotonic()
        while index.lock_count(held.item_id) and time.monotonic() - killed < 10 * lease:
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert index.lock_count(held.item_id) == 0, "the dead node's lock was never reclaimed"
    finally:
        index.close()
    print(f"\n{backend}: lease {lease:g} s, tick {TICK:g} s: the lock of the node killed with "
          f"kill -9 was reclaimed {took:.2f} s after the kill")  # fmt: skip
    # Its lease was renewed at most a second before the kill: gone within a lease and a tick
    # of the survivor's ticker (1 s more for a loaded machine).
    assert took <= lease + TICK + 1.0
    mounts = [(m["host"], m["alive"]) for m in b.status()["mounts"]]
    assert mounts == [("node-b", True)]
    assert b.sha256("held.bin") == held.sha256
