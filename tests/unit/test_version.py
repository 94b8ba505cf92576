"""`wtfs --version`: the installed distribution's version, one line, exit 0 (what a bug report
quotes, so it must be the metadata's, not a constant that drifts)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_distributions_on_one_line() -> None:
    expected = f"wtfs {version('wtfs')}\n"
    for argv in ([sys.executable, "-m", "wtfs", "--version"],
                 [str(Path(sys.executable).parent / "wtfs"), "--version"]):  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), argv
