"""The short soak, in CI: two real mounts sharing one store far smaller than the working set,
under a mixed load of real readers for about a minute and a half each.

What must hold (the load issue's acceptance): no wrong byte, no failed read, work completed in
every 10 s window, both daemons alive and without a traceback, RSS growth in the second half
under 16 MiB, open fds flat. `bench/soak.py` runs the same workload for as long as asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.soak import SOAK, WINDOWED, SoakShape, run_soak

SECONDS = 75.0


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("shape", [SOAK, WINDOWED], ids=lambda s: s.name)
def test_the_short_soak_holds(
    tmp_path: Path, girder: LocalGirder, sample: SampleData, shape: SoakShape
) -> None:
    result = run_soak(girder, tmp_path, shape, SECONDS, sample=sample)
    print(f"\n{result.table()}\n\n{result.summary()}")
    assert result.problems() == []
