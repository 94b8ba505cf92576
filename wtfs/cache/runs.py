"""Fetch runs: one provider request streaming a span of a file into its store file.

A run sees the entry it fills only through `RunTarget`, three methods (as rclone's downloaders
see an item through FindMissing/HasRange/WriteAtNoOverwrite): `reserve` a piece before writing
it (space in the store, or "stop: present already, or someone else fetches it"), `write` bytes
at an offset, `commit` a written piece. Pieces are the parts of the span inside one block: a
block is the unit of reservation, so a claim never covers more than a block. A streaming run
commits a piece and claims the next in one index transaction (`commit(..., next_end=)`), and
takes the long way (`reserve`) only when that claim was refused.

Readers wait on a run's *progress*, not on whole blocks: `position` is the first byte the run
has not written yet, and a reader waiting for [a, b) inside the run wakes as soon as
`position >= b` (its bytes are in the store file, under our claim, even before the commit). A
chunk of the answer holding more than a waiting reader needs is written in two: the reader's
bytes, then (once it had its turn) the rest.

The first piece is reserved before the request is sent: a reader waiting for a block another
process is fetching polls the index for it, and never downloads bytes it would throw away. A
random read's run (`claim_beside`, a span of a few hundred KiB) sends its request beside that
claim instead, and its first write waits for the claim: the claim's transaction then costs no
time on the way to the first byte (traced: 0.2-0.3 ms of 4), and at worst one span is thrown
away.

A run never lets an exception escape into the nursery it lives in: a failure (expected or not)
becomes `run.error`, which the readers waiting on it raise. An escaped exception would cancel
every other run of the mount, and readers respawning runs into a cancelled nursery is what made
the daemons spin, grow and die under load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from wtfs.errors import Timeout, TransferFailed, WtfsError
from wtfs.providers.base import Provider, Source
from wtfs.providers.retry import RetryPolicy, fetch_with_retry

log = logging.getLogger(__name__)


class StopRun(Exception):
    """End a run early, quietly: its next piece is present already, another fetch has it, or
    it was read-ahead that found no room."""


class RunTarget(Protocol):
    async def reserve(self, run: Run, start: int, end: int) -> int:
        """Claim [start, end) for writing; raises StopRun (nothing to do) or a WtfsError."""
        ...

    async def write(self, offset: int, data: memoryview) -> None: ...

    async def commit(
        self, run: Run, claim_id: int, start: int, end: int, *, next_end: int | None = None
    ) -> int | None:
        """Record a written piece. With `next_end`, also claim [end, next_end) in the same
        index transaction: its claim id, or None (then `reserve` it, which says why not)."""
        ...

    async def release(self, claim_id: int) -> None:
        """Free a claim nothing was written under."""
        ...


class Run:
    """A span [start, end) of one entry being fetched by one provider request (with retries)."""

    def __init__(
        self, start: int, end: int, block_size: int, *, claim_beside: bool = False
    ) -> None:
        self.start = start
        self.end = end
        self.block_size = block_size
        #: send the request while the first piece is being claimed (see the module docstring)
        self.claim_beside = claim_beside
        self.position = start  # bytes [start, position) are written
        #: the written bytes not committed yet are [claimed_from, position): under our claim,
        #: they cannot be dropped; once committed, the entry's ranges speak for them
        self.claimed_from = start
        self.error: WtfsError | None = None
        self.finished = False
        self.transferred = 0
        #: provider requests made so far (retries included), for the transfer record: the
        #: record may be created after the first retry, while the fetch already runs
        self.attempts = 1
        self.cancel_scope = trio.CancelScope()
        self._done = trio.Event()
        self._started = trio.Event()
        #: readers waiting for bytes: (the end they wait for, their event)
        self._waiters: list[tuple[int, trio.Event]] = []

    def __repr__(self) -> str:
        return f"Run([{self.start}, {self.end}) at {self.position})"

    def holds(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are written by this run and still under its claim.

        Not the bytes it committed earlier: in a windowed entry another process may have
        dropped those since, and only the entry's ranges (read when the reader pinned) know.
        """
        return self.claimed_from <= start and end <= self.position

    def will_reach(self, offset: int) -> bool:
        """Whether this run, still going, is on its way to `offset`."""
        return not self.finished and self.position <= offset < self.end

    async def wait_for(self, end: int) -> None:
        """Until the run has written every byte before `end`, or ended."""
        if self.finished or self.position >= end:
            return
        event = trio.Event()
        self._waiters.append((end, event))
        await event.wait()

    async def wait_started(self) -> None:
        """Until the run has written its first bytes, or ended. For who waits to follow the
        readers, not as one: no write is cut short for it (`wanted_before`)."""
        await self._started.wait()

    def wanted_before(self, limit: int) -> int | None:
        """The nearest end a reader waits for, past `position` and short of `limit` (None: no
        reader waits for bytes short of `limit`)."""
        if not self._waiters:
            return None
        ends = [end for end, _ in self._waiters if self.position < end < limit]
        return min(ends) if ends else None

    def advance(self, position: int) -> None:
        self.position = position
        self._started.set()
        if self._waiters:
            ready = [w for w in self._waiters if w[0] <= position]
            if ready:
                self._waiters = [w for w in self._waiters if w[0] > position]
                for _, event in ready:
                    event.set()

    def finish(self, error: WtfsError | None = None) -> None:
        self.finished = True
        if error is not None and self.error is None:
            self.error = error
        for _, event in self._waiters:
            event.set()
        self._waiters.clear()
        self._started.set()
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


class BlockSink:
    """Receives a run's bytes from the provider: reserves each piece before writing into it,
    commits it once written, keeps the run's `position` for waiting readers."""

    def __init__(self, run: Run, target: RunTarget, size: int) -> None:
        self.run = run
        self.target = target
        self.size = size
        self._claim: int | None = None
        self._piece_start = 0
        self._piece_end = 0
        #: set once a claim taken beside the request (`claim_beside`) has its answer
        self._first: trio.Event | None = None
        self._first_refused: Exception | None = None

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        if self._first is not None:
            await self._first.wait()
            self._first = None
            if self._first_refused is not None:
                raise self._first_refused  # StopRun, or why the claim failed: the answer is moot
        view = memoryview(data)
        while view:
            if self._claim is None:
                await self._begin(offset)
            take = min(len(view), self._piece_end - offset)
            # A reader waiting for bytes short of this chunk's end gets them first: writing a
            # random read's whole chunk (~200 KiB, into fresh pages) before waking its reader,
            # who needs 4-8 KiB of it, cost its first byte 0.2-0.6 ms (traced).
            wanted = self.run.wanted_before(offset + take)
            if wanted is not None:
                take = wanted - offset
            await self.target.write(offset, view[:take])
            offset += take
            view = view[take:]
            self.run.transferred += take
            self.run.advance(offset)
            if wanted is not None:
                # The reader's turn, then the rest of the chunk: not a point to stop at, or a
                # reader's close (which stops its runs) would drop bytes received already.
                await trio.lowlevel.cancel_shielded_checkpoint()
            if offset == self._piece_end:
                await self._finish_piece(offset)

    async def begin(self, deadline: float, label: str) -> None:
        """Reserve the run's first piece before any request is made: a block another process
        is fetching (busy) or that is present stops the run here, at the cost of one index
        transaction rather than of a download cut short. Within `deadline`, as the fetch (the
        index may be unreachable), else Timeout naming `label`."""
        with trio.move_on_after(deadline) as waiting:
            if self._claim is None and self.run.position < self.run.end:
                await self._begin(self.run.position)
        if waiting.cancelled_caught:
            run = self.run
            raise Timeout(
                f"{label}: bytes [{run.start}, {run.end}) could not be reserved within "
                f"{deadline:g}s"
            )

    def expect_claim(self) -> None:
        """Writes wait for `claim_beside` (started next, in a task of its own)."""
        self._first = trio.Event()

    async def claim_beside(self, deadline: float, label: str) -> None:
        """`begin`, while the request is on its way; its refusal or failure is raised by the
        first write (or by `execute`, if the request failed first)."""
        assert self._first is not None
        first = self._first
        try:
            await self.begin(deadline, label)
        except Exception as exc:  # StopRun, a WtfsError, a bug: the run's outcome, not a crash
            self._first_refused = exc
        finally:
            first.set()

    @property
    def refused(self) -> Exception | None:
        """Why a claim taken beside the request was not granted (None: it was, or none was)."""
        return self._first_refused

    def _piece_after(self, offset: int) -> int:
        bs = self.run.block_size
        return min(self.run.end, self.size, (offset // bs + 1) * bs)

    async def _begin(self, offset: int) -> None:
        self._piece_start = offset
        self._piece_end = self._piece_after(offset)
        self._claim = await self.target.reserve(self.run, offset, self._piece_end)
        self.run.claimed_from = offset

    async def _finish_piece(self, offset: int) -> None:
        claim, self._claim = self._claim, None
        assert claim is not None
        next_end = self._piece_after(offset) if offset < min(self.run.end, self.size) else None
        # Shielded: written bytes must never outlive their claim uncounted.
        with trio.CancelScope(shield=True):
            self._claim = await self.target.commit(
                self.run, claim, self._piece_start, self._piece_end, next_end=next_end
            )
        self.run.claimed_from = self._piece_end
        if self._claim is not None:
            assert next_end is not None
            self._piece_start, self._piece_end = offset, next_end

    async def close(self) -> None:
        """At the end of a run, however it ended: keep what a cut-short piece wrote (valid
        bytes), free the rest of its claim."""
        claim, self._claim = self._claim, None
        if claim is None:
            return
        with trio.CancelScope(shield=True):
            if self.run.position > self._piece_start:
                await self.target.commit(self.run, claim, self._piece_start, self.run.position)
            else:
                await self.target.release(claim)
        self.run.claimed_from = self.run.position


OnRetry = Callable[[int, WtfsError, float], None]


async def execute(
    run: Run,
    target: RunTarget,
    provider: Provider,
    source: Source,
    size: int,
    policy: RetryPolicy,
    *,
    on_retry: OnRetry | None = None,
) -> None:
    """Fetch the run's span. Never raises but Cancelled: the outcome is in `run.error`."""
    sink = BlockSink(run, target, size)
    error: WtfsError | None = None
    try:
        with run.cancel_scope:
            if run.claim_beside:
                await _fetch_beside_claim(run, sink, provider, source, policy, on_retry)
            else:
                await sink.begin(policy.deadline, source.label or "file")
                await fetch_with_retry(
                    provider, source, run.start, run.end, sink, policy, on_retry=on_retry
                )
    except StopRun:
        pass
    except WtfsError as exc:
        error = exc
    except Exception as exc:  # a bug, or an OSError of the store: fail this run, not the mount
        log.exception("%s: fetch run %r failed unexpectedly", source.label or source.url, run)
        error = TransferFailed(f"{source.label or 'file'}: fetch failed: {exc!r}")
    finally:
        try:
            await sink.close()
        except Exception as exc:
            log.exception("%s: could not settle the claim of %r", source.label, run)
            error = error or TransferFailed(f"{source.label}: {exc!r}")
        run.finish(error)


async def _fetch_beside_claim(
    run: Run,
    sink: BlockSink,
    provider: Provider,
    source: Source,
    policy: RetryPolicy,
    on_retry: OnRetry | None,
) -> None:
    """The fetch, its request sent while the first piece is claimed (`Run.claim_beside`). The
    claim's refusal wins over the fetch's failure: a busy or present block is not an error."""
    sink.expect_claim()
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.claim_beside, policy.deadline, source.label or "file")
        try:
            await fetch_with_retry(
                provider, source, run.start, run.end, sink, policy, on_retry=on_retry
            )
        except Exception as exc:  # raised below, once the claim has its answer
            failure = exc
    if sink.refused is not None:
        raise sink.refused
    if failure is not None:
        raise failure
