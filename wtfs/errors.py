"""One error hierarchy for all of wtfs.

Every failure a user can meet is a `WtfsError` carrying an errno and a human cause. Only
`wtfs/fuse/errors.py` turns these into `pyfuse3.FUSEError`, and only `wtfs/cli.py` turns them
into exit codes and messages. Causes must never contain secrets (API keys, tokens).
"""

from __future__ import annotations

import errno


class WtfsError(Exception):
    """Base class: `errno` is what a FUSE caller sees, `cause` what a human reads."""

    errno: int = errno.EIO

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause

    def __str__(self) -> str:
        return self.cause


class ConfigError(WtfsError):
    """Bad configuration, session or command-line input (exit code 2)."""

    errno = errno.EINVAL


class NotFound(WtfsError):
    """No such name in the tree, or a source that is not (or no longer) there: 404, 410, a
    file deleted in Girder after its folder was listed. Not retried: asking again finds nothing.
    """

    errno = errno.ENOENT


class AccessDenied(WtfsError):
    """The source refuses us (401/403 after a token refresh, a local path outside the allowed
    roots): permanent until someone changes a permission or a credential."""

    errno = errno.EACCES


class ReadOnly(WtfsError):
    """Any write: the mount shows Girder's data and never changes it."""

    errno = errno.EROFS


class NoSpace(WtfsError):
    """The private store cannot make room (everything left is locked or in flight)."""

    errno = errno.ENOSPC


class DiskFull(NoSpace):
    """The disk under the store is full: a store write or the index met ENOSPC ("database or
    disk is full"). Unlike a full capacity this may pass once the GC has freed some bytes, so
    the write is tried once more after a GC before the reader gets ENOSPC."""


class Timeout(WtfsError):
    """The bytes did not arrive within `network.read_deadline`: the reader gets ETIMEDOUT
    rather than waiting on a stuck server forever."""

    errno = errno.ETIMEDOUT


class TransferFailed(WtfsError):
    """A fetch failed for good (after retries, or at once for a permanent error)."""

    errno = errno.EIO


class TransientError(TransferFailed):
    """A failure worth retrying: connection reset, timeout, 408, 429, 5xx.

    `resume_after` is a server's Retry-After hint in seconds, if it gave one.
    """

    def __init__(self, cause: str, *, resume_after: float | None = None) -> None:
        super().__init__(cause)
        self.resume_after = resume_after


class SizeMismatch(TransferFailed):
    """The source has a different number of bytes than the item claims."""


class ChecksumMismatch(TransferFailed):
    """The fetched bytes do not match the known checksum: never served."""


class GirderUnavailable(TransientError):
    """The Girder server could not be reached (retried, then EIO with this cause)."""


class IndexUnavailable(TransientError):
    """The store's index (its database server) cannot be reached: fetches retry, then fail."""


def from_index(exc: BaseException) -> WtfsError:
    """The one translation of the index's failures (`wtfs_index.errors`) into wtfs errors."""
    from wtfs_index.errors import IndexFull, IndexRefused
    from wtfs_index.errors import IndexUnavailable as Unreachable

    cause = str(exc)
    if isinstance(exc, Unreachable):
        return IndexUnavailable(cause)
    if isinstance(exc, IndexFull):
        return DiskFull(cause)
    if isinstance(exc, IndexRefused):
        return ConfigError(cause)
    return TransferFailed(cause)
