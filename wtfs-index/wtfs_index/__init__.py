"""The private store's index: every record shared by the processes using one store (entries and
their present ranges, locks, claims, transfers, evictions, owners), behind one interface.

A distribution of its own (`wtfs-index`), installed by both the wtfs client and the Girder
server plugin, so that neither copies the other's queries. Two backends give the same
behaviour: SQLite inside the store (the embedded default, one host) and PostgreSQL (a store
shared by several hosts; `pip install './wtfs-index[postgres]'`).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from wtfs_index.base import DEFAULT_LEASE, DISCARD_AFTER, SCHEMA_VERSION, Index
from wtfs_index.errors import (
    IndexBusy,
    IndexDamaged,
    IndexFailure,
    IndexFull,
    IndexRefused,
    IndexUnavailable,
)
from wtfs_index.model import (
    ClaimRow,
    EntryRow,
    Evicted,
    Eviction,
    Heartbeat,
    LockKind,
    LockRow,
    NewEntry,
    OwnerRow,
    PinState,
    PrefetchFileRow,
    PrefetchRow,
    PrefetchState,
    Punch,
    Reservation,
    StoreSummary,
    TransferRow,
    TransferStatus,
    UnlinkBatch,
    WindowResult,
    entry_key,
    fingerprint,
)
from wtfs_index.owner import Owner
from wtfs_index.ranges import Ranges

__all__ = [
    "DEFAULT_LEASE",
    "DISCARD_AFTER",
    "SCHEMA_VERSION",
    "ClaimRow",
    "EntryRow",
    "Evicted",
    "Eviction",
    "Heartbeat",
    "Index",
    "IndexBusy",
    "IndexDamaged",
    "IndexFailure",
    "IndexFull",
    "IndexRefused",
    "IndexUnavailable",
    "LockKind",
    "LockRow",
    "NewEntry",
    "Owner",
    "OwnerRow",
    "PinState",
    "PrefetchFileRow",
    "PrefetchRow",
    "PrefetchState",
    "Punch",
    "Ranges",
    "Reservation",
    "StoreSummary",
    "TransferRow",
    "TransferStatus",
    "UnlinkBatch",
    "WindowResult",
    "entry_key",
    "fingerprint",
    "index_location",
    "open_index",
    "redact",
    "url_secrets",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def index_location(url: str | None, store_root: Path) -> str:
    """Where the index of a store lives, for people: a path, or the URL without its password."""
    return redact(url) if url else str(store_root / "index.sqlite3")


def open_index(url: str | None, store_root: Path, *, lease: float = DEFAULT_LEASE) -> Index:
    """The index of the store at `store_root`: SQLite inside it when `url` is empty, else the
    PostgreSQL database `url` names."""
    if not url:
        from wtfs_index.sqlite import INDEX_FILE, SqliteIndex

        return SqliteIndex(store_root / INDEX_FILE, lease=lease)
    scheme = url.partition(":")[0].lower()  # urlsplit raises on some bad URLs ("[::1")
    if scheme in POSTGRES_SCHEMES:
        try:
            from wtfs_index.postgres import PostgresIndex
        except ImportError as exc:
            raise IndexRefused(
                f"index_url: {redact(url)} needs psycopg 3 "
                f"(pip install './wtfs-index[postgres]'; {exc.name} is missing)"
            ) from None
        return PostgresIndex(url, lease=lease)
    raise IndexRefused(
        f"index_url: {redact(url)}: unknown scheme {scheme!r} (expected postgresql://...)"
    )


def redact(url: str) -> str:
    """An index URL without its password (for messages, logs, status and Girder's answers).

    Textual, so that it never raises and hides more rather than less on a URL that does not
    parse (a port that is not a number, an unencoded `/` or `@` in the password): everything
    between the first `:` of the user info and the last `@` before the query is the password.
    libpq also takes a `password=` query parameter; its value is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL libpq reads; it may still hold a secret before an '@'
        return f"***@{url.rpartition('@')[2]}" if "@" in url else url
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    userinfo, at, hostpath = head.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            head = f"{user}:***@{hostpath}"
    return f"{scheme}://{head}{_QUERY_PASSWORD.sub(_hide_value, tail)}"


def _hide_value(match: re.Match[str]) -> str:
    return f"{match.group(1)}***"


def url_secrets(url: str) -> list[str]:
    """The passwords an index URL holds (the user info's, a `password=` parameter's), as
    written and decoded: to scrub from messages a driver may echo. Parsed as `redact` does."""
    _, sep, rest = url.partition("://")
    if not sep:
        return []
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    userinfo, at, _ = head.rpartition("@")
    found = [userinfo.partition(":")[2]] if at and ":" in userinfo else []
    found += [m.group(0)[len(m.group(1)) :] for m in _QUERY_PASSWORD.finditer(tail)]
    secrets = {s for raw in found for s in (raw, unquote(raw)) if s}
    return sorted(secrets, key=len, reverse=True)
