"""SFTP provider against a real OpenSSH sshd on loopback."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.sinks import MemorySink
from tests.support.sshd import SshdServer, make_key, running_sshd
from wtfs.errors import AccessDenied, NotFound, SizeMismatch, TransientError, WtfsError
from wtfs.providers.base import ProviderSettings, Source
from wtfs.providers.retry import RetryPolicy, fetch_with_retry
from wtfs.providers.sftp import CHUNK, SftpProvider

SIZE = 5 * 1024 * 1024 + 4321


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def blob_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sftpdata") / "data.bin"
    path.write_bytes(random.Random(11).randbytes(SIZE))
    return path


@pytest.fixture(scope="module")
def blob(blob_path: Path) -> bytes:
    return blob_path.read_bytes()


def settings(**sftp: Any) -> ProviderSettings:
    return ProviderSettings(connect_timeout=5, read_timeout=10, options={"sftp": sftp})


@pytest.fixture
async def provider(sshd: SshdServer) -> AsyncIterator[SftpProvider]:
    p = SftpProvider(settings(key_file=str(sshd.client_key), known_hosts=str(sshd.known_hosts)))
    try:
        yield p
    finally:
        await p.aclose()


def logins(sshd: SshdServer) -> int:
    return sshd.log.read_text().count("Accepted publickey")


async def test_full_file_and_random_ranges_are_exact(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path, blob: bytes
) -> None:
    before = logins(sshd)
    source = Source(sshd.sftp_url(blob_path), size=SIZE)
    assert await provider.size(source) == SIZE
    rng = random.Random(13)
    ranges = [(0, SIZE), (0, 1), (SIZE - 1, SIZE), (CHUNK - 3, 3 * CHUNK + 3)]
    ranges += [(a, rng.randrange(a + 1, SIZE + 1)) for a in rng.sample(range(SIZE), 20)]
    for start, end in ranges:
        sink = MemorySink(start, end)
        await provider.fetch(source, start, end, sink)
        assert hashlib.sha256(sink.data).digest() == hashlib.sha256(blob[start:end]).digest()
    # One SSH connection served all of it.
    assert logins(sshd) - before == 1


async def test_parallel_fetches_share_one_connection(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path, blob: bytes
) -> None:
    before = logins(sshd)
    source = Source(sshd.sftp_url(blob_path), size=SIZE)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        sink = MemorySink(i * 300_000)
        await provider.fetch(source, i * 300_000, i * 300_000 + 1_200_000, sink)
        results[i] = sink.data

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    for i in range(8):
        assert results[i] == blob[i * 300_000 : i * 300_000 + 1_200_000]
    assert logins(sshd) - before == 1


async def test_a_key_the_server_does_not_know_is_access_denied(
    sshd: SshdServer, blob_path: Path, tmp_path: Path
) -> None:
    stranger = make_key(tmp_path / "stranger")
    p = SftpProvider(settings(key_file=str(stranger), known_hosts=str(sshd.known_hosts)))
    sink = MemorySink(0)
    try:
        with pytest.raises(AccessDenied, match="authentication as"):
            await fetch_with_retry(
                p, Source(sshd.sftp_url(blob_path)), 0, 10, sink, RetryPolicy(deadline=20)
            )
    finally:
        await p.aclose()
    assert sink.received == 0


async def test_a_missing_path_is_not_found(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path
) -> None:
    source = Source(sshd.sftp_url(blob_path.parent / "no-such-file.bin"))
    with pytest.raises(NotFound):
        await provider.fetch(source, 0, 10, MemorySink(0))
    with pytest.raises(NotFound):
        await provider.size(source)


async def test_without_known_hosts_the_connection_is_refused_unless_told_to_skip(
    sshd: SshdServer, blob_path: Path, blob: bytes
) -> None:
    p = SftpProvider(settings(key_file=str(sshd.client_key)))
    with pytest.raises(AccessDenied, match="known_hosts"):
        await p.fetch(Source(sshd.sftp_url(blob_path)), 0, 10, MemorySink(0))
    await p.aclose()
    p = SftpProvider(settings(key_file=str(sshd.client_key), insecure_skip_host_key_check=True))
    sink = MemorySink(0)
    await p.fetch(Source(sshd.sftp_url(blob_path)), 0, 10, sink)
    await p.aclose()
    assert sink.data == blob[:10]


async def test_a_host_key_not_in_known_hosts_is_access_denied(
    sshd: SshdServer, blob_path: Path, tmp_path: Path
) -> None:
    other = make_key(tmp_path / "other_host")
    pub = (tmp_path / "other_host.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    assert other.exists()
    p = SftpProvider(settings(key_file=str(sshd.client_key), known_hosts=str(known)))
    with pytest.raises(AccessDenied, match="host key"):
        await p.fetch(Source(sshd.sftp_url(blob_path)), 0, 10, MemorySink(0))
    await p.aclose()


async def test_an_unreadable_key_file_is_access_denied(
    sshd: SshdServer, blob_path: Path, tmp_path: Path
) -> None:
    p = SftpProvider(
        settings(key_file=str(tmp_path / "missing"), known_hosts=str(sshd.known_hosts))
    )
    with pytest.raises(AccessDenied, match="cannot load key_file"):
        await p.fetch(Source(sshd.sftp_url(blob_path)), 0, 10, MemorySink(0))
    await p.aclose()


async def test_a_closed_port_is_transient(sshd: SshdServer, blob_path: Path) -> None:
    p = SftpProvider(settings(key_file=str(sshd.client_key), insecure_skip_host_key_check=True))
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        url = f"sftp://{sshd.user}@127.0.0.1:{port}{blob_path}"
        with pytest.raises(TransientError, match="cannot reach"):
            await p.fetch(Source(url), 0, 10, MemorySink(0))
    await p.aclose()


async def test_a_wrong_item_size_is_refused_before_any_byte(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path
) -> None:
    sink = MemorySink(0)
    with pytest.raises(SizeMismatch, match=f"{SIZE} bytes"):
        await provider.fetch(Source(sshd.sftp_url(blob_path), size=SIZE + 1), 0, 10, sink)
    assert sink.received == 0


async def test_a_cancelled_or_failed_fetch_leaves_the_provider_usable(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path, blob: bytes
) -> None:
    source = Source(sshd.sftp_url(blob_path), size=SIZE)

    class Failing:
        async def write(self, offset: int, data: bytes | memoryview) -> None:
            raise WtfsError("store full")

    with pytest.raises(WtfsError, match="store full"):
        await provider.fetch(source, 0, SIZE, Failing())

    class Slow:
        async def write(self, offset: int, data: bytes | memoryview) -> None:
            await trio.sleep(10)

    with trio.move_on_after(0.2) as scope:
        await provider.fetch(source, 0, SIZE, Slow())
    assert scope.cancelled_caught
    sink = MemorySink(1000)
    await provider.fetch(source, 1000, 2_001_000, sink)
    assert sink.data == blob[1000:2_001_000]


async def test_a_dropped_connection_is_transient_and_the_retry_reconnects(
    sshd: SshdServer, provider: SftpProvider, blob_path: Path, blob: bytes
) -> None:
    source = Source(sshd.sftp_url(blob_path), size=SIZE)
    await provider.fetch(source, 0, 10, MemorySink(0))  # connect first
    before = logins(sshd)
    inner = MemorySink(0)
    errors: list[WtfsError] = []

    class DropsOnce:
        dropped = False

        async def write(self, offset: int, data: bytes | memoryview) -> None:
            await inner.write(offset, data)
            if not self.dropped:
                self.dropped = True
                assert sshd.drop_connections() >= 1
                await trio.sleep(0.3)  # let the loss reach the client before more reads

    await fetch_with_retry(
        provider,
        source,
        0,
        SIZE,
        DropsOnce(),
        RetryPolicy(base_delay=0.01, deadline=30),
        on_retry=lambda _n, e, _d: errors.append(e),
    )
    assert inner.data == blob
    assert len(errors) == 1 and isinstance(errors[0], TransientError)
    assert logins(sshd) - before == 1  # reconnected once


async def test_aclose_then_reuse(sshd: SshdServer, blob_path: Path, blob: bytes) -> None:
    p = SftpProvider(settings(key_file=str(sshd.client_key), known_hosts=str(sshd.known_hosts)))
    for _ in range(2):
        sink = MemorySink(0)
        await p.fetch(Source(sshd.sftp_url(blob_path)), 0, 100, sink)
        assert sink.data == blob[:100]
        await p.aclose()


def test_urls_name_user_host_port_and_path() -> None:
    p = SftpProvider(settings(username="fallback"))
    t = p._target(Source("sftp://alice@files.example:2222/data/a%20b.bin"))
    assert (t.user, t.host, t.port, t.path) == ("alice", "files.example", 2222, "/data/a b.bin")
    t = p._target(Source("sftp://files.example/~/rel/x.bin"))
    assert (t.user, t.port, t.path) == ("fallback", 22, "rel/x.bin")  # "/~/": login directory
    assert "alice" not in p._target(Source("sftp://alice@h/x")).name
