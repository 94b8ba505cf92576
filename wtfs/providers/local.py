"""Local files (`local:///abs/path`, `file:///abs/path`): a security boundary.

Item metadata names the path, and item metadata is written by Girder users, so without a
fence any user could mount `/etc/shadow` or another user's data through the daemon. Only files
under `ProviderSettings.allowed_local_roots` are served; with no roots configured (the
default) every path is refused.

The check resolves the path first (`os.path.realpath` follows `..` and every symlink), then
requires the result to lie inside a resolved root (`os.path.commonpath`, which compares whole
components: `/data` does not contain `/database`). The file is then opened component by
component from the root with `O_NOFOLLOW` (`openat` through `dir_fd`), so a symlink swapped in
after the check makes the open fail instead of escaping; `fstat` must show a regular file.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import trio

from wtfs.errors import (
    AccessDenied,
    ConfigError,
    NotFound,
    SizeMismatch,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.providers.base import (
    Provider,
    ProviderSettings,
    Sink,
    Source,
    check_range,
    check_size,
)

if TYPE_CHECKING:
    from wtfs.girder.client import GirderClient

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Errors a network filesystem under a "local" root may recover from on a fresh open.
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN, errno.EINTR})


def path_from_url(url: str) -> str:
    """The absolute path a `local:` or `file:` URL names.

    `local:` URLs are built by the tree (`wtfs/namespace/tree.py`) as `local://` + an item's raw
    `meta.phys_path`, so their path is taken verbatim (a `%`, `?` or `#` is part of the file
    name). `file:` URLs follow RFC 8089:
    percent-decoded, with an empty or `localhost` host.
    """
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "local":
        path = rest[2:] if rest.startswith("//") else rest
    elif scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise AccessDenied(f"{url}: names host {parts.netloc!r}; only local paths are served")
        path = unquote(parts.path)
    else:
        raise TransferFailed(f"{url}: not a local or file URL")
    if "\x00" in path:
        raise AccessDenied(f"{path!r}: a path with a NUL byte is refused")
    if not path.startswith("/"):
        raise AccessDenied(f"{path!r}: not an absolute path")
    return path


class LocalProvider(Provider):
    schemes = ("local", "file")
    supports_ranges = True

    def __init__(self, settings: ProviderSettings, girder: GirderClient | None = None) -> None:
        super().__init__(settings, girder)
        roots = []
        for root in settings.allowed_local_roots:
            if not os.path.isabs(root):
                raise ConfigError(f"allowed_local_roots: {root!r} is not an absolute path")
            roots.append(os.path.realpath(root))
        self.roots: tuple[str, ...] = tuple(roots)
        threads = int(settings.options.get("local", {}).get("threads", 8))
        self._limiter = trio.CapacityLimiter(threads)

    def _confine(self, path: str) -> tuple[str, str]:
        """Return (root, resolved path) or raise AccessDenied; runs in a worker thread."""
        real = os.path.realpath(path)
        for root in self.roots:
            if os.path.commonpath([root, real]) == root:
                return root, real
        if not self.roots:
            raise AccessDenied(f"{path}: local files are disabled (no allowed_local_roots)")
        raise AccessDenied(f"{path}: outside the allowed local roots")

    def _open(self, url: str) -> tuple[int, int, str]:
        """Open the file a URL names; return (fd, size, path). Runs in a worker thread."""
        path = path_from_url(url)
        root, real = self._confine(path)
        names = [] if real == root else os.path.relpath(real, root).split(os.sep)
        if not names:
            raise AccessDenied(f"{path}: not a regular file")
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = -1
        try:
            fd = os.open(root, flags | os.O_DIRECTORY)
            for name in names[:-1]:
                parent, fd = fd, -1
                try:
                    fd = os.open(name, flags | os.O_DIRECTORY, dir_fd=parent)
                finally:
                    os.close(parent)
            parent, fd = fd, -1
            try:
                # O_NONBLOCK: opening a FIFO must not hang; it is refused below anyway.
                fd = os.open(names[-1], flags | os.O_NONBLOCK, dir_fd=parent)
            finally:
                os.close(parent)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AccessDenied(f"{path}: not a regular file")
            os.set_blocking(fd, True)
            result = fd, st.st_size, path
            fd = -1
            return result
        except OSError as exc:
            raise _open_error(exc, path) from exc
        finally:
            if fd >= 0:
                os.close(fd)

    async def size(self, source: Source) -> int:
        fd, size, _ = await trio.to_thread.run_sync(self._open, source.url, limiter=self._limiter)
        os.close(fd)
        return size

    async def fetch(self, source: Source, start: int, end: int, sink: Sink) -> None:
        check_range(start, end)
        fd, size, path = await trio.to_thread.run_sync(
            self._open, source.url, limiter=self._limiter
        )
        try:
            check_size(path, size, source, end)
            pos = start
            while pos < end:
                want = min(CHUNK, end - pos)
                try:
                    data = await trio.to_thread.run_sync(
                        os.pread, fd, want, pos, limiter=self._limiter
                    )
                except OSError as exc:
                    raise _read_error(exc, path, pos) from exc
                if not data:
                    raise SizeMismatch(f"{path}: file ended at byte {pos} while being read")
                await sink.write(pos, data)
                pos += len(data)
        finally:
            os.close(fd)


def _open_error(exc: OSError, path: str) -> WtfsError:
    if exc.errno == errno.ENOENT:
        return NotFound(f"{path}: no such file")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        # The resolved path had no symlink when checked: something changed it since.
        return AccessDenied(f"{path}: changed while being opened (symlink or non-directory)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"{path}: permission denied")
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientError(f"{path}: {os.strerror(exc.errno or 0)}")
    return TransferFailed(f"{path}: cannot open: {os.strerror(exc.errno or 0)}")


def _read_error(exc: OSError, path: str, pos: int) -> WtfsError:
    reason = os.strerror(exc.errno or 0)
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientError(f"{path}: read failed at byte {pos}: {reason}")
    return TransferFailed(f"{path}: read failed at byte {pos}: {reason}")
