"""How `wtfs prefetch` reads its PATHs and shows its progress (records made by hand here; the
real runs are in tests/mount/test_prefetch.py)."""

from __future__ import annotations

import io
from pathlib import Path

from wtfs_index import PrefetchRow

from wtfs.cli import _mount_path, _session_paths
from wtfs.status.progress import PrefetchDisplay, prefetch_record, progress_line, summary


def row(**fields: object) -> PrefetchRow:
    base: dict[str, object] = dict(
        id=7, session_id="s", mountpoint="/mnt", paths=["/raw"], owner_id="o", state="running",
        files_total=4, files_done=1, files_failed=0, bytes_total=400, bytes_done=100,
        bytes_fetched=100, current="/raw/b", error=None, cancel=False, created=1000.0,
        started=1000.0, updated=1010.0, ended=None,
    )  # fmt: skip
    base.update(fields)
    return PrefetchRow(**base)  # type: ignore[arg-type]


def test_paths_in_a_mount_become_paths_in_its_session() -> None:
    mnt = Path("/mnt/data")
    assert _mount_path(mnt, Path("/mnt/data/raw/run-17")) == "/raw/run-17"
    assert _mount_path(mnt, Path("/mnt/data")) == "/"
    assert _mount_path(mnt, Path("/elsewhere/x")) == "/elsewhere/x"  # a session path
    assert _session_paths(["raw/x", "/raw/y/", "/"]) == ["/raw/x", "/raw/y", "/"]


def test_a_running_prefetch_shows_files_bytes_rate_and_eta() -> None:
    record = prefetch_record(row(), now=1010.0)
    assert record["rate"] == 10.0 and record["eta"] == 30.0
    assert progress_line(record) == (
        "prefetch 7 running: 1/4 files, 100 B of 400 B (25%), 10 B/s, ETA 30s"
    )


def test_an_ended_prefetch_has_no_eta_and_lists_its_failures() -> None:
    from wtfs_index import PrefetchFileRow

    ended = row(state="failed", files_done=3, files_failed=1, bytes_done=300, ended=1020.0,
                error="1 of 4 files failed")  # fmt: skip
    failed = [PrefetchFileRow("/raw/c", 100, "failed", 0, "c: 404"),
              PrefetchFileRow("/raw/a", 100, "done", 100, None)]  # fmt: skip
    record = prefetch_record(ended, failed, now=2000.0)
    assert record["eta"] is None and record["seconds"] == 20.0
    assert record["failures"] == [{"path": "/raw/c", "error": "c: 404"}]
    assert "3/4 files cached (300 B of 400 B); fetched 100 B in 20.0s (5 B/s)" in summary(record)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_progress_bar_and_a_pipe_plain_lines() -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    for out in (terminal, pipe):
        display = PrefetchDisplay(out=out)
        display.update(prefetch_record(row(), now=1010.0))
        display.close(prefetch_record(row(files_done=4, bytes_done=400), now=1020.0))
    assert pipe.getvalue() == (
        "prefetch 7 running: 1/4 files, 100 B of 400 B (25%), 10 B/s, ETA 30s\n"
    )  # one line a second at most: the second came within the same second
    shown = terminal.getvalue()
    assert "prefetch 7" in shown and "4/4 files" in shown and "━" in shown
    quiet = io.StringIO()
    PrefetchDisplay(quiet=True, out=quiet).update(prefetch_record(row()))
    assert quiet.getvalue() == ""
