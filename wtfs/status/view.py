"""The human views: `wtfs status` (rich tables on a terminal, a live `--watch` screen, and
plain text sized to its content when the output goes to a pipe or a file), `wtfs session list`.

rich lays tables out for a terminal's width, and 80 columns when there is none: piped into
`less`, `grep` or a file, the status lost its rate, ETA and error columns, which is where a
user looks for why a transfer failed. Plain text has no width to fit, so nothing is cut.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from wtfs_index import TransferStatus

from wtfs.config import Config, format_size
from wtfs.status.report import Report, gather

STATUS_STYLE = {
    TransferStatus.INITIALIZING: "dim",
    TransferStatus.QUEUED: "yellow",
    TransferStatus.TRANSFERRING: "cyan",
    TransferStatus.DONE: "green",
    TransferStatus.FAILED: "bold red",
}


def render_sessions(records: list[dict[str, Any]], *, show_owner: bool = False) -> str:
    """`wtfs session list`: aligned plain text, one line per dataSet entry.

    Plain columns rather than a rich table: ids are 24 characters, and a box drawn to an 80-column
    pipe would wrap them; `awk '{print $1}'` of the first lines still gives the ids.
    """
    if not records:
        return "no sessions"
    head = ["id", *(["owner"] if show_owner else []), "created", "mountPath", "itemId"]
    rows: list[list[str]] = [head]
    for r in records:
        first = [str(r["_id"]), *([str(r.get("ownerId", ""))] if show_owner else [])]
        first.append(str(r.get("created", ""))[:19].replace("T", " "))
        entries = r.get("dataSet") or [{}]
        for n, e in enumerate(entries):
            lead = first if n == 0 else [""] * len(first)
            rows.append([*lead, str(e.get("mountPath", "")), str(e.get("itemId", ""))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _eta(t: dict[str, object]) -> str:
    rate = float(t["rate"])  # type: ignore[arg-type]
    left = int(t["size"]) - int(t["transferred"])  # type: ignore[call-overload]
    if t["status"] != TransferStatus.TRANSFERRING or rate <= 0 or left <= 0:
        return ""
    return f"{left / rate:.0f}s"


MOUNT_COLUMNS = ("mountpoint", "session", "pid", "since", "hits/misses")
TRANSFER_COLUMNS = ("id", "path", "status", "progress", "size", "rate", "ETA", "error")
LOCK_COLUMNS = ("session", "item", "path", "owner", "live")
EVICTION_COLUMNS = ("time", "path", "bytes", "reason")
PREFETCH_COLUMNS = ("id", "where", "state", "files", "progress", "rate", "ETA", "error")
NO_MOUNT = "no mount running"
NO_TRANSFER = "no recent transfers (--all shows history)"


def _header(report: Report) -> list[tuple[str, str]]:
    """The store panel's rows (name, text); the usage text goes beside rich's bar."""
    s, t = report.store, report.totals
    capacity = max(1, int(s["effectiveCapacity"]))
    usage = int(s["usage"])
    limited = ""
    if capacity < int(s["capacity"]):
        limited = f": the filesystem holds no more, of {format_size(s['capacity'])} configured"
    return [
        ("store", str(s["path"])),
        ("usage", f"{format_size(usage)} of {format_size(capacity)} "
                  f"({100 * usage / capacity:.0f}%){limited}"),
        ("gc", f"starts at {format_size(s['gcStartBytes'])} "
               f"({100 * float(s['gcStartFraction']):.0f}%), "
               f"stops at {format_size(s['gcEndBytes'])} "
               f"({100 * float(s['gcEndFraction']):.0f}%)"),
        ("files", f"{s['entries']} cached ({s['complete']} complete), "
                  f"{format_size(s['reserved'])} reserved for fetches in flight"),
        ("reads", f"{t.get('hits', 0)} hits, {t.get('misses', 0)} misses; "
                  f"served {format_size(t.get('bytes_from_store', 0))}, "
                  f"fetched {format_size(t.get('bytes_from_network', 0))}"),
    ]  # fmt: skip


def _mount_cells(m: dict[str, object]) -> list[str]:
    stats: dict[str, int] = m["stats"]  # type: ignore[assignment]
    return [
        str(m["mountpoint"]),
        f"{m['sessionId']} ({m['origin']})",
        str(m["pid"]),
        str(m["started"])[:19],
        f"{stats.get('hits', 0)}/{stats.get('misses', 0)}",
    ]


def _lock_cells(lock: dict[str, object]) -> list[str]:
    """A lock's row. Records carry no pid (a pin has no process): the owner id names a mount's
    process (`mount-<pid>-...`) or a pin's owner; a pin's row says until when it holds."""
    live = "yes" if lock["alive"] else "dead (will be reclaimed)"
    if lock["alive"] and lock.get("expires"):
        live = f"pinned until {str(lock['expires'])[:19]}"
    return [str(lock["sessionId"]), str(lock["itemId"]), str(lock["path"] or ""),
            str(lock["ownerId"]), live]  # fmt: skip


def _eviction_cells(e: dict[str, object]) -> list[str]:
    return [str(e["time"])[:19], str(e["path"] or e["key"]),
            format_size(e["bytes"]), str(e["reason"])]  # type: ignore[arg-type]  # fmt: skip


def _prefetch_cells(p: dict[str, Any]) -> list[str]:
    files, size = p["files"], p["bytes"]
    where = p["mountpoint"] or f"session {p['sessionId']}"
    paths = [x for x in p["paths"] if x != "/"]
    return [
        str(p["_id"]),
        where + (f" {' '.join(paths)}" if paths else ""),
        str(p["state"]),
        f"{files['done']}/{files['total']}"
        + (f" ({files['failed']} failed)" if files["failed"] else ""),
        f"{format_size(size['done'])} / {format_size(size['total'])}",
        f"{format_size(p['rate'])}/s" if p["rate"] else "",
        f"{p['eta']:.0f}s" if p["eta"] is not None else "",
        p["error"] or "",
    ]


def build(report: Report) -> Group:
    s = report.store
    capacity = max(1, int(s["effectiveCapacity"]))
    rows = _header(report)
    usage_line = Table.grid(padding=(0, 1))
    usage_line.add_row(ProgressBar(total=capacity, completed=int(s["usage"]), width=30), rows[1][1])
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    for name, text in rows:
        header.add_row(name, usage_line if name == "usage" else text)

    mounts = Table(title="mounts", title_justify="left", expand=True)
    for col in MOUNT_COLUMNS:
        mounts.add_column(col)
    for m in report.mounts:
        mounts.add_row(*_mount_cells(m))
    if not report.mounts:
        mounts.add_row(Text(NO_MOUNT, style="dim"), "", "", "", "")

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
            Text(NO_TRANSFER, style="dim"),
            "",
            "",
            "",
            "",
            "",
            "",
        )

    locks = Table(title="locks", title_justify="left", expand=True)
    for col in LOCK_COLUMNS:
        locks.add_column(col)
    for lock in report.locks:
        *cells, live = _lock_cells(lock)
        locks.add_row(*cells, live if lock["alive"] else Text(live, style="red"))

    parts: list[object] = [Panel(header, title="wtfs"), mounts, transfers, locks]
    if report.prefetches:
        pf = Table(title="prefetches", title_justify="left", expand=True)
        for col in PREFETCH_COLUMNS:
            pf.add_column(col, overflow="fold")
        for p in report.prefetches:
            pf.add_row(*_prefetch_cells(p))
        parts.append(pf)
    if report.evictions:
        ev = Table(title="recent evictions", title_justify="left", expand=True)
        for col in EVICTION_COLUMNS:
            ev.add_column(col)
        for e in report.evictions[:10]:
            ev.add_row(*_eviction_cells(e))
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


def _one_line(text: str) -> str:
    """A cell on one line: a newline or tab inside an error would break the row apart."""
    return " ".join(text.splitlines()).replace("\t", " ")


def _plain_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], empty: str | None = None
) -> list[str]:
    """`title`, then the columns padded to their widest cell, two spaces apart; the last column
    is not padded, so a long error ends the line instead of pushing spaces after it."""
    cells = [list(columns)] + [[_one_line(c) for c in row] for row in rows]
    widths = [max(cell_len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [title]
    for row in cells:
        padded = [c + " " * (w - cell_len(c)) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    if not rows and empty:
        lines.append(empty)
    return lines


def _progress(t: dict[str, object]) -> str:
    size = int(t["size"])  # type: ignore[call-overload]
    done = int(t["transferred"])  # type: ignore[call-overload]
    return f"{100 * done / size:.0f}%" if size > 0 else ""


def plain(report: Report) -> str:
    """Every column and every row of the report as text, for a pipe or a file (see the module
    docstring). The transfers are all those listed, not the terminal's last 30."""
    width = max(len(name) for name, _ in _header(report))
    lines = ["wtfs"] + [f"{name:<{width}}  {text}" for name, text in _header(report)]
    transfers = [
        [str(tr["_id"]), tr["path"], TransferStatus(tr["status"]).name, _progress(tr),
         f"{format_size(tr['transferred'])} / {format_size(tr['size'])}",
         f"{format_size(tr['rate'])}/s" if tr["rate"] else "", _eta(tr), tr["error"] or ""]
        for tr in report.transfers
    ]  # fmt: skip
    tables = [
        _plain_table("mounts", MOUNT_COLUMNS, [_mount_cells(m) for m in report.mounts], NO_MOUNT),
        _plain_table("transfers", TRANSFER_COLUMNS, transfers, NO_TRANSFER),
        _plain_table("locks", LOCK_COLUMNS, [_lock_cells(lock) for lock in report.locks]),
    ]
    if report.prefetches:
        rows = [_prefetch_cells(p) for p in report.prefetches]
        tables.append(_plain_table("prefetches", PREFETCH_COLUMNS, rows))
    if report.evictions:
        rows = [_eviction_cells(e) for e in report.evictions]
        tables.append(_plain_table("recent evictions", EVICTION_COLUMNS, rows))
    if report.failures:
        rows = [[str(f["time"])[:19], f["cause"]] for f in report.failures]
        tables.append(_plain_table("recent failures", ("time", "cause"), rows))
    for table in tables:
        lines += ["", *table]
    return "\n".join(lines) + "\n"


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
