"""Async access to the index: one worker thread at a time, so a database call never blocks the
event loop (another process may hold the write lock for a while, a server may be slow).

This is where the index's own failures become wtfs errors (`wtfs.errors.from_index`), once, and
where a write that met a full disk (`DiskFull`, SQLite's "database or disk is full") is tried
once more after making room (`on_full`, the GC): the failed transaction was rolled back, so
trying it again is safe.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio
from wtfs_index import Index, IndexFailure

from wtfs.errors import DiskFull, IndexUnavailable, from_index

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

#: backoff between attempts while the index cannot be reached (seconds)
RETRY_BASE = 0.1
RETRY_MAX = 2.0

#: set while this task is making room for the index: the GC's own index calls must not recurse
_making_room: contextvars.ContextVar[bool] = contextvars.ContextVar("making_room", default=False)


class AsyncIndex:
    def __init__(self, index: Index) -> None:
        self.sync = index
        self._limiter = trio.CapacityLimiter(1)
        #: why the last call could not reach the index, until one does (for the causes of
        #: reads that waited for it)
        self.unreachable: str | None = None
        #: makes room on the store's disk (the GC); True when it freed any. Set by the cache.
        self.on_full: Callable[[], Awaitable[bool]] | None = None

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await self.run_direct(fn, *args, **kwargs)
        except DiskFull as exc:
            if self.on_full is None or _making_room.get():
                raise
            log.warning("%s: making room, then trying again", exc.cause)
            token = _making_room.set(True)
            try:
                freed = await self.on_full()
            finally:
                _making_room.reset(token)
            if not freed:
                raise
            return await self.run_direct(fn, *args, **kwargs)

    async def run_direct(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As `run`, without making room on a full disk: for the GC's own calls, which hold
        the lock that making room would take again."""
        try:
            result = await trio.to_thread.run_sync(
                functools.partial(fn, *args, **kwargs), limiter=self._limiter
            )
        except IndexFailure as exc:
            error = from_index(exc)
            if isinstance(error, IndexUnavailable):
                self.unreachable = error.cause
            raise error from None
        self.unreachable = None
        return result

    async def run_retrying(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As `run`, trying again with backoff while the index cannot be reached (a database
        server restarting). The caller's deadline bounds it; the last cause names the index."""
        attempt = 0
        while True:
            try:
                return await self.run(fn, *args, **kwargs)
            except IndexUnavailable as exc:
                attempt += 1
                delay = random.uniform(0, min(RETRY_MAX, RETRY_BASE * 2**attempt))
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s (retrying)", exc.cause)
                await trio.sleep(delay)
