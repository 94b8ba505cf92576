"""Transfers (in seed 001's vocabulary), their retries, and the history kept: evictions,
failures, pruned by count and age."""

from __future__ import annotations

import time

from wtfs_index import Index, Owner, TransferStatus

from tests.index.conftest import backdate, filled, new_transfer


def ended(index: Index, owner: Owner, status: TransferStatus, **kwargs: str) -> int:
    tid = new_transfer(index, owner, **kwargs)
    index.transfer_update(tid, status=int(status), end_time=time.time())
    return tid


def test_transfer_status_codes_are_seed_001s() -> None:
    assert {s.name: int(s) for s in TransferStatus} == {
        "INITIALIZING": 0,
        "QUEUED": 1,
        "TRANSFERRING": 2,
        "DONE": 3,
        "FAILED": 4,
    }


def test_a_transfer_is_recorded_and_updated(index: Index, me: Owner) -> None:
    tid = new_transfer(index, me, key="k", session_id="s1")
    [row] = index.transfers()
    assert (row.id, row.key, row.session_id, row.owner_id, row.status) == (
        tid, "k", "s1", me.owner_id, TransferStatus.INITIALIZING,
    )  # fmt: skip
    assert (row.size, row.transferred, row.attempts, row.error) == (10, 0, 0, None)
    index.transfer_update(tid, status=int(TransferStatus.TRANSFERRING), transferred=4,
                          attempts=1, start_time=100.0)  # fmt: skip
    [row] = index.transfers()
    assert (row.status, row.transferred, row.attempts, row.start_time) == (2, 4, 1, 100.0)
    assert index.transferred_total() == 4


def test_transfers_can_be_limited_to_a_session_and_to_recent_ones(index: Index, me: Owner) -> None:
    old = ended(index, me, TransferStatus.DONE, session_id="a")
    index.transfer_update(old, end_time=time.time() - 600)
    recent = ended(index, me, TransferStatus.FAILED, session_id="a")
    running = new_transfer(index, me, session_id="a")
    other = new_transfer(index, me, session_id="b")
    assert [t.id for t in index.transfers()] == [old, recent, running, other]
    assert [t.id for t in index.transfers(session_id="a")] == [old, recent, running]
    since = time.time() - 60
    assert [t.id for t in index.transfers(ended_after=since)] == [recent, running, other]


def test_failed_transfers_are_requeued_for_a_mount_of_their_session(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    failed = ended(index, me, TransferStatus.FAILED, session_id="s")
    index.transfer_update(failed, error="HTTP 500", transferred=3)
    done = ended(index, me, TransferStatus.DONE, session_id="s")
    elsewhere = ended(index, me, TransferStatus.FAILED, session_id="t")
    asked = index.request_retry([failed, done])
    assert [(r.id, r.status) for r in asked] == [(failed, 4), (done, 3)]  # as they were
    assert index.claim_retries(other_live_owner.owner_id, "t") == []
    [taken] = index.claim_retries(other_live_owner.owner_id, "s")
    assert (taken.id, taken.status, taken.error, taken.transferred) == (failed, 1, None, 0)
    rows = {t.id: t for t in index.transfers()}
    assert rows[failed].owner_id == other_live_owner.owner_id
    assert not rows[failed].retry_requested
    assert rows[done].status == TransferStatus.DONE
    assert index.claim_retries(other_live_owner.owner_id, "s") == []  # taken once
    assert [r.id for r in index.request_retry(all_failed=True)] == [elsewhere]


def test_prune_history_keeps_at_most_the_newest_n_finished_transfers(
    index: Index, me: Owner
) -> None:
    ids = [ended(index, me, TransferStatus.DONE, key=f"k{n}") for n in range(10)]
    for n in range(7):
        index.record_failure("fetch", f"k{n}", "boom", me.owner_id)
    index.prune_history(max_count=4, max_age_days=30)
    assert [t.id for t in index.transfers()] == ids[-4:]
    assert [f.key for f in index.failures(100)] == ["k6", "k5", "k4", "k3"]


def test_prune_history_keeps_unfinished_transfers(index: Index, me: Owner) -> None:
    running = new_transfer(index, me)
    index.transfer_update(running, status=int(TransferStatus.TRANSFERRING))
    for _ in range(3):
        ended(index, me, TransferStatus.FAILED)
    index.prune_history(max_count=1, max_age_days=30)
    statuses = [t.status for t in index.transfers()]
    assert statuses == [TransferStatus.TRANSFERRING, TransferStatus.FAILED]


def test_prune_history_drops_finished_transfers_older_than_the_age_limit(
    index: Index, me: Owner
) -> None:
    old = ended(index, me, TransferStatus.DONE)
    old_running = new_transfer(index, me)
    backdate(index, "transfers", "created", 3 * 86400)  # both made three days ago
    new = ended(index, me, TransferStatus.DONE)
    removed = index.prune_history(max_count=100, max_age_days=1)
    assert removed == 1
    assert [t.id for t in index.transfers()] == [old_running, new]
    assert old not in {t.id for t in index.transfers()}


def test_failures_are_recorded_newest_first(index: Index, me: Owner) -> None:
    index.record_failure("fetch", "k", "HTTP 500 from server", me.owner_id)
    index.record_failure("nospace", None, "store full", me.owner_id)
    assert [(f.kind, f.key, f.cause, f.owner_id) for f in index.failures(10)] == [
        ("nospace", None, "store full", me.owner_id),
        ("fetch", "k", "HTTP 500 from server", me.owner_id),
    ]
    assert len(index.failures(1)) == 1


def evict_passes(index: Index, me: Owner, sizes: list[int]) -> list[list[str]]:
    """One GC pass per size, each evicting that many entries; their keys, oldest pass first."""
    passes = []
    for p, size in enumerate(sizes):
        keys = [filled(index, f"p{p}-{n}", 10, me).key for n in range(size)]
        assert [e.key for e in index.evict_lru(0, me.owner_id, "gc")] == keys
        passes.append(keys)
    return passes


def test_prune_history_keeps_eviction_batches_whole_the_newest_holding_max_count(
    index: Index, me: Owner
) -> None:
    _, second, third = evict_passes(index, me, [3, 4, 2])
    removed = index.prune_history(max_count=5, max_age_days=30)
    # the newest batches that hold 5 records: the third (2) and the second (4), whole
    assert removed == 3
    assert {r.key for r in index.evictions(100)} == {*second, *third}
    assert index.eviction_count() == 6
    index.prune_history(max_count=2, max_age_days=30)
    assert {r.key for r in index.evictions(100)} == set(third)


def test_prune_history_drops_eviction_batches_older_than_the_age_limit(
    index: Index, me: Owner
) -> None:
    _, new = evict_passes(index, me, [2, 1])
    backdate(index, "eviction_batches", "time", 3 * 86400, entries=2)
    assert index.prune_history(max_count=100, max_age_days=1) == 2
    assert [r.key for r in index.evictions(100)] == new
