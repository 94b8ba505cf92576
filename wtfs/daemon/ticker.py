"""The daemon's periodic tick (every 2 s): move transfer work on.

Every `interval` seconds it takes the transfers of this mount's session that `wtfs retry`
re-queued and runs them again, each in its own record, takes up the prefetches `wtfs prefetch`
asked of this mount (`wtfs.daemon.prefetch`), and reclaims what dead processes left (their
TRANSFERRING rows become FAILED with a cause, their locks and claims are dropped).
"""

from __future__ import annotations

import logging
import time

import trio
from wtfs_index import TransferStatus

from wtfs.cache.manager import CacheManager
from wtfs.daemon.prefetch import take_requests
from wtfs.errors import WtfsError
from wtfs.namespace.tree import FileNode, Tree

log = logging.getLogger(__name__)


class Ticker:
    def __init__(
        self,
        manager: CacheManager,
        tree: Tree,
        interval: float = 2.0,
        *,
        prefetch_start_fraction: float = 0.9,
    ) -> None:
        self.manager = manager
        self.tree = tree
        self.interval = interval
        #: where a prefetch stops: the GC's start mark (`gc_collect_start_fraction`)
        self.prefetch_start_fraction = prefetch_start_fraction

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await self.tick(nursery)
                except WtfsError as exc:  # the index is unreachable or full: next tick
                    log.warning("transfer tick failed: %s", exc.cause)
                except Exception:
                    log.exception("transfer tick failed")
                await trio.sleep(self.interval)

    async def tick(self, nursery: trio.Nursery) -> None:
        index = self.manager.index
        await index.run(index.sync.reclaim_dead, self.manager.owner)
        await take_requests(self.manager, self.tree, nursery, self.prefetch_start_fraction)
        rows = await index.run(
            index.sync.claim_retries, self.manager.owner.owner_id, self.manager.session_id
        )
        for row in rows:
            node = await self.tree.find(row.path)
            if not isinstance(node, FileNode):
                await index.run(
                    index.sync.transfer_update,
                    row.id,
                    status=int(TransferStatus.FAILED),
                    end_time=time.time(),
                    error=f"{row.path} is no longer in the session",
                )
                continue
            start, end = row.start_offset, row.start_offset + row.size
            log.info("retrying transfer %d: %s [%d, %d)", row.id, row.path, start, end)
            nursery.start_soon(self._refetch, node, row.id, start, max(end, start + 1))

    async def _refetch(self, node: FileNode, transfer_id: int, start: int, end: int) -> None:
        try:
            await self.manager.refetch(node.ref(), transfer_id, start, min(end, node.size))
        except Exception as exc:  # the transfer record carries the cause
            log.warning("retry of transfer %d failed: %s", transfer_id, exc)
