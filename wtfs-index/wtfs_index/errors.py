"""What can go wrong with an index, each with an errno and a cause a person can act on.

The client turns these into its own error types in one place (`wtfs.errors.from_index`); the
Girder plugin into HTTP answers. Causes never carry a password (index URLs are redacted).
"""

from __future__ import annotations

import errno as errno_


class IndexFailure(Exception):
    errno: int = errno_.EIO

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause

    def __str__(self) -> str:
        return self.cause


class IndexUnavailable(IndexFailure):
    """The database server cannot be reached (down, restarting, unreachable): worth retrying."""


class IndexBusy(IndexFailure):
    """Only inside `Index.without_waiting`: the call would have had to wait (another process
    holds the write lock, or another thread this connection). Nothing was done."""

    errno = errno_.EAGAIN


class IndexDamaged(IndexFailure):
    """The index is not a database, or a damaged one: `wtfs fsck` can move it aside."""


class IndexFull(IndexFailure):
    """The disk holding the index is full."""

    errno = errno_.ENOSPC


class IndexRefused(IndexFailure):
    """The index cannot be used safely as configured (SQLite on a network or FUSE filesystem,
    a newer schema than this version knows, an unknown URL scheme): a configuration error."""

    errno = errno_.EINVAL
