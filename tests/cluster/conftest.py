"""Fixtures of the shared-store tests: a few random files in the session Girder, a base
config whose store and index every node of a test shares, and a `cluster` that tears its
nodes down whatever happens (tests/support/nodes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import BigFile, MiB, import_files
from tests.support.nodes import Cluster

#: 12 MiB held open, 8 × 8 MiB read past a small store's capacity, 32 MiB streamed slowly
SIZES = {"held.bin": 12 * MiB, "stream.bin": 32 * MiB} | {f"f{n}.bin": 8 * MiB for n in range(8)}


@pytest.fixture(scope="session")
def files(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, BigFile]:
    return import_files(girder, tmp_path_factory.mktemp("clusterdata"), SIZES)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "nodes") as nodes:
        yield nodes


def session_of(*files: BigFile) -> list[dict[str, str]]:
    return [{"itemId": f.item_id, "mountPath": f"/{f.name}"} for f in files]


def node_config(base: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """`base_config` for nodes: a short lease, the GC every second, and `extra` on top."""
    return {**base, "lease": 5, "gc_run_interval": 1, **extra}
