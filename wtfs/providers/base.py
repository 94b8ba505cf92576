"""The provider contract: fetch a byte range of a source into a sink.

Providers know nothing of the cache. They are handed a `Source` (what to read), a half-open
byte range and a `Sink`; they write the bytes in order and raise a `WtfsError` subclass on
failure (`TransientError` for what is worth retrying, other `TransferFailed`/`AccessDenied`/
`NotFound` for what is not). Retrying and resuming live in `wtfs.providers.retry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wtfs.girder.client import GirderClient


@dataclass(frozen=True)
class Source:
    """Where an item's bytes live.

    `url` is scheme-qualified: `girder://file/<fileId>` for a Girder download, otherwise the
    item's `meta.phys_path` (a path with no scheme is normalised to `local://` by the session
    layer). `size` is what the item claims; providers must check it against the source.
    """

    url: str
    size: int | None = None
    checksum: str | None = None  # "sha256:<hex>" / "sha512:<hex>" when known
    label: str = ""  # a human name for logs and transfer records (never secret)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()


class Sink(Protocol):
    """Receives bytes in order. `offset` is absolute within the source. `data` may be a view
    of a buffer the provider reuses: consume (write or copy) it before returning."""

    async def write(self, offset: int, data: bytes | memoryview) -> None: ...


@dataclass(frozen=True)
class ProviderSettings:
    """What every provider may need from configuration (read-only, shared).

    `options` holds the provider-specific section of the config file, keyed by scheme
    (e.g. `options["sftp"]["key_file"]`), so plugins get their settings without a wtfs change.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    allowed_local_roots: tuple[str, ...] = ()
    http_headers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Provider(ABC):
    """One way of fetching bytes; one instance per scheme per daemon, shared by all items."""

    #: URL schemes this class serves, lower case.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether `fetch` can start at any offset cheaply (otherwise it streams from 0).
    supports_ranges: ClassVar[bool] = True

    def __init__(self, settings: ProviderSettings, girder: GirderClient | None = None) -> None:
        """`girder` is the daemon's authenticated Girder client, for providers that need it."""
        self.settings = settings
        self.girder = girder

    @abstractmethod
    async def size(self, source: Source) -> int:
        """The source's real size in bytes (may cost a round trip)."""

    @abstractmethod
    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        """Write bytes [start, end) of `source` to `sink`, in order.

        Must raise rather than write a byte that is not the source's byte at that offset.
        Writing fewer bytes than asked without raising is a contract violation.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release pooled connections."""
