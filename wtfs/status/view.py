"""The human view of `wtfs status`: rich tables, and a live `--watch` screen."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from wtfs_index.index import TransferStatus

from wtfs.config import Config, format_size
from wtfs.status.report import Report, gather

STATUS_STYLE = {
    TransferStatus.INITIALIZING: "dim",
    TransferStatus.QUEUED: "yellow",
    TransferStatus.TRANSFERRING: "cyan",
    TransferStatus.DONE: "green",
    TransferStatus.FAILED: "bold red",
}


def _eta(t: dict[str, object]) -> str:
    rate = float(t["rate"])  # type: ignore[arg-type]
    left = int(t["size"]) - int(t["transferred"])  # type: ignore[call-overload]
    if t["status"] != TransferStatus.TRANSFERRING or rate <= 0 or left <= 0:
        return ""
    return f"{left / rate:.0f}s"


def build(report: Report) -> Group:
    s = report.store
    capacity = max(1, int(s["capacity"]))
    usage = int(s["usage"])
    usage_line = Table.grid(padding=(0, 1))
    usage_line.add_row(
        ProgressBar(total=capacity, completed=usage, width=30),
        f"{format_size(usage)} of {format_size(capacity)} ({100 * usage / capacity:.0f}%)",
    )
    t = report.totals
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("store", str(s["path"]))
    header.add_row("usage", usage_line)
    header.add_row(
        "gc",
        f"starts at {format_size(s['gcStartBytes'])} ({100 * float(s['gcStartFraction']):.0f}%), "
        f"stops at {format_size(s['gcEndBytes'])} ({100 * float(s['gcEndFraction']):.0f}%)",
    )
    header.add_row(
        "files",
        f"{s['entries']} cached ({s['complete']} complete), "
        f"{format_size(s['reserved'])} reserved for fetches in flight",
    )
    header.add_row(
        "reads",
        f"{t.get('hits', 0)} hits, {t.get('misses', 0)} misses; "
        f"served {format_size(t.get('bytes_from_store', 0))}, "
        f"fetched {format_size(t.get('bytes_from_network', 0))}",
    )

    mounts = Table(title="mounts", title_justify="left", expand=True)
    for col in ("mountpoint", "session", "pid", "since", "hits/misses"):
        mounts.add_column(col)
    for m in report.mounts:
        stats = m["stats"]
        mounts.add_row(
            m["mountpoint"],
            f"{m['sessionId']} ({m['origin']})",
            str(m["pid"]),
            str(m["started"])[:19],
            f"{stats.get('hits', 0)}/{stats.get('misses', 0)}",
        )
    if not report.mounts:
        mounts.add_row(Text("no mount running", style="dim"), "", "", "", "")

    transfers = Table(title="transfers", title_justify="left", expand=True)
    transfers.add_column("id", no_wrap=True)
    transfers.add_column("path", overflow="fold", ratio=3, min_width=24)
    for col in ("status", "progress", "size", "rate", "ETA"):
        transfers.add_column(col, no_wrap=True)
    transfers.add_column("error", overflow="fold", ratio=2, min_width=8)
    for tr in report.transfers[-30:]:
        status = TransferStatus(tr["status"])
        size = max(1, int(tr["size"]))
        transfers.add_row(
            str(tr["_id"]),
            tr["path"],
            Text(status.name, style=STATUS_STYLE[status]),
            ProgressBar(total=size, completed=int(tr["transferred"]), width=12),
            f"{format_size(tr['transferred'])} / {format_size(tr['size'])}",
            f"{format_size(tr['rate'])}/s" if tr["rate"] else "",
            _eta(tr),
            tr["error"] or "",
        )
    if not report.transfers:
        transfers.add_row(
            "",
            Text("no recent transfers (--all shows history)", style="dim"),
            "",
            "",
            "",
            "",
            "",
            "",
        )

    locks = Table(title="locks", title_justify="left", expand=True)
    for col in ("session", "item", "path", "pid", "live"):
        locks.add_column(col)
    for lock in report.locks:
        locks.add_row(
            lock["sessionId"],
            lock["itemId"],
            lock["path"] or "",
            str(lock["pid"]),
            "yes" if lock["alive"] else Text("dead (will be reclaimed)", style="red"),
        )

    parts: list[object] = [Panel(header, title="wtfs"), mounts, transfers, locks]
    if report.evictions:
        ev = Table(title="recent evictions", title_justify="left", expand=True)
        for col in ("time", "path", "bytes", "reason"):
            ev.add_column(col)
        for e in report.evictions[:10]:
            ev.add_row(
                str(e["time"])[:19], e["path"] or e["key"], format_size(e["bytes"]), e["reason"]
            )
        parts.append(ev)
    if report.failures:
        fl = Table(title="recent failures", title_justify="left", expand=True)
        fl.add_column("time")
        fl.add_column("cause", overflow="fold")
        for f in report.failures[:10]:
            fl.add_row(str(f["time"])[:19], f["cause"])
        parts.append(fl)
    return Group(*parts)  # type: ignore[arg-type]


def render_table(report: Report, console: Console | None = None) -> None:
    (console or Console()).print(build(report))


def watch_table(
    config: Config, *, session_id: str | None, show_all: bool, interval: float = 1.0
) -> None:
    console = Console()
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                live.update(build(gather(config, session_id=session_id, discard_old=not show_all)))
                time.sleep(interval)
        except KeyboardInterrupt:
            return
