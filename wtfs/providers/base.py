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

from wtfs.config import Config, NetworkConfig
from wtfs.errors import SizeMismatch

if TYPE_CHECKING:
    from wtfs.girder.client import GirderClient


@dataclass(frozen=True)
class Source:
    """Where an item's bytes live.

    `url` is scheme-qualified: `girder://file/<fileId>` for a Girder download, otherwise the
    item's `meta.phys_path` (a path with no scheme is made `local://` + the path by the tree,
    `wtfs/namespace/tree.py`, when it builds the item's node). `size` is what the item claims;
    providers must check it against the source.
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

    A type of its own, not the config sections, because it is the plugins' contract: its names
    stay put when the config file's change. The timeouts default to the `network` section's.
    `options` holds the provider-specific section of the config file, keyed by scheme
    (e.g. `options["sftp"]["key_file"]`), so plugins get their settings without a wtfs change.
    """

    connect_timeout: float = NetworkConfig.connect_timeout
    read_timeout: float = NetworkConfig.read_timeout
    allowed_local_roots: tuple[str, ...] = ()
    http_headers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def provider_settings(config: Config) -> ProviderSettings:
    """The daemon's provider settings, from the `network` and `providers` sections."""
    return ProviderSettings(
        connect_timeout=config.network.connect_timeout,
        read_timeout=config.network.read_timeout,
        allowed_local_roots=tuple(str(p) for p in config.providers.allowed_local_roots),
        http_headers=config.providers.http_headers,
        options=config.providers.options,
    )


def check_range(start: int, end: int) -> None:
    """Refuse a range no caller should ask for (a bug, not a failure of the source)."""
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end})")


def check_size(name: str, size: int, source: Source, end: int) -> None:
    """Refuse a source whose real `size` is not the item's, or ends before `end`.

    For providers that learn the size when they open the source: checked before any byte is
    written, so the wrong bytes are never served.
    """
    if source.size is not None and size != source.size:
        raise SizeMismatch(f"{name}: file has {size} bytes, the item {source.size}")
    if end > size:
        raise SizeMismatch(f"{name}: file has {size} bytes, bytes up to {end} asked")


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
