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
    errno = errno.ENOENT


class AccessDenied(WtfsError):
    errno = errno.EACCES


class ReadOnly(WtfsError):
    errno = errno.EROFS


class NoSpace(WtfsError):
    """The private store cannot make room (everything left is locked or in flight)."""

    errno = errno.ENOSPC


class Timeout(WtfsError):
    errno = errno.ETIMEDOUT


class TransferFailed(WtfsError):
    """A fetch failed for good (after retries, or at once for a permanent error)."""

    errno = errno.EIO


class TransientError(TransferFailed):
    """A failure worth retrying: connection reset, timeout, 5xx, 429.

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
