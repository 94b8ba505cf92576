"""The mount daemon: one root trio nursery wiring store, providers, GC, cache manager and FUSE.

Start-up order matters: validate everything that can be wrong (store, Girder, session, the
mountpoint) *before* mounting, so a bad input mounts nothing; then mount, then report ready.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio
from wtfs_index import Index, IndexDamaged, IndexFailure, Owner
from wtfs_index.sqlite import refuse_shared_filesystem

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.manager import CacheManager, CacheSettings
from wtfs.cache.memory import tame_malloc
from wtfs.cache.space import capacity_warning, measure
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.config import Config, gc_policy
from wtfs.daemon.ticker import Ticker
from wtfs.errors import ConfigError, WtfsError, from_index
from wtfs.fuse.operations import Operations
from wtfs.gc.scheduler import GcScheduler
from wtfs.girder.client import GirderClient, girder_client
from wtfs.girder.metacache import FAILURES as METACACHE_FAILURES
from wtfs.girder.metacache import MetadataCache
from wtfs.namespace.session import Session, fetch_session, load_session_file
from wtfs.namespace.tree import Tree
from wtfs.providers.base import provider_settings
from wtfs.providers.registry import ProviderRegistry

log = logging.getLogger(__name__)


#: how the daemon says it is up (error None, with warnings for its user) or why it never will be
Ready = Callable[[WtfsError | None, Sequence[str]], None]


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    session_file: Path | None = None
    session_id: str | None = None
    noexec: bool = False  # `mount -o noexec` (also implied by fstab's `user`)


def open_store_index(store: Store, config: Config) -> Index:
    """Prepare the store and open its index, or fail with one line saying what to do.

    SQLite on a network or FUSE filesystem is refused before anything is written.
    """
    if store.index_url is None:
        existing = store.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            refuse_shared_filesystem(existing)
        except IndexFailure as exc:
            raise from_index(exc) from None
    store.prepare()
    try:
        return store.open_index(lease=config.lease)
    except IndexDamaged as exc:
        raise ConfigError(exc.cause) from None
    except IndexFailure as exc:
        raise from_index(exc) from None


def mount_entry(mountpoint: Path) -> tuple[str, str] | None:
    """(device "major:minor", fs type) of what is mounted exactly at `mountpoint`, if anything.

    Read from /proc/self/mountinfo: unlike stat(), it never blocks on a dead FUSE endpoint.
    """
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode()
            if point == target:
                fstype = fields[fields.index("-") + 1]
                return fields[2], fstype
    return None


def wtfs_mount_holding(path: Path) -> Path | None:
    """The wtfs mount (fuse.wtfs in /proc/self/mountinfo) at or above absolute `path`, the
    innermost one; None when `path` is in none. Read from the mount table: never a stat of the
    mount, which could wait on its daemon."""
    target = os.path.normpath(path)
    best: str | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if "-" not in fields[5:]:
                continue
            if fields[fields.index("-", 5) + 1] != "fuse.wtfs":
                continue
            point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode()
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) > len(best)):
                best = point
    return Path(best) if best is not None else None


def check_mountpoint(mountpoint: Path) -> None:
    """A usable mountpoint: an empty directory. A dead FUSE mount left there is cleaned up."""
    if mount_entry(mountpoint) is not None:
        try:
            os.listdir(mountpoint)  # needs the daemon: a dead endpoint answers ENOTCONN
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
                raise ConfigError(f"mountpoint {mountpoint}: {exc.strerror}") from None
            log.warning(
                "%s: a dead FUSE mount is there (transport endpoint is not connected): "
                "unmounting it",
                mountpoint,
            )
            subprocess.run(
                ["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True
            )
        else:
            raise ConfigError(f"mountpoint {mountpoint}: something is already mounted there")
    try:
        is_dir = mountpoint.is_dir()
        empty = is_dir and not any(os.scandir(mountpoint))
    except OSError as exc:
        raise ConfigError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if not mountpoint.exists():
        raise ConfigError(f"mountpoint {mountpoint}: no such directory")
    if not is_dir:
        raise ConfigError(f"mountpoint {mountpoint}: not a directory")
    if mount_entry(mountpoint) is not None:
        raise ConfigError(f"mountpoint {mountpoint}: something is already mounted there")
    if not empty:
        raise ConfigError(f"mountpoint {mountpoint}: directory is not empty")


def set_read_ahead(mountpoint: Path, kb: int) -> None:
    """Raise the kernel read-ahead of our FUSE device (its bdi) so it asks 1 MiB at a time."""
    try:
        entry = mount_entry(mountpoint)
        if entry is not None:
            Path(f"/sys/class/bdi/{entry[0]}/read_ahead_kb").write_text(str(kb))
    except OSError as exc:
        log.info("could not set read_ahead_kb on %s: %s", mountpoint, exc)


async def load_session(request: MountRequest, girder: GirderClient | None) -> Session:
    if request.session_file is not None:
        return load_session_file(request.session_file)
    assert request.session_id is not None
    if girder is None:
        raise ConfigError("--session-id needs girder.api_url in the config")
    return await fetch_session(girder, request.session_id)


async def load_tree(config: Config, girder: GirderClient | None, session: Session) -> Tree:
    """The session's tree, listed from Girder; a session that cannot be listed is bad input
    (exit 2: nothing is mounted or fetched)."""
    tree = Tree(girder)
    tree.check_deadline = config.network.read_deadline
    try:
        await tree.populate(session)
    except WtfsError as exc:
        raise ConfigError(f"session {session.session_id}: {exc.cause}") from None
    return tree


async def serve(config: Config, request: MountRequest, ready: Ready) -> None:
    """Mount and serve until unmounted or signalled. Calls `ready` once, with None or the error."""
    tame_malloc()
    mountpoint = request.mountpoint.resolve()
    store = Store(config.private_storage_path, config.index_url)
    girder: GirderClient | None = None
    try:
        girder = girder_client(config)
        session = await load_session(request, girder)
        tree = await load_tree(config, girder, session)
        check_mountpoint(mountpoint)
        index = open_store_index(store, config)  # last: a refused mount writes nothing
    except WtfsError as exc:
        if girder is not None:
            await girder.aclose()
        ready(exc, ())
        return
    await _serve_mounted(config, request, session, tree, store, index, girder, mountpoint, ready)


async def _serve_mounted(
    config: Config,
    request: MountRequest,
    session: Session,
    tree: Tree,
    store: Store,
    index: Index,
    girder: GirderClient | None,
    mountpoint: Path,
    ready: Ready,
) -> None:
    try:
        tree.metacache = MetadataCache(store.root / "metadata")
    except METACACHE_FAILURES as exc:
        log.warning("metadata cache unusable, listing without it: %s", exc)
    owner = Owner.current("mount")
    try:
        warnings = _start_store(config, store, index, owner, session, mountpoint)
    except IndexFailure as exc:  # an index that opened but cannot be read or written
        index.close()
        if tree.metacache is not None:
            tree.metacache.close()
        if girder is not None:
            await girder.aclose()
        ready(ConfigError(exc.cause) if isinstance(exc, IndexDamaged) else from_index(exc), ())
        return
    registration: dict[str, str | None] = {
        "kind": "mount",
        "mountpoint": str(mountpoint),
        "session_origin": session.origin,
    }
    stats = Stats()
    providers = ProviderRegistry(provider_settings(config), girder)
    async_index = AsyncIndex(index)
    gc = GcScheduler(
        async_index,
        store,
        gc_policy(config),
        owner,
        config.gc_run_interval,
        stats,
        (config.transfer_history_max_count, config.transfer_history_max_age_days),
    )
    manager = CacheManager(
        store,
        async_index,
        owner,
        providers,
        CacheSettings.from_config(config),
        session_id=session.session_id,
        mountpoint=str(mountpoint),
        make_room=gc.make_room,
        stats=stats,
        registration=registration,
    )
    options = set(pyfuse3.default_options) | {"fsname=wtfs", "subtype=wtfs", "ro"}
    if config.mount.allow_other:
        options.add("allow_other")
    if request.noexec:
        options.add("noexec")
    try:
        pyfuse3.init(Operations(tree, manager, config.mount), str(mountpoint), options)
    except RuntimeError as exc:
        index.unregister_owner(owner.owner_id)
        ready(ConfigError(f"mountpoint {mountpoint}: mount failed: {exc}"), ())
        return
    log.info("mounted session %s at %s", session.session_id, mountpoint)
    unmount = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            await nursery.start(gc.run)
            refresher = Refresher(request, tree, girder, stats, manager)
            nursery.start_soon(_on_signals, refresher)
            ticker = Ticker(manager, tree,
                            prefetch_start_fraction=config.gc_collect_start_fraction)  # fmt: skip
            await nursery.start(ticker.run)
            if config.metrics_port is not None:
                # Only here: prometheus_client costs the daemon ~4 MiB it needs for nothing else.
                from wtfs.status.metrics import WtfsCollector, registry_of, serve_metrics

                collector = WtfsCollector(stats, index, config.private_storage_capacity,
                                          str(mountpoint))  # fmt: skip
                await nursery.start(serve_metrics, config.metrics_port,
                                    functools.partial(registry_of, collector))  # fmt: skip
            nursery.start_soon(
                trio.to_thread.run_sync, set_read_ahead, mountpoint, config.mount.read_ahead_kb
            )
            ready(None, warnings)
            await pyfuse3.main()
            # main() returns after an external `fusermount3 -u` too: then there is nothing to undo.
            # (mountinfo, not os.path.ismount: a stat of the mountpoint would wait for an answer
            # from this very daemon, which no longer serves.)
            unmount = mount_entry(mountpoint) is not None
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            pyfuse3.close(unmount=unmount)
            # The index may be what failed (unreachable, full, damaged under us): the rest of
            # the cleanup goes on, and its rows are reclaimed by whoever comes next.
            try:
                await manager.flush()
                index.unregister_owner(owner.owner_id)
            except (WtfsError, IndexFailure) as exc:
                log.warning("the index could not record the unmount: %s", exc)
            await providers.aclose()
            if girder is not None:
                await girder.aclose()
            index.close()
            if tree.metacache is not None:
                tree.metacache.close()
        log.info("unmounted %s", mountpoint)


def _start_store(
    config: Config, store: Store, index: Index, owner: Owner, session: Session, mountpoint: Path
) -> list[str]:
    """Recover the store, register this mount in its index; the warnings for the user."""
    store.recover(index, owner)
    warnings = []
    capacity = measure(store, config.private_storage_capacity, config.disk_reserve,
                       index.summary())  # fmt: skip
    if capacity.limited:
        warnings.append(capacity_warning(capacity, store))
        log.warning("%s", warnings[-1])
    index.register_owner(
        owner,
        "mount",
        mountpoint=str(mountpoint),
        session_id=session.session_id,
        session_origin=session.origin,
    )
    return warnings


class Refresher:
    """Re-read the session and Girder, update the tree, make the kernel forget stale names."""

    def __init__(self, request: MountRequest, tree: Tree, girder: GirderClient | None,
                 stats: Stats, manager: CacheManager) -> None:  # fmt: skip
        self.request = request
        self.tree = tree
        self.girder = girder
        self.stats = stats
        self.manager = manager
        self._lock = trio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            try:
                session = await load_session(self.request, self.girder)
                gone = await self.tree.refresh(session)
            except WtfsError as exc:
                log.error("session refresh failed, the tree is unchanged: %s", exc.cause)
                self.stats.refresh_failures += 1
            else:
                for parent, name in gone:
                    pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
                log.info("session refreshed: %d names changed or went away", len(gone))
                self.stats.refreshes += 1
            await self.manager.flush()


def log_tasks() -> None:
    """Log every task of the daemon and where it waits (SIGUSR1): what a stuck read waits for,
    without a debugger."""
    lines = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = [f"{f.f_code.co_name}:{lineno}" for f, lineno in task.iter_await_frames()]
        lines.append(f"{'  ' * depth}{task.name}: {' > '.join(frames[-6:])}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    root = trio.lowlevel.current_root_task()
    if root is not None:
        walk(root, 0)
    log.warning("tasks (SIGUSR1):\n%s", "\n".join(lines))


async def _on_signals(refresher: Refresher) -> None:
    """SIGTERM/SIGINT unmount; SIGHUP refreshes the session (`wtfs session refresh`); SIGUSR1
    logs every task and where it waits."""
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    nursery.start_soon(refresher.refresh)
                    continue
                if signum == signal.SIGUSR1:
                    log_tasks()
                    continue
                log.info("received %s: unmounting", signal.Signals(signum).name)
                refresher.manager.shutdown()
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()
                return
