"""Owners and the one liveness rule: judged by /proc in my own PID namespace on my own host, by
lease everywhere else; every row an owner holds (locks, claims, unlinking batches, transfers)
follows it."""

from __future__ import annotations

import os
import time

import pytest
from wtfs_index import Index, Owner, TransferStatus
from wtfs_index.owner import boot_id, pid_namespace, process_start_time

from tests.index.conftest import (
    OpenIndex,
    backdate,
    claim,
    filled,
    new_entry,
    new_transfer,
    past_server_grace,
)
from tests.support import owners

# -- the rule itself (no index) -------------------------------------------------------------------

ME = os.getpid()
MY_START = process_start_time(ME)
MY_BOOT = boot_id()
MY_PIDNS = pid_namespace()
DEAD = owners.exited_process()


@pytest.mark.parametrize(
    ("boot", "pidns", "pid", "pid_start", "lease_fresh", "alive"),
    [
        # my host and namespace: /proc decides, the lease does not
        (MY_BOOT, MY_PIDNS, ME, MY_START, False, True),
        (MY_BOOT, MY_PIDNS, DEAD[0], DEAD[1], True, False),
        (MY_BOOT, MY_PIDNS, ME, (MY_START or 0) + 1, True, False),  # a reused pid
        # another namespace or another host: the lease decides, whatever the pid says
        (MY_BOOT, owners.OTHER_PIDNS, ME, MY_START, True, True),
        (MY_BOOT, owners.OTHER_PIDNS, ME, MY_START, False, False),
        (MY_BOOT, owners.OTHER_PIDNS, DEAD[0], DEAD[1], True, True),
        (owners.OTHER_BOOT, MY_PIDNS, ME, MY_START, False, False),
        (owners.OTHER_BOOT, MY_PIDNS, DEAD[0], DEAD[1], True, True),
        # no process at all (a pin set through Girder): the lease decides
        (None, None, None, None, True, True),
        (None, None, None, None, False, False),
        (MY_BOOT, MY_PIDNS, None, None, False, False),
    ],
)
def test_the_liveness_rule(
    boot: str | None,
    pidns: str | None,
    pid: int | None,
    pid_start: int | None,
    lease_fresh: bool,
    alive: bool,
) -> None:
    me = Owner.current("judge")
    judged = me.judges_alive(
        boot=boot, pidns=pidns, pid=pid, pid_start=pid_start, lease_fresh=lease_fresh
    )
    assert judged is alive


def test_a_lease_only_owner_cannot_be_judged_by_proc() -> None:
    pin = Owner.lease_only("girder-pin")
    assert (pin.boot_id, pin.pidns, pin.pid) == (None, None, None)
    assert not Owner.current("me").sees(pin.boot_id, pin.pidns)
    assert not pin.alive()


# -- judged through the index ---------------------------------------------------------------------


def alive(index: Index, me: Owner) -> dict[str, bool]:
    return {o.owner_id: o.alive for o in index.owners(me)}


def test_an_owner_of_my_namespace_is_judged_by_proc_and_a_dead_one_reclaimed_at_once(
    index: Index, me: Owner, other_live_owner: Owner, dead_owner: Owner
) -> None:
    # The dead owner's lease is as fresh as can be: /proc alone decides.
    assert alive(index, me) == {me.owner_id: True, "other-live": True, "dead-owner": False}
    counts = index.reclaim_dead(me)
    assert counts["owners"] == 1
    assert alive(index, me) == {me.owner_id: True, "other-live": True}


@pytest.mark.parametrize(
    "make",
    [
        lambda: owners.in_other_pidns("foreign"),  # this very process's pid, another pidns
        lambda: owners.in_other_pidns("foreign", pid=owners.exited_process()[0]),
        lambda: owners.on_other_host("foreign"),
        lambda: Owner.lease_only("foreign"),
    ],
    ids=["other-pidns-my-pid", "other-pidns-dead-pid", "other-host", "lease-only"],
)
def test_an_owner_i_cannot_see_lives_while_its_lease_is_fresh_whatever_its_pid(
    open_test_index: OpenIndex, me: Owner, make: object
) -> None:
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    foreign = make()  # type: ignore[operator]
    index.register_owner(foreign, "mount")
    assert alive(index, me)["foreign"] is True
    assert index.reclaim_dead(me)["owners"] == 0
    time.sleep(1.3)  # its lease (1 s) runs out: nobody renewed it
    assert alive(index, me)["foreign"] is False
    assert index.reclaim_dead(me)["owners"] == 1
    assert "foreign" not in alive(index, me)
    assert me.owner_id in alive(index, me)  # judged by /proc: no lease of its own matters


def test_a_heartbeat_renews_the_lease(open_test_index: OpenIndex, me: Owner) -> None:
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    foreign = owners.in_other_pidns("foreign")
    index.register_owner(foreign, "mount")
    for _ in range(3):  # 1.8 s in all, longer than one lease
        time.sleep(0.6)
        assert index.heartbeat(foreign, {}, {}).registered
    assert alive(index, me)["foreign"] is True
    time.sleep(1.3)
    assert alive(index, me)["foreign"] is False


def test_a_heartbeat_after_the_row_was_reclaimed_says_so_and_registering_brings_it_back(
    open_test_index: OpenIndex, me: Owner
) -> None:
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    foreign = owners.in_other_pidns("foreign")
    index.register_owner(foreign, "mount", mountpoint="/mnt/f")
    index.acquire_lock("item", "s", foreign, entry_key="girder:k@v1")
    backdate(index, "owners", "expires", 60, owner_id="foreign")  # it was stopped a minute
    assert index.reclaim_dead(me) == {
        "owners": 1,
        "locks": 1,
        "claims": 0,
        "transfers": 0,
        "unlinking": 0,
    }
    beat = index.heartbeat(foreign, {"hits": 1}, {})
    assert not beat.registered and beat.to_pin == []
    index.register_owner(foreign, "mount", mountpoint="/mnt/f")
    assert index.heartbeat(foreign, {"hits": 1}, {}).registered
    assert alive(index, me)["foreign"] is True
    assert index.lock_total() == 0  # its locks went with its row: it must take them again


def test_a_heartbeat_saves_the_owners_counters(index: Index, me: Owner) -> None:
    # Was "a heartbeat renews claims": claims have no lease of their own any more; the heartbeat
    # renews the owner's, and saves its counters.
    index.heartbeat(me, {"hits": 3}, {})
    [row] = index.owners(me)
    assert row.stats == {"hits": 3}
    assert row.expires > row.heartbeat >= row.started
    assert index.totals() == {"hits": 3}


def test_live_mount_names_only_a_mount_i_can_signal(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    foreign = owners.in_other_pidns("foreign")
    index.register_owner(foreign, "mount", mountpoint="/mnt/a")  # another container's /mnt/a
    index.register_owner(owners.this_process("status"), "status", mountpoint="/mnt/a")
    index.register_owner(owners.dead("dead-a", owners.exited_process()), "mount",
                         mountpoint="/mnt/a")  # fmt: skip
    assert index.live_mount("/mnt/a", me) is None
    mine = owners.this_process("mine")
    index.register_owner(mine, "mount", mountpoint="/mnt/a", session_id="s")
    found = index.live_mount("/mnt/a", me)
    assert found is not None and found.owner_id == "mine" and found.session_id == "s"
    assert index.live_mount("/mnt/b", me) is None


def test_reclaim_dead_removes_only_dead_owners_locks_and_claims(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    k = new_entry(index, "k", 1000).key
    index.acquire_lock("item-k", "s", dead_owner)
    index.acquire_lock("item-k", "s", dead_owner, entry_key=k)
    live_lock = index.acquire_lock("item-k", "s", me, entry_key=k)
    claim(index, k, 0, 100, dead_owner, 10_000)
    claim(index, k, 500, 600, me, 10_000)
    counts = index.reclaim_dead(me)
    assert (counts["locks"], counts["claims"], counts["owners"]) == (2, 1, 1)
    assert [lock.id for lock in index.locks(me)] == [live_lock]
    assert [c.owner_id for c in index.claims()] == [me.owner_id]
    assert [o.owner_id for o in index.owners(me)] == [me.owner_id]
    assert index.usage() == 100


def test_reclaim_dead_fails_a_dead_owners_unfinished_transfers(
    index: Index, me: Owner, dead_owner: Owner
) -> None:
    def transfer(owner: Owner, status: TransferStatus) -> int:
        tid = new_transfer(index, owner)
        index.transfer_update(tid, status=int(status), start_time=time.time())
        return tid

    stuck = transfer(dead_owner, TransferStatus.TRANSFERRING)
    queued = transfer(dead_owner, TransferStatus.QUEUED)
    starting = transfer(dead_owner, TransferStatus.INITIALIZING)
    done = transfer(dead_owner, TransferStatus.DONE)
    mine = transfer(me, TransferStatus.TRANSFERRING)
    assert index.reclaim_dead(me)["transfers"] == 3
    rows = {t.id: t for t in index.transfers()}
    for tid in (stuck, queued, starting):
        assert rows[tid].status == TransferStatus.FAILED
        assert rows[tid].error is not None and "died" in rows[tid].error  # type: ignore[operator]
        assert rows[tid].end_time is not None
    assert rows[done].status == TransferStatus.DONE and rows[done].error is None
    assert rows[mine].status == TransferStatus.TRANSFERRING
    assert index.transfer_counts() == {int(TransferStatus.FAILED): 3,
                                       int(TransferStatus.DONE): 1,
                                       int(TransferStatus.TRANSFERRING): 1}  # fmt: skip


def test_every_row_of_an_owner_whose_lease_ran_out_is_reclaimed(
    open_test_index: OpenIndex, me: Owner
) -> None:
    """Locks, claims, unlinking batches (left, then taken by orphan_unlinks) and the
    transfers it left running (FAILED, with a cause) follow its lease."""
    index = open_test_index(lease=1.0)
    past_server_grace(index)
    foreign = owners.in_other_pidns("foreign")
    index.register_owner(foreign, "mount")
    gone = filled(index, "gone", 50, me)
    k = new_entry(index, "k", 100).key
    index.acquire_lock("item-k", "s", foreign, entry_key=k)
    claim(index, k, 0, 100, foreign, 10_000)
    eviction = index.evict_lru(100, foreign.owner_id, "gc")  # then it stopped, mid-unlink
    assert [e.key for e in eviction] == [gone.key]
    running = new_transfer(index, foreign, key=k)
    index.transfer_update(running, status=int(TransferStatus.TRANSFERRING))
    # While its lease is fresh, nothing of it is touched, nor handed out to me.
    assert index.reclaim_dead(me) == dict.fromkeys(
        ("owners", "locks", "claims", "transfers", "unlinking"), 0
    )
    assert index.orphan_unlinks(me) == []
    backdate(index, "owners", "expires", 60, owner_id="foreign")
    assert index.reclaim_dead(me) == dict.fromkeys(
        ("owners", "locks", "claims", "transfers", "unlinking"), 1
    )
    assert index.locks(me) == [] and index.claims() == []
    [(batch_id, files, punches)] = index.orphan_unlinks(me)
    assert (files, punches) == ([gone.file_name], [])
    assert index.usage() == 50  # the taken batch's bytes count until it is finished
    index.finish_unlink(batch_id)
    assert index.usage() == 0
    [transfer] = index.transfers()
    assert transfer.status == TransferStatus.FAILED and transfer.error


def test_unregister_folds_the_owners_stats_into_the_totals(
    index: Index, me: Owner, other_live_owner: Owner
) -> None:
    index.heartbeat(me, {"hits": 3, "misses": 1}, {})
    index.heartbeat(other_live_owner, {"hits": 4, "bytes_from_network": 10}, {})
    assert index.totals() == {"hits": 7, "misses": 1, "bytes_from_network": 10}
    k = new_entry(index, "k", 100).key
    index.acquire_lock("item-k", "s", me, entry_key=k)
    claim(index, k, 0, 50, me, 1000)
    index.unregister_owner(me.owner_id)
    index.unregister_owner(other_live_owner.owner_id)
    assert index.totals() == {"hits": 7, "misses": 1, "bytes_from_network": 10}
    assert index.owners(me) == []
    assert index.lock_count("item-k") == 0
    assert index.usage() == 0
