"""Async access to the index: one worker thread at a time, so SQLite never blocks the event loop
(another process may hold the write lock for a while)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from wtfs_index.index import Index

T = TypeVar("T")


class AsyncIndex:
    def __init__(self, index: Index) -> None:
        self.sync = index
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )
