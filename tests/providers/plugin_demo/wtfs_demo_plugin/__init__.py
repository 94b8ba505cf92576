"""`demo://pattern/<seed>`: bytes computed from the seed (byte i is (i * 7 + seed) % 256)."""

from __future__ import annotations

from wtfs.errors import NotFound, SizeMismatch
from wtfs.providers.base import Provider, Sink, Source

CHUNK = 64 * 1024


def pattern(seed: int, start: int, end: int) -> bytes:
    return bytes((i * 7 + seed) % 256 for i in range(start, end))


class DemoProvider(Provider):
    schemes = ("demo",)

    def _seed(self, source: Source) -> int:
        kind, _, seed = source.url.removeprefix("demo://").partition("/")
        if kind != "pattern" or not seed.isdigit():
            raise NotFound(f"{source.url}: no such demo object")
        return int(seed)

    async def size(self, source: Source) -> int:
        self._seed(source)
        if source.size is None:
            raise SizeMismatch("demo objects need meta.size")
        return source.size

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        seed = self._seed(source)
        for offset in range(start, end, CHUNK):
            await sink.write(offset, pattern(seed, offset, min(end, offset + CHUNK)))
