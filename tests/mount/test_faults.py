"""Network faults on real mounts: a FaultProxy between the daemon and the real Girder.

Every test reads through a real FUSE mount with plain open()/read() in a thread it can give up
on, so a hang is a failure, never a stuck suite. The contract checked each time: the read returns
the right bytes (sha256 of the original), or fails with EIO/ETIMEDOUT within the configured
deadline; never wrong bytes; and the transfer record in `wtfs status --all` says what happened.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder

from tests.support.bigdata import BigFile, MiB, import_files
from tests.support.faultproxy import Fault, FaultProxy, ProxyRecord, ProxyRequest
from tests.support.mounts import Mount, mounted, start_mount

DONE, FAILED = 3, 4

SIZES = {
    "a.bin": 8 * MiB,
    "b.bin": 2 * MiB,
    "c.bin": 2 * MiB,
    "reset.bin": 32 * MiB,
    **{f"k{n}.bin": 16 * MiB for n in range(8)},
}


@dataclass(frozen=True)
class Data:
    files: dict[str, BigFile]
    file_ids: dict[str, str]  # name -> Girder file id

    def session(self, *names: str) -> list[dict[str, str]]:
        return [{"itemId": self.files[n].item_id, "mountPath": f"/{n}"} for n in names]


@pytest.fixture(scope="module")
def data(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> Data:
    files = import_files(girder, tmp_path_factory.mktemp("faultdata"), SIZES)
    client = girder.client()
    file_ids = {}
    for name, f in files.items():
        (doc,) = client.get(f"item/{f.item_id}/files")
        file_ids[name] = str(doc["_id"])
    return Data(files, file_ids)


class Proxy(FaultProxy):
    """A FaultProxy that can also cut the connections it is serving (a dead server)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.sockets: list[socket.socket] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        self.sockets.append(request)
        super().process_request(request, client_address)

    def die(self) -> None:
        """Stop listening and drop every open connection: Girder is now unreachable."""
        self.__exit__(None, None, None)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def proxy_for(girder: LocalGirder) -> Iterator[Proxy]:
    proxy = Proxy(girder.api_url)
    proxy.__enter__()
    try:
        yield proxy
    finally:
        proxy.__exit__(None, None, None)


def config_via(base_config: dict[str, Any], proxy: FaultProxy, **network: float) -> dict[str, Any]:
    net: dict[str, float] = {
        "connect_timeout": 2,
        "read_timeout": 2,
        "retry_attempts": 4,
        "retry_base_delay": 0.05,
        "retry_max_delay": 0.5,
        "read_deadline": 15,
    }
    net.update(network)
    return {
        **base_config,
        "girder": {**base_config["girder"], "api_url": proxy.base},
        "network": net,
    }


def download_of(file_id: str) -> Any:
    return lambda req: req.path.endswith(f"/file/{file_id}/download")


def is_download(req: ProxyRequest | ProxyRecord) -> bool:
    return req.path.endswith("/download")


@dataclass
class Outcome:
    data: bytes | None = None
    error: OSError | None = None
    elapsed: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None


def start_read(path: Path) -> Outcome:
    outcome = Outcome()

    def work() -> None:
        started = time.monotonic()
        try:
            with open(path, "rb") as f:
                chunks = []
                while chunk := f.read(MiB):
                    chunks.append(chunk)
            outcome.data = b"".join(chunks)
        except OSError as exc:
            outcome.error = exc
        finally:
            outcome.elapsed = time.monotonic() - started
            outcome.done.set()

    threading.Thread(target=work, daemon=True, name=f"read {path.name}").start()
    return outcome


def read_within(path: Path, limit: float) -> Outcome:
    """Read the whole file in a thread; fail the test if it is still blocked after `limit` s."""
    outcome = start_read(path)
    assert outcome.done.wait(limit), f"read of {path} still blocked after {limit:g}s"
    return outcome


def assert_correct(outcome: Outcome, f: BigFile) -> None:
    assert outcome.error is None, f"{f.name}: {outcome.error!r}"
    assert outcome.sha256 == f.sha256, f"{f.name}: wrong bytes served"


def transfers_of(m: Mount, item_id: str) -> list[dict[str, Any]]:
    return [t for t in m.status("--all")["transfers"] if t["itemId"] == item_id]


def downloads(proxy: FaultProxy, file_id: str, since: int = 0) -> list[ProxyRecord]:
    return [r for r in proxy.log[since:] if r.path.endswith(f"/file/{file_id}/download")]


def range_start(record: ProxyRecord) -> int:
    assert record.range is not None and record.range.startswith("bytes=")
    return int(record.range.removeprefix("bytes=").split("-")[0])


# --- HTTP errors ------------------------------------------------------------------------------


def test_500_twice_then_ok_is_retried_and_done(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["a.bin"], data.file_ids["a.bin"]
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.status(500), times=2)
        with mounted(tmp_path, config_via(base_config, proxy), data.session("a.bin")) as m:
            assert_correct(read_within(m.mountpoint / "a.bin", 30), f)
            statuses = [r.status for r in downloads(proxy, fid)]
            assert statuses[:3] == [500, 500, 206], statuses
            transfers = transfers_of(m, f.item_id)
            assert transfers, "no transfer recorded"
            assert all(t["status"] == DONE for t in transfers), transfers
            assert max(t["attempts"] for t in transfers) >= 3, transfers
            assert "Girder answered 500" in m.log()


def test_503_forever_fails_with_eio_and_the_mount_stays_up(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    bad, good = data.files["b.bin"], data.files["c.bin"]
    fid = data.file_ids["b.bin"]
    deadline = 15
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.status(503))
        config = config_via(base_config, proxy, retry_attempts=3, read_deadline=deadline)
        with mounted(tmp_path, config, data.session("b.bin", "c.bin")) as m:
            outcome = read_within(m.mountpoint / "b.bin", deadline + 10)
            assert outcome.error is not None, "a file Girder never serves read successfully"
            assert outcome.error.errno == errno.EIO, outcome.error
            assert outcome.elapsed < deadline, outcome.elapsed
            assert len(downloads(proxy, fid)) >= 3
            transfers = transfers_of(m, bad.item_id)
            assert any(t["status"] == FAILED and "503" in (t["error"] or "") for t in transfers), (
                transfers
            )
            assert "503" in m.log()
            # The mount is still up: another file reads fine...
            assert_correct(read_within(m.mountpoint / "c.bin", 30), good)
            # ...and once Girder recovers, so does the failed file (failures are not sticky).
            proxy.clear_rules()
            assert_correct(read_within(m.mountpoint / "b.bin", 30), bad)


@pytest.mark.parametrize(
    ("retry_after", "max_delay"),
    [("2", 5), (email.utils.formatdate(time.time() + 3600, usegmt=True), 2)],
    ids=["seconds", "http-date"],  # the date is an hour away: max_delay caps the wait at 2 s
)
def test_429_with_retry_after_waits_as_told_then_succeeds(
    tmp_path: Path,
    base_config: dict[str, Any],
    girder: LocalGirder,
    data: Data,
    retry_after: str,
    max_delay: float,
) -> None:
    f, fid = data.files["b.bin"], data.file_ids["b.bin"]
    with proxy_for(girder) as proxy:
        proxy.add_rule(
            match=download_of(fid), action=Fault.status(429, {"Retry-After": retry_after}), times=1
        )
        config = config_via(base_config, proxy, retry_max_delay=max_delay)
        with mounted(tmp_path, config, data.session("b.bin")) as m:
            outcome = read_within(m.mountpoint / "b.bin", 30)
            assert_correct(outcome, f)
            records = downloads(proxy, fid)
            assert [r.status for r in records[:2]] == [429, 206]
            assert outcome.elapsed >= 1.8, f"Retry-After not honoured ({outcome.elapsed:.2f}s)"
            transfers = transfers_of(m, f.item_id)
            assert all(t["status"] == DONE for t in transfers), transfers
            assert max(t["attempts"] for t in transfers) >= 2, transfers


def test_a_file_deleted_in_girder_after_listing_reads_enoent_and_says_why(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder
) -> None:
    # Girder answers 400 "Invalid file id" for a file it no longer has, on /file/{id} and on
    # /file/{id}/download: the reader must see the name gone (ENOENT), not an I/O error.
    client = girder.client()
    collection = client.createCollection(f"deleted-{time.monotonic_ns()}", public=True)
    folder = str(client.createFolder(collection["_id"], "f", parentType="collection")["_id"])
    item = girder.raw_item(folder, "doomed.txt", b"soon gone\n")
    (doc,) = client.get(f"item/{item}/files")
    doomed = str(doc["_id"])
    girder.raw_item(folder, "kept.txt", b"still here\n")
    with mounted(tmp_path, base_config, [{"itemId": folder, "mountPath": "/f"}]) as m:
        assert sorted(os.listdir(m.mountpoint / "f")) == ["doomed.txt", "kept.txt"]
        client.delete(f"file/{doomed}")
        for asked in (f"file/{doomed}", f"file/{doomed}/download"):  # what the mapping rests on
            answer = httpx.get(
                f"{girder.api_url}/{asked}", headers={"Girder-Token": girder.token()}
            )
            assert answer.status_code == 400 and "Invalid file id" in answer.text, answer.text
        with pytest.raises(OSError) as info:
            (m.mountpoint / "f/doomed.txt").read_bytes()
        assert info.value.errno == errno.ENOENT, info.value
        assert (m.mountpoint / "f/kept.txt").read_bytes() == b"still here\n"
        failed = [t for t in m.status("--all")["transfers"] if t["status"] == FAILED]
        assert [t["error"] for t in failed] == ["doomed.txt: deleted in Girder"], failed
        assert m.wtfs("status", check=False).returncode == 3  # a FAILED transfer is listed
        assert "doomed.txt: deleted in Girder" in m.log()


# --- broken connections -----------------------------------------------------------------------


def test_connection_reset_mid_body_resumes_where_it_stopped(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["reset.bin"], data.file_ids["reset.bin"]
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.reset_after(10 * MiB), times=1)
        with mounted(tmp_path, config_via(base_config, proxy), data.session("reset.bin")) as m:
            assert_correct(read_within(m.mountpoint / "reset.bin", 60), f)
            records = downloads(proxy, fid)
            assert records[0].action == "reset"
            assert len(records) >= 2, records
            fetched = sum(r.bytes_sent for r in records)
            refetched = fetched - f.size
            print(f"\nreset after 10 MiB: {fetched / MiB:.1f} MiB fetched for a "
                  f"{f.size / MiB:.0f} MiB file; the retry asked from byte "
                  f"{range_start(records[1])}")  # fmt: skip
            assert range_start(records[1]) > 0, "the retry started again from byte 0"
            assert refetched < f.size, f"re-fetched {refetched} bytes of a {f.size}-byte file"
            transfers = transfers_of(m, f.item_id)
            assert all(t["status"] == DONE for t in transfers), transfers
            assert max(t["attempts"] for t in transfers) >= 2, transfers


def test_stall_longer_than_read_timeout_is_retried(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["b.bin"], data.file_ids["b.bin"]
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.stall(30), times=1)
        config = config_via(base_config, proxy, read_timeout=1, read_deadline=15)
        with mounted(tmp_path, config, data.session("b.bin")) as m:
            outcome = read_within(m.mountpoint / "b.bin", 25)
            assert_correct(outcome, f)
            assert 1 <= outcome.elapsed < 15, outcome.elapsed
            assert len(downloads(proxy, fid)) >= 2
            transfers = transfers_of(m, f.item_id)
            assert all(t["status"] == DONE for t in transfers), transfers
            assert max(t["attempts"] for t in transfers) >= 2, transfers


def test_server_that_always_stalls_gives_etimedout_within_read_deadline(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["b.bin"], data.file_ids["b.bin"]
    deadline = 5
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.stall(60))
        config = config_via(
            base_config, proxy, read_timeout=1, retry_attempts=20, read_deadline=deadline
        )
        with mounted(tmp_path, config, data.session("b.bin")) as m:
            outcome = read_within(m.mountpoint / "b.bin", deadline + 15)
            assert outcome.error is not None, "a stalled server produced data"
            assert outcome.error.errno in (errno.ETIMEDOUT, errno.EIO), outcome.error
            assert outcome.elapsed < deadline + 2, f"read failed after {outcome.elapsed:.1f}s"
            assert outcome.elapsed >= deadline - 0.5 or outcome.error.errno == errno.EIO
            # The transfer ends FAILED (shortly after the reader gave up) with the cause.
            give_up = time.monotonic() + 10
            while True:
                transfers = transfers_of(m, f.item_id)
                if transfers and all(t["status"] == FAILED for t in transfers):
                    break
                assert time.monotonic() < give_up, transfers
                time.sleep(0.2)
            assert any("deadline" in (t["error"] or "") for t in transfers), transfers


# --- auth, bandwidth, reachability ------------------------------------------------------------


def test_401_once_on_a_download_refreshes_the_token(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["b.bin"], data.file_ids["b.bin"]
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.status_once_401())
        with mounted(tmp_path, config_via(base_config, proxy), data.session("b.bin")) as m:
            assert m.log().count("obtained a Girder token") == 1
            assert_correct(read_within(m.mountpoint / "b.bin", 30), f)
            assert [r.status for r in downloads(proxy, fid)][:2] == [401, 206]
            assert m.log().count("obtained a Girder token") == 2, m.log()
            transfers = transfers_of(m, f.item_id)
            assert all(t["status"] == DONE for t in transfers), transfers


def test_throttled_bandwidth_is_slow_but_correct(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f, fid = data.files["a.bin"], data.file_ids["a.bin"]
    rate = 4 * MiB  # bytes/s: 8 MiB takes about 2 s
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.throttle(rate))
        with mounted(tmp_path, config_via(base_config, proxy), data.session("a.bin")) as m:
            outcome = read_within(m.mountpoint / "a.bin", 30)
            assert_correct(outcome, f)
            assert outcome.elapsed >= 0.8 * f.size / rate, outcome.elapsed
            transfers = transfers_of(m, f.item_id)
            assert transfers and all(t["status"] == DONE for t in transfers), transfers
            assert all(t["attempts"] == 1 for t in transfers), "slow is not broken: no retries"


def test_unreachable_girder_gives_eio_within_the_deadline_and_logs_why(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    f = data.files["b.bin"]
    deadline = 15
    with proxy_for(girder) as proxy:
        config = config_via(base_config, proxy, retry_attempts=3, read_deadline=deadline)
        with mounted(tmp_path, config, data.session("b.bin")) as m:
            proxy.die()
            outcome = read_within(m.mountpoint / "b.bin", deadline + 10)
            assert outcome.error is not None, "read succeeded with Girder gone"
            assert outcome.error.errno in (errno.EIO, errno.ETIMEDOUT), outcome.error
            assert outcome.elapsed < deadline, outcome.elapsed
            transfers = transfers_of(m, f.item_id)
            assert any(t["status"] == FAILED for t in transfers), transfers
            cause = " ".join(t["error"] or "" for t in transfers)
            assert "cannot reach Girder" in cause, cause
            assert "cannot reach Girder" in m.log()


# --- the daemon dies or is stopped ------------------------------------------------------------


KFILES = [f"k{n}.bin" for n in range(8)]


def wait_for_bytes(proxy: FaultProxy, file_ids: list[str], each: int, limit: float) -> None:
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        sent = {fid: sum(r.bytes_sent for r in downloads(proxy, fid)) for fid in file_ids}
        if all(v >= each for v in sent.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"downloads did not get going: {sent}")


def test_kill_9_during_8_parallel_reads_then_remount_resumes(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    files = [data.files[n] for n in KFILES]
    ids = [data.file_ids[n] for n in KFILES]
    total = sum(f.size for f in files)
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=is_download, action=Fault.throttle(2 * MiB))
        config = {**config_via(base_config, proxy), "block_size": "1MiB"}
        first = start_mount(tmp_path / "a", config, data.session(*KFILES))
        again: Mount | None = None
        try:
            readers = [start_read(first.mountpoint / n) for n in KFILES]
            wait_for_bytes(proxy, ids, 3 * MiB, 30)
            dead_pid = first.process.pid
            first.kill(signal.SIGKILL)
            for n, r in zip(KFILES, readers, strict=True):
                assert r.done.wait(30), f"reader of {n} still blocked after the daemon died"
                assert r.error is not None, f"{n} read completely before the kill: too fast"
            locks = first.status()["locks"]
            assert len(locks) == 8 and not any(lock["alive"] for lock in locks), locks
            present = first.status()["store"]["present"]
            assert 0 < present < total, present
            proxy.clear_rules()
            mark = len(proxy.log)
            again = start_mount(tmp_path / "b", config, data.session(*KFILES),
                                mountpoint=first.mountpoint)  # fmt: skip
            locks = again.status()["locks"]
            assert not [lock for lock in locks if lock["pid"] == dead_pid], locks
            outcomes = [start_read(again.mountpoint / n) for n in KFILES]
            for f, outcome in zip(files, outcomes, strict=True):
                assert outcome.done.wait(60), f"{f.name}: read blocked after the remount"
                assert_correct(outcome, f)
            fetched = sum(r.bytes_sent for r in proxy.log[mark:] if is_download(r))
            print(f"\nkilled with {present / MiB:.1f} of {total / MiB:.0f} MiB stored; "
                  f"the remount fetched {fetched / MiB:.1f} MiB")  # fmt: skip
            assert fetched < total
            assert fetched <= total - present + MiB, (fetched, total, present)
            assert again.status()["locks"] == []
            assert "Traceback" not in again.log()
        finally:
            if again is not None:
                again.stop()
            first.stop()


def test_sigterm_during_reads_exits_promptly_and_releases_everything(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    names = KFILES[:4]
    ids = [data.file_ids[n] for n in names]
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=is_download, action=Fault.throttle(2 * MiB))
        config = config_via(base_config, proxy)
        with mounted(tmp_path, config, data.session(*names)) as m:
            readers = [start_read(m.mountpoint / n) for n in names]
            wait_for_bytes(proxy, ids, MiB, 30)
            assert len(m.status()["locks"]) == 4
            pid = m.process.pid
            started = time.monotonic()
            m.process.send_signal(signal.SIGTERM)
            try:
                code = m.process.wait(timeout=20)
            except Exception as exc:
                raise AssertionError(f"daemon still running 20s after SIGTERM:\n{m.log()}") from exc
            took = time.monotonic() - started
            print(f"\nSIGTERM during 4 reads: daemon exited ({code}) in {took:.2f}s")
            assert took < 5, f"daemon took {took:.1f}s to exit after SIGTERM"
            assert not os.path.ismount(m.mountpoint)
            for n, r in zip(names, readers, strict=True):
                assert r.done.wait(10), f"reader of {n} still blocked after the daemon exited"
                if r.error is None:
                    assert r.sha256 == data.files[n].sha256
            status = m.status()
            assert not [lock for lock in status["locks"] if lock["pid"] == pid], status["locks"]
            assert not [x for x in status["mounts"] if x["pid"] == pid], status["mounts"]


def test_umount_while_a_read_is_stuck_on_a_stalled_network_completes(
    tmp_path: Path, base_config: dict[str, Any], girder: LocalGirder, data: Data
) -> None:
    """A stuck read holds its file open: `wtfs umount` stops the daemon, which fails the stuck
    read at once (if an umount without a known daemon answers EBUSY, `--lazy` must detach at
    once); the daemon must be gone and the reader released within a bound, never hang."""
    fid = data.file_ids["b.bin"]
    read_deadline, bound = 8, 15
    with proxy_for(girder) as proxy:
        proxy.add_rule(match=download_of(fid), action=Fault.stall(120))
        config = config_via(base_config, proxy, read_timeout=60, read_deadline=read_deadline)
        with mounted(tmp_path, config, data.session("b.bin")) as m:
            reader = start_read(m.mountpoint / "b.bin")
            give_up = time.monotonic() + 10
            while not downloads(proxy, fid):
                assert time.monotonic() < give_up, "the read never reached the network"
                time.sleep(0.05)
            time.sleep(0.5)
            assert not reader.done.is_set(), reader
            started = time.monotonic()
            plain = m.wtfs("umount", str(m.mountpoint), check=False)
            plain_took = time.monotonic() - started
            print(f"\nwtfs umount with a stuck read: exit {plain.returncode} in "
                  f"{plain_took:.2f}s: {plain.stderr.strip()}")  # fmt: skip
            assert plain_took < 5, f"wtfs umount took {plain_took:.1f}s"
            if plain.returncode != 0:
                assert "busy" in plain.stderr, plain.stderr
                lazy_started = time.monotonic()
                lazy = m.wtfs("umount", "--lazy", str(m.mountpoint), check=False)
                lazy_took = time.monotonic() - lazy_started
                assert lazy.returncode == 0, lazy.stderr
                assert lazy_took < 5, f"wtfs umount --lazy took {lazy_took:.1f}s"
            assert not os.path.ismount(m.mountpoint), "still mounted after wtfs umount"
            try:
                m.process.wait(timeout=max(1.0, bound - (time.monotonic() - started)))
            except Exception as exc:
                raise AssertionError(
                    f"daemon still running {bound}s after wtfs umount:\n{m.log()}"
                ) from exc
            assert reader.done.wait(max(1.0, bound - (time.monotonic() - started))), (
                "the stuck reader was never released"
            )
            assert reader.error is not None
            assert reader.error.errno in (errno.ETIMEDOUT, errno.EIO, errno.ENOTCONN), reader
            print(f"daemon exited {time.monotonic() - started:.2f}s after the first umount; "
                  f"reader got {reader.error!r} after {reader.elapsed:.2f}s")  # fmt: skip
