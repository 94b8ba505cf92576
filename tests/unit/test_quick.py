"""`Quick`: a blocking call runs on the event loop's thread only once it proved short."""

from __future__ import annotations

import threading
import time

from wtfs.cache import quick
from wtfs.cache.quick import Quick


async def test_a_short_call_moves_in_line_after_its_first_run_a_slow_one_never() -> None:
    calls = Quick()
    loop = threading.get_ident()

    def short() -> int:
        return threading.get_ident()

    def slow() -> int:
        time.sleep(2 * quick.QUICK_BUDGET)  # a store on a slow network filesystem
        return threading.get_ident()

    assert await calls.run("short", short) != loop  # unmeasured: on a worker thread
    assert await calls.run("short", short) == loop
    assert [await calls.run("slow", slow) != loop for _ in range(3)] == [True] * 3


async def test_a_call_that_turns_slow_goes_back_to_a_thread() -> None:
    calls = Quick()
    loop = threading.get_ident()
    delay = 0.0

    def call() -> int:
        time.sleep(delay)
        return threading.get_ident()

    await calls.run("c", call)
    assert await calls.run("c", call) == loop
    delay = 20 * quick.QUICK_BUDGET  # once, in line: the mean jumps past the budget
    await calls.run("c", call)
    delay = 0.0
    assert await calls.run("c", call) != loop
