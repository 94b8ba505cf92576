"""Pytest helpers around the local dev Girder (`wtfs_devgirder`).

Meant for session-scoped fixtures in ``tests/conftest.py``::

    @pytest.fixture(scope="session")
    def girder(tmp_path_factory):
        with start_local_girder(tmp_path_factory) as g:
            yield g

    @pytest.fixture(scope="session")
    def sample(girder, tmp_path_factory):
        return seed_local_girder(girder, tmp_path_factory)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData, seed_sample_data

logger = logging.getLogger(__name__)


def start_local_girder(
    tmp_path_factory: pytest.TempPathFactory, name: str = "girder", timeout: float = 60
) -> LocalGirder:
    """Start a fresh dev Girder in a new temporary directory. The caller must `stop()` it."""
    workdir = tmp_path_factory.mktemp(name)
    girder = LocalGirder.start(workdir, timeout=timeout)
    logger.info("started %r in %s", girder, workdir)
    return girder


def seed_local_girder(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    """Create the ``wtfs-demo`` sample collection in ``girder`` (once per Girder)."""
    return seed_sample_data(girder.client(), tmp_path_factory.mktemp("seed"))


@contextmanager
def local_girder(
    tmp_path_factory: pytest.TempPathFactory, name: str = "girder", seed: bool = False
) -> Iterator[tuple[LocalGirder, SampleData | None]]:
    """A dev Girder (optionally seeded) that is stopped on exit, whatever happens."""
    girder = start_local_girder(tmp_path_factory, name)
    try:
        sample = seed_local_girder(girder, tmp_path_factory) if seed else None
        yield girder, sample
    finally:
        girder.stop()
