"""The `wtfs` command. Thin: parse, load config, call the daemon/status/gc; map errors to exit
codes (2: bad config, session or arguments; 1: any other failure)."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from wtfs.config import Config, load_config
from wtfs.daemon.logs import open_deferred_log, setup_logging
from wtfs.errors import ConfigError, WtfsError

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0
REFRESH_POLL = 0.1  # seconds between looks at the mount's refresh counter


def fail(exc: WtfsError) -> NoReturn:
    click.echo(f"wtfs: {exc.cause}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one CLI error printer: WtfsError → one line on stderr and an exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WtfsError as exc:
            fail(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _config(ctx: click.Context) -> Config:
    config: Config = ctx.obj["config_loader"]()
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $WTFS_CONFIG, ./wtfs.yaml, ~/.config/wtfs/wtfs.yaml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """wtfs: Girder data as a read-only local file system."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["config_path"] = config_path
    ctx.obj["config_loader"] = guarded(lambda: load_config(config_path))


@main.command()
@click.argument("args", nargs=-1, metavar="[SESSION] MOUNTPOINT")
@click.option("--session-id", help="Fetch the session from Girder's /dm/session/{id}.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (for supervisors).")
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_context
@guarded
def mount(
    ctx: click.Context,
    args: tuple[str, ...],
    session_id: str | None,
    foreground: bool,
    ready_fd: int | None,
) -> None:
    """Mount a session (a YAML/JSON file, or --session-id) at MOUNTPOINT.

    Runs in the background by default and returns once the mount is ready, or fails with the
    reason; logs go to `log_file` (default: <private_storage_path>/logs/).
    """
    from wtfs.daemon.serve import MountRequest, serve

    if session_id is not None and len(args) != 1:
        raise ConfigError("with --session-id, give only the MOUNTPOINT")
    if session_id is None and len(args) != 2:
        raise ConfigError("usage: wtfs mount SESSION MOUNTPOINT (or --session-id ID MOUNTPOINT)")
    config = _config(ctx)
    request = MountRequest(
        mountpoint=Path(args[-1]).absolute(),
        session_file=Path(args[0]) if session_id is None else None,
        session_id=session_id,
    )
    if not foreground:
        _mount_in_background(ctx, (*args[:-1], str(request.mountpoint)), session_id)
        return
    log_file = config.log_file if ready_fd is not None else None
    default_log = config.private_storage_path / "logs" / f"mount-{request.mountpoint.name}.log"
    deferred = ready_fd is not None and log_file is None  # the default log lives in the store
    memory = setup_logging(config, ctx.obj["verbose"], log_file=log_file, deferred=deferred)
    outcome: list[WtfsError | None] = []

    def ready(error: WtfsError | None) -> None:
        outcome.append(error)
        if memory is not None and error is None:
            open_deferred_log(memory, config, default_log)
        if ready_fd is not None:
            code = 2 if isinstance(error, ConfigError) else 1
            message = "OK\n" if error is None else f"ERR {code} {error.cause}\n"
            os.write(ready_fd, message.encode())
            os.close(ready_fd)
        if error is not None:
            log.error("mount failed: %s", error.cause)

    trio.run(serve, config, request, ready)
    if outcome and outcome[0] is not None:
        fail(outcome[0])


def _mount_in_background(ctx: click.Context, args: tuple[str, ...], session_id: str | None) -> None:
    """Re-run ourselves with --foreground in a new session; wait for its ready message."""
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "wtfs"]
    if ctx.obj["config_path"]:
        argv += ["--config", ctx.obj["config_path"]]
    argv += ["-v"] * ctx.obj["verbose"]
    argv += [
        "mount",
        "--foreground",
        "--ready-fd",
        str(write_fd),
        *(["--session-id", session_id] if session_id else []),
        *args,
    ]
    # The API key travels in the environment (as it came), never in argv.
    try:
        with open(os.devnull, "r+b") as devnull:
            child = subprocess.Popen(
                argv,
                stdin=devnull,
                stdout=devnull,
                stderr=devnull,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
    except OSError as exc:
        os.close(write_fd)
        os.close(read_fd)
        raise WtfsError(f"cannot start the mount daemon ({argv[0]}): {exc.strerror}") from None
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        message = pipe.readline().strip() if ready else ""
    if not ready:
        child.terminate()
        click.echo(f"wtfs: the mount was not ready after {READY_TIMEOUT:g}s; stopped it", err=True)
        sys.exit(1)
    if message == "OK":
        click.echo(f"wtfs: mounted (pid {child.pid})", err=True)
        return
    if message.startswith("ERR "):
        _, code, cause = message.split(" ", 2)
        click.echo(f"wtfs: {cause}", err=True)
        sys.exit(int(code))
    child.wait(timeout=10)
    click.echo(f"wtfs: the mount daemon exited ({child.returncode}) before it was ready", err=True)
    sys.exit(1)


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Without a known daemon: detach even if busy.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the daemon.")
@click.pass_context
@guarded
def umount(ctx: click.Context, mountpoint: str, lazy: bool, timeout: float) -> None:
    """Unmount MOUNTPOINT: its daemon releases its locks, flushes the index and exits.

    The daemon serving it (found in the store's index) is asked to stop, which also ends reads
    stuck on the network and every copy of the mount bound into other namespaces; without a
    known daemon, `fusermount3 -u` is used.
    """
    path = Path(mountpoint).absolute()
    if not os.path.ismount(path):
        raise ConfigError(f"{path}: not mounted")
    pid = _mount_daemon(ctx, path)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, timeout) and not os.path.ismount(path):
            return
        log.warning("%s: daemon %d did not finish unmounting; detaching lazily", path, pid)
        lazy = True
    result = subprocess.run(
        ["fusermount3", "-u", *(["-z"] if lazy else []), str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise WtfsError(f"{path}: {result.stderr.strip() or 'fusermount3 failed'}")


def _mount_daemon(ctx: click.Context, path: Path) -> int | None:
    """The pid of the live wtfs daemon serving `path`, per the configured store's index."""
    from wtfs_index.index import Index

    try:
        config: Config = load_config(ctx.obj["config_path"])
    except ConfigError:
        return None  # no usable config: fall back to fusermount3
    index_path = config.private_storage_path / "index.sqlite3"
    if not index_path.exists():
        return None
    index = Index(index_path)
    try:
        row = index.live_mount(str(path))
    finally:
        index.close()
    return int(row["pid"]) if row is not None else None


def _wait_gone(pid: int, timeout: float) -> bool:
    from wtfs_index.owner import process_start_time

    deadline = time.monotonic() + timeout
    while process_start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(REFRESH_POLL)
    return True


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Include transfers finished > 1 min ago.")
@click.option("--session", "session_id", help="Only this session's transfers and locks.")
@click.option("--watch", is_flag=True, help="Refresh live until Ctrl-C.")
@click.pass_context
@guarded
def status(
    ctx: click.Context, as_json: bool, show_all: bool, session_id: str | None, watch: bool
) -> None:
    """Store usage, mounts, transfers, locks and evictions (exit 3 if any transfer FAILED)."""
    from wtfs.status.report import gather
    from wtfs.status.view import render_table, watch_table

    config = _config(ctx)
    if watch:
        watch_table(config, session_id=session_id, show_all=show_all)
        return
    report = gather(config, session_id=session_id, discard_old=not show_all)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_table(report)
    if report.failed_count:
        sys.exit(3)


@main.command()
@click.pass_context
@guarded
def gc(ctx: click.Context) -> None:
    """Run one GC pass now (evict to the end mark if usage is past the start mark)."""
    from wtfs_index.owner import Owner

    from wtfs.cache.store import Store
    from wtfs.config import format_size
    from wtfs.daemon.serve import gc_policy
    from wtfs.gc.evictor import collect

    config = _config(ctx)
    store = Store(config.private_storage_path)
    store.prepare()
    index = store.open_index()
    report = collect(index, store, gc_policy(config), Owner.current("gc").owner_id)
    index.close()
    click.echo(
        f"usage {format_size(report.usage_before)} → {format_size(report.usage_after)} of "
        f"{format_size(config.private_storage_capacity)}; evicted {len(report.evicted)} "
        f"entries ({format_size(report.freed)}); reclaimed {report.reclaimed} "
        f"in {report.seconds * 1000:.0f} ms"
    )


@main.group()
def session() -> None:
    """Work with the session of a running mount."""


@session.command("refresh")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.pass_context
@guarded
def session_refresh(ctx: click.Context, mountpoint: str, timeout: float) -> None:
    """Re-read the session's dataSet and Girder, updating the tree without unmounting."""
    import json as json_

    from wtfs_index.index import Index

    config = _config(ctx)
    path = Path(mountpoint).absolute()
    index_path = config.private_storage_path / "index.sqlite3"
    if not index_path.exists():
        raise ConfigError(f"private_storage_path: no store at {config.private_storage_path}")
    index = Index(index_path)

    def owner() -> tuple[int, int, int]:
        row = index.live_mount(str(path))
        if row is None:
            raise ConfigError(f"{path}: no running wtfs mount there (for this store)")
        stats = json_.loads(row["stats"])
        return row["pid"], stats.get("refreshes", 0), stats.get("refresh_failures", 0)

    try:
        pid, refreshes, failures = owner()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, now_refreshes, now_failures = owner()
            if now_failures > failures:
                raise WtfsError(f"{path}: refresh failed; see the mount's log")
            if now_refreshes > refreshes:
                click.echo(f"{path}: session refreshed")
                return
            time.sleep(REFRESH_POLL)
        raise WtfsError(f"{path}: no refresh within {timeout:g}s")
    finally:
        index.close()


@main.command()
@click.argument("transfer_ids", nargs=-1, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every FAILED transfer.")
@click.pass_context
@guarded
def retry(ctx: click.Context, transfer_ids: tuple[int, ...], all_failed: bool) -> None:
    """Re-queue FAILED transfers; a running mount of their session fetches them again."""
    from wtfs_index.index import Index, TransferStatus
    from wtfs_index.owner import is_alive

    if not transfer_ids and not all_failed:
        raise ConfigError("give TRANSFER_ID... or --failed")
    config = _config(ctx)
    path = config.private_storage_path / "index.sqlite3"
    if not path.exists():
        raise ConfigError(f"private_storage_path: no store at {config.private_storage_path}")
    index = Index(path)
    try:
        rows = index.request_retry(transfer_ids, all_failed=all_failed)
        owners = index.query("SELECT session_id, pid, pid_start FROM owners WHERE kind = 'mount'")
    finally:
        index.close()
    live = {r["session_id"] for r in owners if is_alive(r["pid"], r["pid_start"])}
    found = {r["id"] for r in rows}
    for missing in sorted(set(transfer_ids) - found):
        click.echo(f"transfer {missing}: no such transfer", err=True)
    for row in rows:
        if row["status"] != TransferStatus.FAILED:
            name = TransferStatus(row["status"]).name
            click.echo(f"transfer {row['id']}: {name}, not FAILED: left as it is")
            continue
        waiting = row["session_id"] not in live
        note = (
            f" (no mount of session {row['session_id']} runs: it waits for one)" if waiting else ""
        )
        click.echo(f"transfer {row['id']}: {row['path']} re-queued{note}")
    if set(transfer_ids) - found:
        sys.exit(1)


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its Girder and store (default: a temp dir).",
)
@click.option("--keep", is_flag=True, help="Leave Girder running and the session mounted.")
@guarded
def demo(workdir: str | None, keep: bool) -> None:
    """Start a local Girder with sample data, mount it, read and verify files, show status."""
    from wtfs.demo import run_demo

    run_demo(Path(workdir) if workdir else None, keep=keep)
