"""Blocking calls short enough to make on the event loop's own thread.

A hop to a worker thread and back costs 0.3-0.9 ms on a 2-core machine, more than many of the
calls it carries: SQLite's small transactions (`wtfs.cache.aindex`) or opening a store file on a
local disk (0.02 ms). `Quick` keeps a running mean of each call's time, wherever it ran, and a
call whose mean is under the budget runs in line; its first runs go to a worker thread, which
measures it, so a store on a slow network filesystem never blocks the loop more than once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

#: a call runs in line only while its running mean (seconds) is below this: a longer one would
#: hold up every other request of the mount meanwhile
QUICK_BUDGET = 0.0005
#: the weight of each new measurement in that mean
QUICK_WEIGHT = 0.2


class Quick:
    def __init__(self) -> None:
        #: running mean of each call's time (seconds), wherever it ran
        self._cost: dict[str, float] = {}

    def cheap(self, name: str) -> bool:
        """Whether `name` may run in line (never before it was measured)."""
        return self._cost.get(name, QUICK_BUDGET) < QUICK_BUDGET

    def timed(self, name: str, call: Callable[[], T]) -> T:
        """`call()`, its time added to the running mean of `name`'s."""
        started = time.perf_counter()
        result = call()
        took = time.perf_counter() - started
        last = self._cost.get(name, took)
        self._cost[name] = last + QUICK_WEIGHT * (took - last)
        return result

    async def run(self, name: str, call: Callable[[], T]) -> T:
        """`call()` in line while it is cheap, else on a worker thread."""
        if self.cheap(name):
            await trio.lowlevel.checkpoint_if_cancelled()
            result = self.timed(name, call)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        return await trio.to_thread.run_sync(self.timed, name, call)
