"""A provider serving bytes from memory (the provider contract, in-process), and a cache manager
on a real store and index around it, so that manager tests control what the "remote" holds and
when it answers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar

import trio
import trio.lowlevel
from wtfs_index import Owner

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.manager import CacheManager, CacheSettings
from wtfs.cache.store import Store
from wtfs.config import Config
from wtfs.errors import NotFound
from wtfs.providers.base import Provider, ProviderSettings, Sink, Source
from wtfs.providers.registry import ProviderRegistry
from wtfs.providers.retry import RetryPolicy

CHUNK = 256 * 1024


class MemoryProvider(Provider):
    schemes = ("mem",)
    blobs: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[tuple[str, int, int]]] = []
    #: when set, every fetch waits for it before its first byte
    gate: ClassVar[trio.Event | None] = None
    #: url -> an exception raised by the fetch of that url (after its request is counted)
    explode: ClassVar[dict[str, BaseException]] = {}
    #: url -> (offset, event): a fetch of that url stops before writing the byte at `offset`
    #: until the event is set (`paused` is set once it waits there)
    pause: ClassVar[dict[str, tuple[int, trio.Event]]] = {}
    paused: ClassVar[trio.Event | None] = None

    @classmethod
    def reset(cls) -> None:
        cls.blobs.clear()
        cls.requests.clear()
        cls.gate = None
        cls.explode = {}
        cls.pause = {}
        cls.paused = None

    async def size(self, source: Source) -> int:
        return len(self.blobs[source.url])

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        if source.url not in self.blobs:
            raise NotFound(f"{source.url}: no such blob")
        self.requests.append((source.url, start, end))
        if self.gate is not None:
            await self.gate.wait()
        if source.url in self.explode:
            raise self.explode[source.url]
        data = self.blobs[source.url]
        for offset in range(start, end, CHUNK):
            stop = self.pause.get(source.url)
            if stop is not None and offset >= stop[0] > start:
                if self.paused is not None:
                    self.paused.set()
                await stop[1].wait()
            await sink.write(offset, data[offset : min(end, offset + CHUNK)])
            await trio.lowlevel.checkpoint()


@asynccontextmanager
async def make_manager(
    tmp_path: Path, *, capacity: int, block_size: int, session_id: str = "s1"
) -> AsyncIterator[CacheManager]:
    """A running CacheManager over a fresh store in `tmp_path`, its heartbeat included."""
    store = Store(tmp_path / "store")
    store.prepare()
    index = store.open_index()
    owner = Owner.current("test")
    index.register_owner(owner, "mount")
    registry = ProviderRegistry(ProviderSettings(), None, classes={"mem": MemoryProvider})
    settings = dataclasses.replace(
        CacheSettings.from_config(Config(private_storage_capacity=capacity, block_size=block_size)),
        retry=RetryPolicy(attempts=2, base_delay=0.01),
    )
    manager = CacheManager(store, AsyncIndex(index), owner, registry, settings,
                           session_id=session_id)  # fmt: skip
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            yield manager
            nursery.cancel_scope.cancel()
    finally:
        index.close()
