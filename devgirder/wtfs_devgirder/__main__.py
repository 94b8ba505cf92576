"""``python -m wtfs_devgirder run --workdir DIR [--port N] [--seed]``.

Starts a local dev Girder, optionally seeds the sample data, prints one JSON line (api_url,
api_key_file, log file, sample data ids) and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from wtfs_devgirder.control import DevGirderError, LocalGirder

logger = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    # Until the server is up and seeded, Ctrl-C raises KeyboardInterrupt (start() and the
    # finally below stop the server) and SIGTERM kills us (the server follows: PDEATHSIG).
    try:
        girder = LocalGirder.start(args.workdir, port=args.port, timeout=args.timeout)
    except DevGirderError as exc:
        print(f"wtfs_devgirder: {exc}", file=sys.stderr)
        return 1
    try:
        info: dict[str, Any] = {
            "api_url": girder.api_url,
            "api_key_file": str(girder.api_key_file),
            "admin_login": girder.admin_login,
            "admin_password_file": str(girder.admin_password_file),
            "log_file": str(girder.log_file),
            "pid": girder.process.pid,
        }
        if args.seed:
            from wtfs_devgirder.seed import seed_sample_data

            sample = seed_sample_data(girder.client(), girder.workdir)
            info["sample"] = json.loads(sample.to_json())
        print(json.dumps(info, ensure_ascii=False), flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        while not stop.is_set():
            if girder.process.poll() is not None:
                print(
                    f"wtfs_devgirder: server exited ({girder.process.returncode}); "
                    f"see {girder.log_file}",
                    file=sys.stderr,
                )
                return 1
            stop.wait(0.5)
        return 0
    finally:
        girder.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wtfs_devgirder", description="A local dev Girder (mongomock, loopback)."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a dev Girder and serve until interrupted")
    run.add_argument("--workdir", type=Path, required=True)
    run.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    run.add_argument("--seed", action="store_true", help="create the wtfs-demo sample data")
    run.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return _run(args)


if __name__ == "__main__":
    raise SystemExit(main())
