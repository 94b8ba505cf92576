"""Bounded concurrency that reports failures as plain WtfsErrors, not ExceptionGroups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import trio

from wtfs.errors import WtfsError


async def run_all(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int = 16) -> None:
    """Run every job concurrently (at most `limit` at once).

    If jobs fail with WtfsErrors, the first one is raised as itself, so callers and the CLI see
    one clear cause; anything else propagates as trio raised it.
    """
    limiter = trio.CapacityLimiter(limit)

    async def guarded(job: Callable[[], Awaitable[None]]) -> None:
        async with limiter:
            await job()

    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(guarded, job)
    except ExceptionGroup as group:
        errors = group.subgroup(lambda e: isinstance(e, WtfsError))
        if errors is not None and errors.exceptions and group.split(WtfsError)[1] is None:
            raise _first(errors) from None
        raise


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
