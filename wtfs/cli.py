"""The `wtfs` command. Thin: parse, load config, call the daemon/status/gc; map errors to exit
codes (2: bad config, session or arguments; 1: any other failure)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import trio

from wtfs.config import Config, load_config
from wtfs.daemon import ready as handshake
from wtfs.daemon.logs import open_deferred_log, setup_logging
from wtfs.errors import ConfigError, WtfsError, from_index

if TYPE_CHECKING:
    from wtfs_index import Index

    from wtfs.girder.client import GirderClient

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_TIMEOUT = 300.0
REFRESH_POLL = 0.1  # seconds between looks at the mount's refresh counter


def exit_code(exc: WtfsError | None) -> int:
    """The one place errors become exit codes: 2 for bad input (nothing was done), else 1."""
    if exc is None:
        return 0
    return 2 if isinstance(exc, ConfigError) else 1


def fail(exc: WtfsError) -> NoReturn:
    click.echo(f"wtfs: {exc.cause}", err=True)
    sys.exit(exit_code(exc))


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one CLI error printer: WtfsError → one line on stderr and an exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from wtfs_index import IndexDamaged, IndexFailure

        try:
            return fn(*args, **kwargs)
        except WtfsError as exc:
            fail(exc)
        except IndexDamaged as exc:
            fail(ConfigError(exc.cause))
        except IndexFailure as exc:
            fail(from_index(exc))

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _config(ctx: click.Context) -> Config:
    config: Config = ctx.obj["config_loader"]()
    return config


def _index(config: Config) -> Index:
    """The configured store's index, which must exist (a ConfigError says so otherwise)."""
    from wtfs.cache.store import Store

    store = Store(config.private_storage_path, config.index_url)
    if not store.has_index():
        raise ConfigError(f"private_storage_path: no store at {config.private_storage_path}")
    return store.open_index(lease=config.lease)


class _Wtfs(click.Group):
    """`wtfs`, which also answers mount.fuse3's call for an fstab line of type fuse.wtfs
    (`wtfs SOURCE MOUNTPOINT -o OPTIONS`, see wtfs/mounthelper.py) by turning it into the
    `wtfs mount` it means."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from wtfs.mounthelper import from_mount_fuse3

        try:
            mount_args = from_mount_fuse3(args, self.commands)
        except ConfigError as exc:
            fail(exc)
        return super().parse_args(ctx, mount_args if mount_args is not None else args)


@click.group(cls=_Wtfs, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wtfs", prog_name="wtfs", message="%(prog)s %(version)s")
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
@click.option("--noexec", is_flag=True, help="Mount noexec: no exec or mmap(PROT_EXEC) of files.")
@click.option("--ready-fd", type=int, hidden=True)
@click.pass_context
@guarded
def mount(
    ctx: click.Context,
    args: tuple[str, ...],
    session_id: str | None,
    foreground: bool,
    noexec: bool,
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
        noexec=noexec,
    )
    if not foreground:
        _mount_in_background(ctx, (*args[:-1], str(request.mountpoint)), session_id, noexec)
        return
    log_file = config.log_file if ready_fd is not None else None
    default_log = config.private_storage_path / "logs" / f"mount-{request.mountpoint.name}.log"
    deferred = ready_fd is not None and log_file is None  # the default log lives in the store
    memory = setup_logging(config, ctx.obj["verbose"], log_file=log_file, deferred=deferred)
    outcome: list[WtfsError | None] = []

    def ready(error: WtfsError | None, warnings: Sequence[str] = ()) -> None:
        outcome.append(error)
        if memory is not None and error is None:
            open_deferred_log(memory, config, default_log)
        if ready_fd is not None:
            handshake.send(ready_fd, exit_code(error), error.cause if error else "", warnings)
        if error is not None:
            log.error("mount failed: %s", error.cause)

    trio.run(serve, config, request, ready)
    if outcome and outcome[0] is not None:
        fail(outcome[0])


def _mount_in_background(
    ctx: click.Context, args: tuple[str, ...], session_id: str | None, noexec: bool
) -> None:
    """Re-run ourselves with --foreground in a new session; wait for its ready message."""
    pipe = handshake.ReadyPipe()
    argv = [sys.executable, "-m", "wtfs"]
    if ctx.obj["config_path"]:
        argv += ["--config", ctx.obj["config_path"]]
    argv += ["-v"] * ctx.obj["verbose"]
    argv += [
        "mount",
        "--foreground",
        "--ready-fd",
        str(pipe.fd),
        *(["--session-id", session_id] if session_id else []),
        *(["--noexec"] if noexec else []),
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
                pass_fds=(pipe.fd,),
                start_new_session=True,
            )
    except OSError as exc:
        pipe.close()
        raise WtfsError(f"cannot start the mount daemon ({argv[0]}): {exc.strerror}") from None
    answer = pipe.wait(READY_TIMEOUT)
    if answer.state == "timeout":
        child.terminate()
        click.echo(f"wtfs: the mount was not ready after {READY_TIMEOUT:g}s; stopped it", err=True)
        sys.exit(1)
    for warning in answer.warnings:
        click.echo(f"wtfs: warning: {warning}", err=True)
    if answer.ready:
        click.echo(f"wtfs: mounted (pid {child.pid})", err=True)
        return
    if answer.state == "failed":
        click.echo(f"wtfs: {answer.cause}", err=True)
        sys.exit(answer.code)
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
    """The pid of the live wtfs daemon serving `path`, per the configured store's index (only
    one this process can signal: same host, same PID namespace)."""
    from wtfs_index import IndexDamaged, IndexFailure, Owner

    try:
        config: Config = load_config(ctx.obj["config_path"])
        index = _index(config)
    except IndexDamaged as exc:  # unmount all the same: the daemon is not known, say why
        click.echo(f"wtfs: warning: {exc.cause}; unmounting with fusermount3", err=True)
        return None
    except (ConfigError, IndexFailure):
        return None  # no usable config or index: fall back to fusermount3
    try:
        row = index.live_mount(str(path), Owner.current("cli"))
    finally:
        index.close()
    return row.pid if row is not None else None


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
    from wtfs.status.view import plain, render_table, watch_table

    config = _config(ctx)
    if watch:
        watch_table(config, session_id=session_id, show_all=show_all)
        return
    report = gather(config, session_id=session_id, discard_old=not show_all)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif sys.stdout.isatty():
        render_table(report)
    else:  # a pipe or a file: rich would cut the table at 80 columns
        click.echo(plain(report), nl=False)
    if report.failed_count:
        sys.exit(3)


@main.command()
@click.pass_context
@guarded
def gc(ctx: click.Context) -> None:
    """Run one GC pass now (evict to the end mark if usage is past the start mark)."""
    from wtfs_index import Owner

    from wtfs.cache.store import Store
    from wtfs.config import format_size, gc_policy
    from wtfs.gc.evictor import collect

    config = _config(ctx)
    store = Store(config.private_storage_path, config.index_url)
    store.prepare()
    index = store.open_index(lease=config.lease)
    try:
        report = collect(index, store, gc_policy(config), Owner.current("gc"))
    finally:
        index.close()
    limited = ""
    if report.capacity < config.private_storage_capacity:
        limited = (
            f" (the filesystem holds no more; {format_size(config.private_storage_capacity)}"
            " configured)"
        )
    click.echo(
        f"usage {format_size(report.usage_before)} → {format_size(report.usage_after)} of "
        f"{format_size(report.capacity)}{limited}; evicted {len(report.evicted)} "
        f"entries ({format_size(report.freed)}); reclaimed {report.reclaimed} "
        f"in {report.seconds * 1000:.0f} ms"
    )


@main.command()
@click.option("--verify", is_flag=True, help="Also hash complete files that have a checksum.")
@click.option("--repair", is_flag=True, help="Repair what is found (see wtfs fsck --help).")
@click.option("--force", is_flag=True, help="Repair even while mounts of the store are live.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def fsck(ctx: click.Context, verify: bool, repair: bool, force: bool, as_json: bool) -> None:
    """Check the store's index against its data files, and the files against the index.

    Sizes, present ranges, data files no entry names, entries whose file is gone, unlinking
    batches left behind, what dead processes left; --verify hashes complete files with a
    checksum. --repair drops damaged entries or ranges (fetched again when read), sweeps
    orphans, finishes batches, and moves a damaged SQLite index aside, starting a fresh one
    (its data files are then orphans, swept). While a mount of the store is live it only
    checks, unless --force. Exit 0: clean; 1: problems found (repaired or not).
    """
    from wtfs.cache.fsck import fsck as check
    from wtfs.cache.store import Store

    config = _config(ctx)
    store = Store(config.private_storage_path, config.index_url)
    if not store.root.is_dir():
        raise ConfigError(f"private_storage_path: no store at {config.private_storage_path}")
    report = check(store, verify=verify, repair=repair, force=force, lease=config.lease)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))
    if not report.clean:
        sys.exit(1)


@main.command()
@click.argument("args", nargs=-1, metavar="SESSION|MOUNTPOINT [PATH]...")
@click.option("--session-id", help="The session from Girder's /dm/session/{id} (no mount).")
@click.option("--json", "as_json", is_flag=True, help="Print the prefetch's record at the end.")
@click.pass_context
@guarded
def prefetch(
    ctx: click.Context, args: tuple[str, ...], session_id: str | None, as_json: bool
) -> None:
    """Fetch a session's files (or those under PATHs) into the store ahead of use.

    Given a MOUNTPOINT, or a path inside a mount (MNT/raw/run-17), the mount's daemon does it,
    behind its live reads; given a SESSION file or --session-id, this command does it over the
    store. It stops at the GC start mark rather than evict other cached files. Exit 0: every
    file asked for is cached; 3: a transfer failed (the causes are printed); 130: Ctrl-C (run
    it again to resume: cached bytes are not fetched again).
    """
    from wtfs.daemon.serve import wtfs_mount_holding

    config = _config(ctx)
    if session_id is not None or (args and wtfs_mount_holding(Path(os.path.abspath(args[0])))
                                  is None):  # fmt: skip
        setup_logging(config, ctx.obj["verbose"])  # the run is here: its log too
    if session_id is not None:
        _prefetch_alone(config, None, session_id, _session_paths(args), as_json)
        return
    if not args:
        raise ConfigError("usage: wtfs prefetch SESSION|MOUNTPOINT [PATH]... (or --session-id ID)")
    first = Path(os.path.abspath(args[0]))
    mountpoint = wtfs_mount_holding(first)
    if mountpoint is None:
        if not Path(args[0]).is_file():
            raise ConfigError(f"{args[0]}: neither a session file nor a path in a wtfs mount")
        _prefetch_alone(config, Path(args[0]), None, _session_paths(args[1:]), as_json)
        return
    paths = [_mount_path(mountpoint, first)]
    paths += [_mount_path(mountpoint, Path(a)) for a in args[1:]]
    _prefetch_in_mount(config, mountpoint, [p for p in paths if p != "/"] or ["/"], as_json)


def _session_paths(args: Sequence[str]) -> list[str]:
    """PATHs in the session (`raw/x` or `/raw/x`)."""
    return ["/" + a.strip("/") if a.strip("/") else "/" for a in args]


def _mount_path(mountpoint: Path, path: Path) -> str:
    """A PATH given with a mountpoint as a path in the session: one inside the mount (absolute,
    or relative to here) is taken relative to the mount; anything else is a session path."""
    absolute = Path(os.path.abspath(path))
    if absolute == mountpoint or mountpoint in absolute.parents:
        return "/" + str(absolute.relative_to(mountpoint)).strip(".").strip("/")
    return _session_paths([str(path)])[0]


PREFETCH_POLL = 0.2  # seconds between looks at a prefetch's record
PICKUP = 30.0  # seconds a mount's daemon has to take up a prefetch (it looks every 2 s)


def _prefetch_in_mount(config: Config, mountpoint: Path, paths: list[str], as_json: bool) -> None:
    """Ask the daemon serving `mountpoint` (through the index) and follow it there."""
    from wtfs_index import Owner, PrefetchState

    from wtfs.status.progress import PrefetchDisplay, prefetch_record

    index = _index(config)
    try:
        me = Owner.current("cli")
        owner = next(
            (o for o in index.owners(me)
             if o.kind == "mount" and o.mountpoint == str(mountpoint) and o.alive),
            None,
        )  # fmt: skip
        if owner is None or owner.session_id is None:
            raise ConfigError(
                f"{mountpoint}: no running wtfs daemon of this store serves it (is the config "
                "the mount's?)"
            )
        prefetch_id = index.prefetch_create(session_id=owner.session_id, paths=paths,
                                            mountpoint=str(mountpoint))  # fmt: skip
        display = PrefetchDisplay(quiet=as_json)
        asked = time.monotonic()
        try:
            while True:
                row = index.get_prefetch(prefetch_id)
                assert row is not None
                display.update(prefetch_record(row))
                if row.state in PrefetchState.ENDED:
                    break
                if row.state == PrefetchState.REQUESTED and time.monotonic() - asked > PICKUP:
                    index.prefetch_cancel(prefetch_id)
                    raise WtfsError(
                        f"{mountpoint}: its daemon (pid {owner.pid}) did not take up the "
                        f"prefetch within {PICKUP:g}s (a wtfs older than `wtfs prefetch`?)"
                    )
                if not any(o.owner_id == owner.owner_id and o.alive for o in index.owners(me)):
                    index.reclaim_dead(me)  # its daemon died: the record says so
                    if row.state == PrefetchState.REQUESTED:
                        index.prefetch_cancel(prefetch_id)
                time.sleep(PREFETCH_POLL)
        except KeyboardInterrupt:
            index.prefetch_cancel(prefetch_id)
            deadline = time.monotonic() + 30
            row = index.get_prefetch(prefetch_id)
            while row is not None and row.state not in PrefetchState.ENDED:
                if time.monotonic() > deadline:
                    break
                time.sleep(PREFETCH_POLL)
                row = index.get_prefetch(prefetch_id)
        finally:
            display.close()
        row = index.get_prefetch(prefetch_id)
        assert row is not None
        _prefetch_end(prefetch_record(row, index.prefetch_files(prefetch_id)), as_json)
    finally:
        index.close()


def _prefetch_alone(
    config: Config,
    session_file: Path | None,
    session_id: str | None,
    paths: list[str],
    as_json: bool,
) -> None:
    """Run the prefetch here, over the store: an owner of its own kind, as a daemon is."""
    from wtfs.cache.aindex import AsyncIndex
    from wtfs.daemon.prefetch import prefetch_alone
    from wtfs.daemon.serve import MountRequest, load_session
    from wtfs.namespace.session import Session
    from wtfs.status.progress import PrefetchDisplay, prefetch_record

    request = MountRequest(Path("/"), session_file=session_file, session_id=session_id)
    display = PrefetchDisplay(quiet=as_json)

    async def follow(index: AsyncIndex, prefetch_id: int) -> None:
        while True:
            row = await index.run(index.sync.get_prefetch, prefetch_id)
            if row is not None:
                display.update(prefetch_record(row))
            await trio.sleep(PREFETCH_POLL)

    async def session(girder: GirderClient | None) -> Session:
        return await load_session(request, girder)

    try:
        row, files = trio.run(prefetch_alone, config, session, paths, follow)
    except KeyboardInterrupt:  # before the run could take SIGINT over: nothing was started
        display.close()
        click.echo("wtfs: prefetch interrupted", err=True)
        sys.exit(130)
    finally:
        display.close()
    _prefetch_end(prefetch_record(row, files), as_json)


def _prefetch_end(record: dict[str, Any], as_json: bool) -> NoReturn:
    """The last word of a prefetch, and its exit code: 0 done, 3 failed, 130 cancelled."""
    from wtfs_index import PrefetchState

    from wtfs.status.progress import summary

    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(summary(record))
    state = record["state"]
    if state == PrefetchState.DONE:
        sys.exit(0)
    if state == PrefetchState.CANCELLED:
        click.echo(f"wtfs: prefetch {record['_id']} cancelled; run it again to resume", err=True)
        sys.exit(130)
    click.echo(f"wtfs: prefetch {record['_id']} failed: {record['error'] or state}", err=True)
    for failure in record.get("failures", []):
        click.echo(f"  {failure['path']}: {failure['error']}", err=True)
    sys.exit(3 if state == PrefetchState.FAILED else 1)


@main.group()
def session() -> None:
    """Sessions kept in Girder (create, list, delete) and the session of a running mount."""


def _with_girder(config: Config, call: Callable[[GirderClient], Awaitable[T]]) -> T:
    """Run one call of Girder's session API on a client made from the config (its API key)."""
    from wtfs.girder.client import GirderClient

    api_url = config.girder.api_url
    if api_url is None:
        raise ConfigError("girder.api_url: not set (in the config or $WTFS_GIRDER_API_URL)")
    if config.girder.api_key is None:  # a session belongs to a user: anonymous is always 401
        raise ConfigError("no Girder API key: set $GIRDER_API_KEY or girder.api_key_file")

    async def run() -> T:
        girder = GirderClient(
            api_url,
            config.girder.api_key,
            connect_timeout=config.network.connect_timeout,
            read_timeout=config.network.read_timeout,
        )
        try:
            return await call(girder)
        finally:
            await girder.aclose()

    return trio.run(run)


@session.command("create")
@click.argument("file", required=False)
@click.option("--dataset", "data_set", metavar="JSON", help="The dataSet itself, instead of FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the session record, not its id.")
@click.pass_context
@guarded
def session_create(
    ctx: click.Context, file: str | None, data_set: str | None, as_json: bool
) -> None:
    """Create a session in Girder and print its id (`wtfs mount --session-id ID` mounts it).

    FILE is a session file as `wtfs mount` reads it (YAML/JSON `{dataSet: [...]}`); or give
    `--dataset '[{"itemId": ..., "mountPath": "/data"}]'`. It is checked here first, with the
    same rules as the server's, which also checks that you can read every object.
    """
    from wtfs.girder.sessions import create_session
    from wtfs.namespace.session import load_session_file, parse_session

    if (file is None) == (data_set is None):
        raise ConfigError("give a session FILE or --dataset JSON (one of them)")
    if file is not None:
        local = load_session_file(file)
    else:
        assert data_set is not None
        try:
            document = json.loads(data_set)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--dataset: not valid JSON: {exc}") from None
        local = parse_session(document, session_id="", origin="--dataset")
    pairs = [(e.item_id, e.mount_path) for e in local.data_set]
    record = _with_girder(_config(ctx), lambda girder: create_session(girder, pairs))
    click.echo(json.dumps(record, indent=2) if as_json else record["_id"])


@session.command("list")
@click.option("--all", "every", is_flag=True, help="Every session you may read (admins: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@guarded
def session_list(ctx: click.Context, every: bool, as_json: bool) -> None:
    """List your sessions in Girder (with --all, every session you may read)."""
    from wtfs.girder.sessions import list_sessions
    from wtfs.status.view import render_sessions

    records = _with_girder(_config(ctx), lambda girder: list_sessions(girder, every=every))
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        click.echo(render_sessions(records, show_owner=every))


@session.command("delete")
@click.argument("session_id", metavar="ID")
@click.pass_context
@guarded
def session_delete(ctx: click.Context, session_id: str) -> None:
    """Delete a session from Girder; the server releases the locks taken under it."""
    from wtfs.girder.sessions import delete_session

    _with_girder(_config(ctx), lambda girder: delete_session(girder, session_id))
    click.echo(f"deleted session {session_id}")


@session.command("refresh")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.pass_context
@guarded
def session_refresh(ctx: click.Context, mountpoint: str, timeout: float) -> None:
    """Re-read the session's dataSet and Girder, updating the tree without unmounting."""
    from wtfs_index import Owner

    config = _config(ctx)
    path = Path(mountpoint).absolute()
    index = _index(config)
    me = Owner.current("cli")

    def owner() -> tuple[int, int, int]:
        row = index.live_mount(str(path), me)
        if row is None or row.pid is None:
            raise ConfigError(f"{path}: no running wtfs mount there (for this store)")
        stats = row.stats
        return row.pid, stats.get("refreshes", 0), stats.get("refresh_failures", 0)

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
    from wtfs_index import Owner, TransferStatus

    if not transfer_ids and not all_failed:
        raise ConfigError("give TRANSFER_ID... or --failed")
    config = _config(ctx)
    index = _index(config)
    try:
        rows = index.request_retry(transfer_ids, all_failed=all_failed)
        owners = index.owners(Owner.current("cli"))
    finally:
        index.close()
    live = {o.session_id for o in owners if o.kind == "mount" and o.alive}
    found = {r.id for r in rows}
    for missing in sorted(set(transfer_ids) - found):
        click.echo(f"transfer {missing}: no such transfer", err=True)
    for row in rows:
        if row.status != TransferStatus.FAILED:
            name = TransferStatus(row.status).name
            click.echo(f"transfer {row.id}: {name}, not FAILED: left as it is")
            continue
        waiting = row.session_id not in live
        note = f" (no mount of session {row.session_id} runs: it waits for one)" if waiting else ""
        click.echo(f"transfer {row.id}: {row.path} re-queued{note}")
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
