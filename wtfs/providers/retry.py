"""Retrying and resuming a provider fetch.

Providers make one attempt and classify failures; this module decides whether to try again.
Only `TransientError` is retried, each new attempt starts at the first byte the sink has not
received yet (so a reset at 90 % costs the last 10 %, not the whole range), and the whole call,
waits included, runs under one deadline so a stuck server cannot hold a reader forever.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import trio

from wtfs.config import Config, NetworkConfig
from wtfs.errors import Timeout, TransferFailed, TransientError, WtfsError
from wtfs.providers.base import Provider, Sink, Source, check_range
from wtfs.providers.urls import describe

log = logging.getLogger(__name__)

OnRetry = Callable[[int, WtfsError, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try; the defaults are the `network` section's (one place for them)."""

    attempts: int = NetworkConfig.retry_attempts  # total tries, the first one included
    #: seconds; exponential backoff with full jitter
    base_delay: float = NetworkConfig.retry_base_delay
    max_delay: float = NetworkConfig.retry_max_delay
    #: total budget in seconds for the whole call, waits included
    deadline: float = NetworkConfig.read_deadline

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.deadline <= 0:
            raise ValueError("RetryPolicy delays must be >= 0 and the deadline > 0")

    def delay(self, attempt: int, error: TransientError, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if error.resume_after is not None:
            return max(0.0, min(error.resume_after, self.max_delay))
        # Full jitter (AWS architecture blog): spreads the retries of many readers that failed
        # together, so they do not hit a recovering server in lock step.
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)


def retry_policy(config: Config) -> RetryPolicy:
    """The daemon's policy, from the `network` section."""
    net = config.network
    return RetryPolicy(
        attempts=net.retry_attempts,
        base_delay=net.retry_base_delay,
        max_delay=net.retry_max_delay,
        deadline=net.read_deadline,
    )


class _OutOfTime(Exception):
    """The next wait would end after the deadline: give up now instead of sleeping in vain."""


class _ResumeSink:
    """Forwards writes and remembers the next offset the caller still needs.

    It also enforces the provider contract (in order, inside the range), so a buggy provider
    cannot make a resumed transfer skip or duplicate bytes.
    """

    def __init__(self, sink: Sink, start: int, end: int) -> None:
        self._sink = sink
        self._end = end
        self.next = start

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self.next:
            raise TransferFailed(
                f"provider wrote at offset {offset}, expected {self.next} (out of order)"
            )
        if offset + len(data) > self._end:
            raise TransferFailed(
                f"provider wrote past the end of the range ({offset + len(data)} > {self._end})"
            )
        await self._sink.write(offset, data)
        self.next += len(data)


async def fetch_with_retry(
    provider: Provider,
    source: Source,
    start: int,
    end: int,
    sink: Sink,
    policy: RetryPolicy,
    *,
    on_retry: OnRetry | None = None,
) -> None:
    """Fetch bytes [start, end) of `source` into `sink`, retrying transient failures.

    Raises `Timeout` when `policy.deadline` passes, `TransferFailed` (with the last cause)
    when `policy.attempts` are used up, and any non-transient `WtfsError` at once.
    `on_retry(attempt, error, delay)` is called before each wait, `attempt` being the
    1-based number of the attempt that just failed.
    """
    check_range(start, end)
    if start == end:
        return
    name = describe(source)
    resume = _ResumeSink(sink, start, end)
    attempt = 0
    last: TransientError | None = None
    began = trio.current_time()
    deadline_at = began + policy.deadline
    try:
        with trio.fail_after(policy.deadline):
            while True:
                attempt += 1
                try:
                    await provider.fetch(source, resume.next, end, resume)
                    if resume.next != end:
                        # The contract forbids a short return; treat it like a cut connection
                        # so the bytes still missing are asked for again.
                        raise TransientError(
                            f"provider returned at byte {resume.next} of [{start}, {end})"
                        )
                    return
                except TransientError as exc:
                    last = exc
                if attempt >= policy.attempts:
                    raise TransferFailed(
                        f"{name}: bytes [{start}, {end}) failed after {attempt} attempts: "
                        f"{last.cause}"
                    ) from last
                delay = policy.delay(attempt, last)
                if trio.current_time() + delay >= deadline_at:
                    raise _OutOfTime()
                log.warning(
                    "attempt %d/%d failed, %d of %d bytes in: %s; retrying in %.2fs",
                    attempt,
                    policy.attempts,
                    resume.next - start,
                    end - start,
                    last.cause if last.cause.startswith(name) else f"{name}: {last.cause}",
                    delay,
                )
                if on_retry is not None:
                    on_retry(attempt, last, delay)
                await trio.sleep(delay)
    except (trio.TooSlowError, _OutOfTime) as exc:
        got = resume.next - start
        cause = f"; last cause: {last.cause}" if last is not None else ""
        raise Timeout(
            f"{name}: bytes [{start}, {end}) not fetched within the {policy.deadline:g}s "
            f"deadline ({attempt} attempts, {got} of {end - start} bytes received{cause})"
        ) from (last if isinstance(exc, _OutOfTime) else exc)
