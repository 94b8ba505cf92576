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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio
from prometheus_client import CollectorRegistry
from wtfs_index.owner import Owner

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.manager import CacheManager, CacheSettings
from wtfs.cache.stats import Stats
from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.daemon.ticker import Ticker
from wtfs.errors import ConfigError, WtfsError
from wtfs.fuse.operations import Operations, Presentation
from wtfs.gc.evictor import GcPolicy
from wtfs.gc.scheduler import GcScheduler
from wtfs.girder.client import GirderClient
from wtfs.girder.metacache import MetadataCache
from wtfs.namespace.session import Session, fetch_session, load_session_file
from wtfs.namespace.tree import Tree
from wtfs.providers.base import ProviderSettings
from wtfs.providers.registry import ProviderRegistry
from wtfs.providers.retry import RetryPolicy
from wtfs.status.metrics import WtfsCollector, serve_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    session_file: Path | None = None
    session_id: str | None = None


def make_girder(config: Config) -> GirderClient | None:
    if config.girder.api_url is None:
        return None
    return GirderClient(
        config.girder.api_url,
        config.girder.api_key,
        connect_timeout=config.network.connect_timeout,
        read_timeout=config.network.read_timeout,
        bulk_listing=config.girder.bulk_listing,
    )


def provider_settings(config: Config) -> ProviderSettings:
    return ProviderSettings(
        connect_timeout=config.network.connect_timeout,
        read_timeout=config.network.read_timeout,
        allowed_local_roots=tuple(str(p) for p in config.providers.allowed_local_roots),
        http_headers=config.providers.http_headers,
        options=config.providers.options,
    )


def retry_policy(config: Config) -> RetryPolicy:
    net = config.network
    return RetryPolicy(
        attempts=net.retry_attempts,
        base_delay=net.retry_base_delay,
        max_delay=net.retry_max_delay,
        deadline=net.read_deadline,
    )


def gc_policy(config: Config) -> GcPolicy:
    return GcPolicy(
        config.private_storage_capacity,
        config.gc_collect_start_fraction,
        config.gc_collect_end_fraction,
    )


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


async def serve(
    config: Config, request: MountRequest, ready: Callable[[WtfsError | None], None]
) -> None:
    """Mount and serve until unmounted or signalled. Calls `ready` once, with None or the error."""
    mountpoint = request.mountpoint.resolve()
    store = Store(config.private_storage_path)
    girder: GirderClient | None = None
    try:
        girder = make_girder(config)
        session = await load_session(request, girder)
        tree = Tree(girder)
        try:
            await tree.populate(session)
        except WtfsError as exc:
            raise ConfigError(f"session {session.session_id}: {exc.cause}") from None
        check_mountpoint(mountpoint)
        store.prepare()  # last: a refused mount writes nothing
    except WtfsError as exc:
        if girder is not None:
            await girder.aclose()
        ready(exc)
        return
    await _serve_mounted(config, request, session, tree, store, girder, mountpoint, ready)


async def _serve_mounted(
    config: Config,
    request: MountRequest,
    session: Session,
    tree: Tree,
    store: Store,
    girder: GirderClient | None,
    mountpoint: Path,
    ready: Callable[[WtfsError | None], None],
) -> None:
    index = store.open_index()
    tree.metacache = MetadataCache(store.root / "metadata")
    owner = Owner.current("mount")
    store.recover(index)
    index.register_owner(
        owner,
        "mount",
        mountpoint=str(mountpoint),
        session_id=session.session_id,
        session_origin=session.origin,
    )
    stats = Stats()
    providers = ProviderRegistry(provider_settings(config), girder)
    gc = GcScheduler(
        AsyncIndex(index),
        store,
        gc_policy(config),
        owner.owner_id,
        config.gc_run_interval,
        stats,
        (config.transfer_history_max_count, config.transfer_history_max_age_days),
    )
    manager = CacheManager(
        store,
        index,
        owner,
        providers,
        CacheSettings(
            config.private_storage_capacity,
            config.block_size,
            config.readahead_blocks,
            config.max_concurrent_transfers,
            config.network.read_deadline,
            retry_policy(config),
        ),
        session_id=session.session_id,
        mountpoint=str(mountpoint),
        make_room=gc.make_room,
        stats=stats,
    )
    look = Presentation(
        uid=config.mount.uid if config.mount.uid is not None else os.getuid(),
        gid=config.mount.gid if config.mount.gid is not None else os.getgid(),
        umask=config.mount.umask,
        entry_timeout=config.mount.entry_timeout,
        attr_timeout=config.mount.attr_timeout,
    )
    options = set(pyfuse3.default_options) | {"fsname=wtfs", "subtype=wtfs", "ro"}
    if config.mount.allow_other:
        options.add("allow_other")
    try:
        pyfuse3.init(Operations(tree, manager, look), str(mountpoint), options)
    except RuntimeError as exc:
        index.unregister_owner(owner.owner_id)
        ready(ConfigError(f"mountpoint {mountpoint}: mount failed: {exc}"))
        return
    log.info("mounted session %s at %s", session.session_id, mountpoint)
    unmount = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            await nursery.start(gc.run)
            refresher = Refresher(request, tree, girder, stats, manager)
            nursery.start_soon(_on_signals, refresher)
            await nursery.start(Ticker(manager, tree).run)
            if config.metrics_port is not None:
                collector = WtfsCollector(stats, index, config.private_storage_capacity,
                                          str(mountpoint))  # fmt: skip
                await nursery.start(serve_metrics, config.metrics_port,
                                    functools.partial(_registry, collector))  # fmt: skip
            nursery.start_soon(
                trio.to_thread.run_sync, set_read_ahead, mountpoint, config.mount.read_ahead_kb
            )
            ready(None)
            await pyfuse3.main()
            # main() returns after an external `fusermount3 -u` too: then there is nothing to undo.
            unmount = await trio.to_thread.run_sync(os.path.ismount, mountpoint)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            pyfuse3.close(unmount=unmount)
            await manager.flush()
            index.unregister_owner(owner.owner_id)
            await providers.aclose()
            if girder is not None:
                await girder.aclose()
            index.close()
            tree.metacache.close()
        log.info("unmounted %s", mountpoint)


def _registry(collector: WtfsCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


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


async def _on_signals(refresher: Refresher) -> None:
    """SIGTERM/SIGINT unmount; SIGHUP refreshes the session (`wtfs session refresh`)."""
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    nursery.start_soon(refresher.refresh)
                    continue
                log.info("received %s: unmounting", signal.Signals(signum).name)
                refresher.manager.shutdown()
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()
                return
