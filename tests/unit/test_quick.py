"""`Quick`: a blocking call runs on the event loop's thread only once it proved short.

The calls move a fake clock (in place of `time.perf_counter`) by what they cost, so that how
busy the machine is cannot decide where a call runs.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from wtfs.cache import quick
from wtfs.cache.quick import Quick


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        monkeypatch.setattr(quick, "time", SimpleNamespace(perf_counter=lambda: self.now))

    def spend(self, seconds: float) -> int:
        """A call that takes `seconds`; the thread it ran on."""
        self.now += seconds
        return threading.get_ident()


async def test_a_short_call_moves_in_line_after_its_first_run_a_slow_one_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, clock = Quick(), Clock(monkeypatch)
    loop = threading.get_ident()

    def short() -> int:
        return clock.spend(quick.QUICK_BUDGET / 10)

    def slow() -> int:
        return clock.spend(2 * quick.QUICK_BUDGET)  # a store on a slow network filesystem

    assert await calls.run("short", short) != loop  # unmeasured: on a worker thread
    assert await calls.run("short", short) == loop
    assert [await calls.run("slow", slow) != loop for _ in range(3)] == [True] * 3


async def test_a_call_that_turns_slow_goes_back_to_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, clock = Quick(), Clock(monkeypatch)
    loop = threading.get_ident()
    delay = quick.QUICK_BUDGET / 10

    def call() -> int:
        return clock.spend(delay)

    await calls.run("c", call)
    assert await calls.run("c", call) == loop
    delay = 20 * quick.QUICK_BUDGET  # once, in line: the mean jumps past the budget
    await calls.run("c", call)
    delay = quick.QUICK_BUDGET / 10
    assert await calls.run("c", call) != loop
