"""How a prefetch is shown: its record (`wtfs prefetch --json`, `wtfs status --json`), a rich
progress bar on a terminal, plain lines into a pipe or a file (one a second at most: a log,
not an animation)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from wtfs_index import PrefetchFileRow, PrefetchRow, PrefetchState
from wtfs_index.records import iso

from wtfs.config import format_size

#: seconds between plain progress lines
PLAIN_EVERY = 1.0


def prefetch_record(
    row: PrefetchRow, files: Sequence[PrefetchFileRow] = (), now: float | None = None
) -> dict[str, Any]:
    """A prefetch as JSON: what it was asked, where it is, its rate (bytes fetched per second
    since it started) and ETA, and with `files` the files that failed and why."""
    now = time.time() if now is None else now
    end = row.ended if row.ended is not None else now
    seconds = max(0.0, end - row.started) if row.started is not None else 0.0
    rate = row.bytes_fetched / seconds if seconds > 0 else 0.0
    left = max(0, row.bytes_total - row.bytes_done)
    eta = left / rate if rate > 0 and row.state == PrefetchState.RUNNING else None
    record: dict[str, Any] = {
        "_id": row.id,
        "sessionId": row.session_id,
        "mountpoint": row.mountpoint,
        "paths": row.paths,
        "ownerId": row.owner_id,
        "state": row.state,
        "files": {"total": row.files_total, "done": row.files_done, "failed": row.files_failed},
        "bytes": {"total": row.bytes_total, "done": row.bytes_done, "fetched": row.bytes_fetched},
        "current": row.current,
        "rate": rate,
        "eta": eta,
        "seconds": seconds,
        "created": iso(row.created),
        "started": iso(row.started) if row.started is not None else None,
        "ended": iso(row.ended) if row.ended is not None else None,
        "error": row.error,
    }
    if files:
        record["failures"] = [
            {"path": f.path, "error": f.error} for f in files if f.state == "failed"
        ]
    return record


def progress_line(record: dict[str, Any]) -> str:
    """`prefetch 3: 2/5 files, 12.0 MiB of 40.0 MiB (30%), 5.1 MiB/s, ETA 6s`."""
    files, size = record["files"], record["bytes"]
    share = f" ({100 * size['done'] // size['total']}%)" if size["total"] else ""
    parts = [
        f"{files['done']}/{files['total']} files"
        + (f" ({files['failed']} failed)" if files["failed"] else ""),
        f"{format_size(size['done'])} of {format_size(size['total'])}{share}",
        f"{format_size(record['rate'])}/s",
    ]
    if record["eta"] is not None:
        parts.append(f"ETA {record['eta']:.0f}s")
    return f"prefetch {record['_id']} {record['state']}: " + ", ".join(parts)


class PrefetchDisplay:
    """Shows the records of one prefetch as they come: a rich progress bar on a terminal,
    plain lines otherwise; nothing with `quiet` (--json prints the last record alone)."""

    def __init__(self, *, quiet: bool = False, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet
        self.tty = not quiet and self.out.isatty()
        self._last_line = -PLAIN_EVERY
        self._last_text = ""
        self._progress: Any = None
        self._task: Any = None

    def update(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.tty:
            self._rich(record)
            return
        now = time.monotonic()
        text = progress_line(record)
        if now - self._last_line >= PLAIN_EVERY and text != self._last_text:
            self._last_line, self._last_text = now, text
            print(text, file=self.out, flush=True)

    def _rich(self, record: dict[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self._progress is None:
            from rich.console import Console

            self._progress = Progress(
                TextColumn("[bold]prefetch {task.fields[id]}"),
                BarColumn(),
                TextColumn("{task.fields[files]}"),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("[dim]{task.fields[current]}"),
                console=Console(file=self.out),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("prefetch", total=None, id=record["_id"],
                                                 files="", current="")  # fmt: skip
        files = record["files"]
        self._progress.update(
            self._task,
            total=record["bytes"]["total"] or None,
            completed=record["bytes"]["done"],
            files=f"{files['done']}/{files['total']} files",
            current=record["current"] or "",
        )

    def close(self, record: dict[str, Any] | None = None) -> None:
        if record is not None:
            self.update(record)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def summary(record: dict[str, Any]) -> str:
    """The last line: what was fetched, how fast, and how it ended."""
    files, size = record["files"], record["bytes"]
    speed = format_size(size["fetched"] / record["seconds"]) if record["seconds"] else "0 B"
    return (
        f"prefetch {record['_id']} {record['state']}: {files['done']}/{files['total']} files "
        f"cached ({format_size(size['done'])} of {format_size(size['total'])}); fetched "
        f"{format_size(size['fetched'])} in {record['seconds']:.1f}s ({speed}/s)"
    )
