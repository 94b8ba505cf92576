"""Globus provider: registered, and says clearly what it would need."""

from __future__ import annotations

import pytest

from tests.support.sinks import MemorySink
from wtfs.errors import TransferFailed, TransientError
from wtfs.providers.base import ProviderSettings, Sink, Source
from wtfs.providers.globus import GlobusProvider
from wtfs.providers.retry import RetryPolicy, fetch_with_retry

SOURCE = Source("globus://ddb59aef-6d04-11e5-ba46-22000b92c6ec/share/data.h5", label="data.h5")


async def test_fetch_and_size_fail_with_a_cause_saying_what_is_missing() -> None:
    p = GlobusProvider(ProviderSettings())
    assert "globus" in p.schemes
    sink = MemorySink(0)
    with pytest.raises(TransferFailed) as info:
        await p.fetch(SOURCE, 0, 10, sink)
    cause = info.value.cause
    assert not isinstance(info.value, TransientError)
    assert "not configured" in cause and "data.h5" in cause
    assert "client ID" in cause and "token" in cause and "endpoint" in cause
    assert sink.received == 0
    with pytest.raises(TransferFailed, match="not configured"):
        await p.size(SOURCE)
    await p.aclose()


async def test_it_is_not_retried() -> None:
    calls = 0

    class Counting(GlobusProvider):
        async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
            nonlocal calls
            calls += 1
            await super().fetch(source, start, end, sink)

    with pytest.raises(TransferFailed, match="not configured"):
        await fetch_with_retry(
            Counting(ProviderSettings()), SOURCE, 0, 10, MemorySink(0), RetryPolicy()
        )
    assert calls == 1
