"""In-memory sinks for provider tests, and the streamed bodies mocked servers answer with."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import trio


class MemorySink:
    """Collects bytes and fails the test if a provider writes out of order or out of range."""

    def __init__(self, start: int = 0, end: int | None = None) -> None:
        self.start = start
        self.end = end
        self.next = start
        self.buffer = bytearray()
        self.writes: list[tuple[int, int]] = []  # (offset, length) of every write

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        assert isinstance(data, bytes | bytearray | memoryview), type(data)
        assert offset == self.next, f"write at {offset}, expected {self.next} (out of order)"
        assert len(data) > 0, "empty write"
        if self.end is not None:
            assert offset + len(data) <= self.end, f"write past the end ({offset + len(data)})"
        self.buffer += data
        self.writes.append((offset, len(data)))
        self.next += len(data)

    @property
    def data(self) -> bytes:
        return bytes(self.buffer)

    @property
    def received(self) -> int:
        return len(self.buffer)

    def sha256(self) -> str:
        return hashlib.sha256(self.buffer).hexdigest()


class Body(httpx.AsyncByteStream):
    """A response body that arrives in 8 KiB pieces and may break after `fail_at` bytes."""

    def __init__(
        self, data: bytes, fail_at: int | None = None, exc: type[Exception] = httpx.ReadError
    ):
        self.data, self.fail_at, self.exc = data, fail_at, exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 8192):
            if self.fail_at is not None and i >= self.fail_at:
                raise self.exc("connection reset by peer")
            await trio.lowlevel.checkpoint()
            yield self.data[i : i + 8192]
