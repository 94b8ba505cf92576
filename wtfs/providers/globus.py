"""Globus sources (`globus://<endpoint>/<path>`): registered, not implemented.

Registering the scheme means an item pointing at Globus gets a clear, per-file error (EIO with
a cause saying what is missing) instead of "unknown scheme" or a daemon crash; the rest of the
session mounts normally.
"""

from __future__ import annotations

from wtfs.errors import TransferFailed
from wtfs.providers.base import Provider, Sink, Source
from wtfs.providers.urls import describe

_NEEDS = (
    "globus provider is not configured: fetching {name} would need a Globus transfer client "
    "(client ID and a transfer token or refresh token with the transfer scope), a Globus "
    "endpoint on this host whose path covers the private store, and permission on the source "
    "endpoint; wtfs does not implement Globus transfers yet"
)


class GlobusProvider(Provider):
    schemes = ("globus",)
    supports_ranges = False

    def _unavailable(self, source: Source) -> TransferFailed:
        return TransferFailed(_NEEDS.format(name=describe(source)))

    async def size(self, source: Source) -> int:
        raise self._unavailable(source)

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        raise self._unavailable(source)
