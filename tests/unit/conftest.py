"""Shared fixtures for the unit tests: owners (live and dead) and a fresh private store."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wtfs_index.index import Index
from wtfs_index.owner import Owner, process_start_time

from wtfs.cache.store import Store


@pytest.fixture(scope="session")
def dead_owner_identity() -> tuple[int, int]:
    """(pid, start time) of a process that really existed and has exited."""
    proc = subprocess.Popen(["sleep", "5"])
    start = process_start_time(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    assert process_start_time(proc.pid) != start
    return proc.pid, start


@pytest.fixture
def dead_owner(dead_owner_identity: tuple[int, int]) -> Owner:
    pid, start = dead_owner_identity
    owner = Owner("dead-owner", pid, start, socket.gethostname())
    assert not owner.alive()
    return owner


@pytest.fixture
def me() -> Owner:
    owner = Owner.current("me")
    assert owner.alive()
    return owner


@pytest.fixture
def other_live_owner(me: Owner) -> Owner:
    """Another owner identity backed by a live process (this one), e.g. a second daemon."""
    owner = Owner("other-live", os.getpid(), me.pid_start, me.host)
    assert owner.alive()
    return owner


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "ps")
    s.prepare()
    return s


@pytest.fixture
def index(store: Store) -> Iterator[Index]:
    idx = store.open_index()
    yield idx
    idx.close()


@pytest.fixture
def second_index(store: Store, index: Index) -> Iterator[Index]:
    """Another connection to the same index file (another daemon, or `wtfs status`)."""
    idx = Index(store.index_path)
    yield idx
    idx.close()


FillEntry = Callable[..., None]


@pytest.fixture
def fill_entry(index: Index, store: Store, me: Owner) -> FillEntry:
    """`fill_entry(key, size)`: make `key` an entry whose bytes are all present, file included."""

    def fill(key: str, size: int, *, item_id: str | None = None) -> None:
        entry = index.ensure_entry(key, item_id or f"item-{key}", size, None, "girder:x", key)
        fd = store.open_file(entry.file_name, size)
        try:
            os.pwrite(fd, b"x" * size, 0)
        finally:
            os.close(fd)
        reservation = index.reserve(key, 0, size, me, capacity=1 << 40)
        assert reservation.claim_id is not None
        index.commit_range(reservation.claim_id, key, 0, size)

    return fill
