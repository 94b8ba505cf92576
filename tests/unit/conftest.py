"""Shared fixtures for the unit tests of the store, the GC and status: owners (live and dead)
and a fresh private store whose index is SQLite inside it or a PostgreSQL database.

`store`, `index` and `second_index` are parametrized over the backend: the tests that ask for
them (or for `fill_entry`) run against both. `local_store` is not: a store for the tests of its
files alone, whose index (if one is opened) is its own SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wtfs_index import EntryRow, Index, NewEntry, entry_key
from wtfs_index.owner import Owner

from tests.support import owners
from wtfs.cache.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def index_url(request: pytest.FixtureRequest) -> str | None:
    """None: the store's own SQLite index; else a fresh PostgreSQL database's URL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return None


def _prepared(root: Path, index_url: str | None) -> Store:
    store = Store(root, index_url)
    store.prepare()
    return store


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return _prepared(tmp_path / "ps", None)


@pytest.fixture
def store(tmp_path: Path, index_url: str | None) -> Store:
    return _prepared(tmp_path / "ps", index_url)


@pytest.fixture
def index(store: Store) -> Iterator[Index]:
    idx = store.open_index()
    yield idx
    idx.close()


@pytest.fixture
def second_index(store: Store, index: Index) -> Iterator[Index]:
    """Another connection to the same index (another daemon, or `wtfs status`)."""
    idx = store.open_index()
    yield idx
    idx.close()


@pytest.fixture(scope="session")
def exited_identity() -> tuple[int, int]:
    return owners.exited_process()


@pytest.fixture
def me(index: Index) -> Owner:
    """This process, registered as a mount daemon."""
    owner = Owner.current("me")
    assert owner.alive()
    index.register_owner(owner, "mount")
    return owner


@pytest.fixture
def other_live_owner(index: Index) -> Owner:
    """Another owner identity backed by a live process (this one), e.g. a second daemon."""
    owner = owners.this_process("other-live")
    index.register_owner(owner, "status")
    return owner


@pytest.fixture
def dead_owner(index: Index, exited_identity: tuple[int, int]) -> Owner:
    """A daemon of this host and namespace that registered, then died without cleaning up."""
    owner = owners.dead("dead-owner", exited_identity)
    index.register_owner(owner, "mount")
    return owner


def key_of(name: str) -> str:
    return entry_key(f"girder:{name}", "v1")


def new_entry(index: Index, name: str, size: int, *, item_id: str | None = None) -> EntryRow:
    """The (empty) entry of `girder:<name>`, version v1: key `key_of(name)`."""
    new = NewEntry(key_of(name), f"girder:{name}", "v1", item_id or f"item-{name}", size,
                   "girder:x", f"/{name}")  # fmt: skip
    return index.ensure_entry(new, by_owner="test")


FillEntry = Callable[..., EntryRow]


@pytest.fixture
def fill_entry(index: Index, store: Store, me: Owner) -> FillEntry:
    """`fill_entry(name, size)`: an entry whose bytes are all present, its file written."""

    def fill(name: str, size: int, *, item_id: str | None = None) -> EntryRow:
        entry = new_entry(index, name, size, item_id=item_id)
        fd = store.open_file(entry.file_name, size)
        try:
            os.pwrite(fd, b"x" * size, 0)
        finally:
            os.close(fd)
        reservation = index.reserve(entry.key, 0, size, me, capacity=1 << 40)
        assert reservation.claim_id is not None
        index.commit_range(reservation.claim_id, entry.key, 0, size)
        row = index.get_entry(entry.key)
        assert row is not None
        return row

    return fill
