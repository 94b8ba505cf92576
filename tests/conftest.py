"""Shared fixtures: one real Girder 5 (seeded, with the wtfs plugin) per test session, a stock
Girder (no plugin) when a test asks for one, real mounts, and one real PostgreSQL server per
test session with a fresh database for each test that asks."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.bigdata import BigFile, MiB, import_files
from tests.support.girder import seed_local_girder, start_local_girder
from tests.support.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def girder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGirder]:
    server = start_local_girder(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stock_girder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGirder]:
    """A Girder with no plugin loaded: what wtfs meets on a server without girder-plugin-wtfs."""
    server = start_local_girder(tmp_path_factory, "stock-girder", plugins=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sample(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    return seed_local_girder(girder, tmp_path_factory)


@pytest.fixture
def base_config(girder: LocalGirder, tmp_path: Path) -> dict[str, Any]:
    """A config for a mount against the session Girder, with its own private store."""
    return {
        "girder": {"api_url": girder.api_url, "api_key_file": str(girder.api_key_file)},
        "private_storage_path": str(tmp_path / "store"),
        "private_storage_capacity": "1GiB",
        "gc_run_interval": 1,
        "network": {"read_deadline": 30, "retry_base_delay": 0.05, "retry_max_delay": 0.5},
    }


@pytest.fixture(scope="session")
def big(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, BigFile]:
    """1 GiB, 256 MiB, 16 × 64 MiB and 12 × 8 MiB random files in Girder (≈ 2.4 GiB)."""
    sizes = {"one-gib.bin": 1024 * MiB, "quarter-gib.bin": 256 * MiB}
    sizes.update({f"p{n:02d}.bin": 64 * MiB for n in range(16)})
    sizes.update({f"s{n:02d}.bin": 8 * MiB for n in range(12)})
    return import_files(girder, tmp_path_factory.mktemp("bigdata"), sizes)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL 15 for the session (initdb + start ≈ 1 s); see tests/support/postgres.py.
    A test may stop, kill and start it again; `postgres_url` starts it again if one did not."""
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """`postgresql://wtfs:PASSWORD@127.0.0.1:PORT/NAME` of a fresh empty database owned by
    `wtfs`, named after the test; dropped afterwards (open connections are ended)."""
    slug = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())
    name = f"t{next(_database_numbers)}_{slug}"[:63]
    url = postgres_server.new_database(name)
    yield url
    if not postgres_server.running:  # the test stopped it: the next tests need it
        postgres_server.start_again()
    postgres_server.drop_database(name)
