"""Async access to the index: one worker thread at a time, so a database call never blocks the
event loop (another process may hold the write lock for a while, a server may be slow).

One exception, for speed: a small call of a local index (SQLite's `quick_calls`: a reader's open,
a fetch's claims and commits, a close) runs on the event loop's own thread when no other call is
in flight, the index's write lock is free at once (`without_waiting`, else it goes to the thread
after all), and its running mean stays under `QUICK_BUDGET` (`wtfs.cache.quick`; a call's first
runs are on the worker thread, which measures it too: `reserve` grows with the entries). The
hop to a worker thread and back costs 0.3-0.9 ms on a 2-core machine, against 0.05-0.2 ms of
SQL: a random read's open and first byte make three such calls, and took 4.4-5.1 ms with the
hops, 3.5 ms without (bench `random`).

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
from wtfs_index import Index, IndexBusy, IndexFailure

from wtfs.cache.quick import Quick
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
        self._cost = Quick()  # the running mean of each quick call's time
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
        call = functools.partial(fn, *args, **kwargs)
        name = self._quick_name(fn)
        try:
            if name is not None and self._may_run_here(name):
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    result = self._timed(name, call, here=True)
                except IndexBusy:  # nothing was done: wait for it on the thread
                    result = await trio.to_thread.run_sync(
                        self._timed, name, call, limiter=self._limiter
                    )
                else:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                result = await trio.to_thread.run_sync(
                    self._timed, name, call, limiter=self._limiter
                )
        except IndexFailure as exc:
            error = from_index(exc)
            if isinstance(error, IndexUnavailable):
                self.unreachable = error.cause
            raise error from None
        self.unreachable = None
        return result

    def _quick_name(self, fn: Callable[..., object]) -> str | None:
        """The name of one of the index's `quick_calls` that `fn` is (a bound method of our
        index, maybe in a partial), else None."""
        while isinstance(fn, functools.partial):
            fn = fn.func
        name = getattr(fn, "__name__", None)
        if name in self.sync.quick_calls and getattr(fn, "__self__", None) is self.sync:
            return str(name)
        return None

    def _may_run_here(self, name: str) -> bool:
        idle = self._limiter.borrowed_tokens == 0 and not self._limiter.statistics().tasks_waiting
        return idle and self._cost.cheap(name)

    def _timed(self, name: str | None, call: Callable[[], T], here: bool = False) -> T:
        """`call()`, its time added to the running mean of `name`'s; `here`: without waiting
        (`IndexBusy`, and then no time is counted)."""
        if name is None:
            return call()
        if here:
            with self.sync.without_waiting():
                return self._cost.timed(name, call)
        return self._cost.timed(name, call)

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
