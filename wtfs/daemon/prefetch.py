"""`wtfs prefetch` on the daemon's side: the files under the paths asked for, and the two ways a
prefetch runs (`wtfs.cache.prefetch` does the fetching):

- inside a mount's daemon: the command records the request in the index, and the daemon's tick
  takes it up (`Index.prefetch_claim`) and runs it beside its live reads, which come first;
- on its own (`prefetch_alone`: a session file or `--session-id`, no mount): the command is an
  owner of the store of its own kind (`prefetch`), with its own cache manager, so it takes the
  same locks, claims and room as a daemon, and its heartbeat keeps its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio
from wtfs_index import Index, Owner, PrefetchFileRow, PrefetchRow

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.manager import CacheManager, CacheSettings
from wtfs.cache.prefetch import Outcome, Prefetcher
from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.errors import WtfsError
from wtfs.girder.client import GirderClient, girder_client
from wtfs.girder.metacache import FAILURES as METACACHE_FAILURES
from wtfs.girder.metacache import MetadataCache
from wtfs.namespace.session import Session
from wtfs.namespace.tree import DirNode, FileNode, Tree
from wtfs.providers.base import provider_settings
from wtfs.providers.registry import ProviderRegistry

log = logging.getLogger(__name__)


async def files_under(
    tree: Tree, paths: Sequence[str]
) -> tuple[list[FileNode], list[tuple[str, str]]]:
    """The files at or below `paths` (paths in the session; folders listed on the way), each
    once, in tree order; and the paths that name nothing, with why."""
    files: dict[int, FileNode] = {}
    errors: list[tuple[str, str]] = []

    async def walk(node: DirNode | FileNode) -> None:
        if isinstance(node, FileNode):
            files.setdefault(node.inode, node)
            return
        children = await tree.ensure_loaded(node)
        for name in sorted(children):
            child = children[name]
            assert isinstance(child, DirNode | FileNode)
            await walk(child)

    for path in paths or ["/"]:
        node = await tree.find(path)
        if node is None:
            errors.append((path, f"{path}: no such file or directory in the session"))
            continue
        assert isinstance(node, DirNode | FileNode)
        await walk(node)
    return list(files.values()), errors


async def run_prefetch(
    manager: CacheManager,
    tree: Tree,
    prefetch_id: int,
    paths: Sequence[str],
    *,
    start_fraction: float,
    cancelled: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Fetch the files under `paths` into the store, recording progress in prefetch
    `prefetch_id`. Files are fetched in the version the tree lists."""
    prefetcher = Prefetcher(manager, prefetch_id, start_fraction=start_fraction,
                            cancelled=cancelled)  # fmt: skip
    try:
        nodes, errors = await files_under(tree, paths)
    except WtfsError as exc:  # Girder could not list a folder: the run fails with the cause
        nodes, errors = [], [(path, exc.cause) for path in paths]
    return await prefetcher.run([node.ref() for node in nodes], errors)


async def take_requests(manager: CacheManager, tree: Tree, nursery: trio.Nursery,
                        start_fraction: float) -> None:  # fmt: skip
    """The daemon's tick: take up the prefetches asked of this mount, each run in `nursery`."""
    if manager.mountpoint is None:
        return
    index = manager.index
    rows = await index.run(index.sync.prefetch_claim, manager.mountpoint, manager.owner.owner_id)
    for row in rows:
        log.info("prefetch %d of %s", row.id, ", ".join(row.paths) or "/")
        nursery.start_soon(
            _run_logged, manager, tree, row.id, row.paths, start_fraction,
            name=f"prefetch-{row.id}",
        )  # fmt: skip


async def _run_logged(
    manager: CacheManager, tree: Tree, prefetch_id: int, paths: list[str], start_fraction: float
) -> None:
    try:
        outcome = await run_prefetch(manager, tree, prefetch_id, paths,
                                     start_fraction=start_fraction)  # fmt: skip
    except Exception:  # recorded as interrupted (Prefetcher.run): keep the daemon up
        log.exception("prefetch %d failed unexpectedly", prefetch_id)
        return
    log.info("prefetch %d ended %s%s", prefetch_id, outcome.state,
             f": {outcome.error}" if outcome.error else "")  # fmt: skip


#: what the command follows a prefetch with, given its id, while it runs
Follow = Callable[[AsyncIndex, int], Awaitable[None]]


async def prefetch_alone(
    config: Config,
    session: Session | Callable[[GirderClient | None], Awaitable[Session]],
    paths: Sequence[str],
    follow: Follow,
) -> tuple[PrefetchRow, list[PrefetchFileRow]]:
    """Run a prefetch of a session's files over the store, without a mount; its record and
    its files at the end. A SIGINT (Ctrl-C) or SIGTERM stops it between blocks, recorded
    CANCELLED (the caller exits 130)."""
    from wtfs.daemon.serve import load_tree, open_store_index

    store = Store(config.private_storage_path, config.index_url)
    girder = girder_client(config)
    try:
        if not isinstance(session, Session):
            session = await session(girder)
        tree = await load_tree(config, girder, session)
        try:
            tree.metacache = MetadataCache(store.root / "metadata")
        except METACACHE_FAILURES as exc:
            log.info("metadata cache unusable, listing without it: %s", exc)
        index = open_store_index(store, config)
        try:
            return await _alone(config, session, tree, store, index, girder, paths, follow)
        finally:
            index.close()
            if tree.metacache is not None:
                tree.metacache.close()
    finally:
        if girder is not None:
            await girder.aclose()


async def _alone(
    config: Config,
    session: Session,
    tree: Tree,
    store: Store,
    index: Index,
    girder: GirderClient | None,
    paths: Sequence[str],
    follow: Follow,
) -> tuple[PrefetchRow, list[PrefetchFileRow]]:
    owner = Owner.current("prefetch")
    index.reclaim_dead(owner)
    index.register_owner(owner, "prefetch", session_id=session.session_id,
                         session_origin=session.origin)  # fmt: skip
    async_index = AsyncIndex(index)
    providers = ProviderRegistry(provider_settings(config), girder)
    manager = CacheManager(
        store, async_index, owner, providers, CacheSettings.from_config(config),
        session_id=session.session_id,
        registration={"kind": "prefetch", "session_origin": session.origin},
    )  # fmt: skip
    prefetch_id = index.prefetch_create(session_id=session.session_id, paths=list(paths),
                                        owner_id=owner.owner_id)  # fmt: skip
    interrupted = False

    def cancelled() -> bool:
        return interrupted

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            following = trio.CancelScope()

            async def follow_until_done() -> None:
                with following:
                    await follow(async_index, prefetch_id)

            async def on_sigint() -> None:
                nonlocal interrupted
                import signal

                # Open until the end: a second Ctrl-C must not interrupt the cleanup either.
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        interrupted = True

            nursery.start_soon(follow_until_done)
            nursery.start_soon(on_sigint)
            await run_prefetch(manager, tree, prefetch_id, paths,
                               start_fraction=config.gc_collect_start_fraction,
                               cancelled=cancelled)  # fmt: skip
            following.cancel()
            nursery.cancel_scope.cancel()
        row = index.get_prefetch(prefetch_id)
        assert row is not None
        return row, index.prefetch_files(prefetch_id)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await manager.flush()
                index.unregister_owner(owner.owner_id)
            except WtfsError as exc:
                log.warning("the index could not record the end of the prefetch: %s", exc.cause)
            await providers.aclose()
