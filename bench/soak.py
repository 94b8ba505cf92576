"""The long soak: two wtfs mounts sharing one private store far smaller than the working set,
under a mixed workload for N minutes, watched for wrong bytes, failed reads, stalls and leaks.

    .venv/bin/python bench/soak.py --minutes 10 [--shape soak|windowed] [--index-url URL]

It starts its own local Girder (wtfs_devgirder) with random files imported in place plus the
seeded sample tree, mounts the same session twice and runs the workload of
`tests/support/soak.py` (the short soak tests in CI run the same one). It prints a row per
sample, the summary (ops, GiB read, errors, RSS and fds at start, middle and end) and every
rule the run broke. Exit code 0 when none; 1 otherwise. It always ends on its own: readers
still blocked at the end are counted, not waited for. Everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wtfs_devgirder.control import LocalGirder  # noqa: E402

from tests.support.soak import SOAK, WINDOWED, run_soak  # noqa: E402

SHAPES = {shape.name: shape for shape in (SOAK, WINDOWED)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=SOAK.name)
    parser.add_argument("--index-url", help="a PostgreSQL index (default: SQLite in the store)")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wtfs-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    girder = LocalGirder.start(workdir / "girder")
    try:
        shape = SHAPES[args.shape]
        log(f"{shape.name}: {args.minutes:g} min, capacity {shape.capacity >> 20} MiB for a "
            f"{shape.working_set >> 20} MiB working set, {shape.threads} threads")  # fmt: skip
        result = run_soak(girder, workdir, shape, args.minutes * 60, interval=args.interval,
                          index_url=args.index_url, echo=log)  # fmt: skip
    except KeyboardInterrupt:
        log("interrupted")
        return 1
    finally:
        girder.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result.table())
    print()
    print(result.summary())
    problems = result.problems()
    for problem in problems:
        print(f"FAILED: {problem}")
    print("OK" if not problems else "FAILED")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
