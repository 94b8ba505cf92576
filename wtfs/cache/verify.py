"""Checksums: a complete file whose bytes do not match the checksum Girder (or `meta`) gave is
never served; its entry is dropped and the read fails with the cause."""

from __future__ import annotations

import hashlib
import logging

import trio

from wtfs.cache.entry import FileRef
from wtfs.errors import ChecksumMismatch

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024


def hash_fd(fd: int, algo: str, size: int) -> str | None:
    """The hex digest of the first `size` bytes of `fd`; None for an unknown algorithm."""
    import os

    try:
        digest = hashlib.new(algo.lower())
    except ValueError:
        log.warning("unknown checksum algorithm %r: not verified", algo)
        return None
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


async def verify(fd: int, ref: FileRef) -> ChecksumMismatch | None:
    """Check a complete store file against the checksum `ref` knows, if any (in a thread)."""
    checksum = ref.source.checksum
    if not checksum:
        return None
    algo, _, expected = checksum.partition(":")
    actual = await trio.to_thread.run_sync(hash_fd, fd, algo, ref.size)
    if actual is None or actual == expected.lower():
        return None
    return ChecksumMismatch(
        f"{ref.path}: {algo} mismatch (expected {expected[:16]}…, got {actual[:16]}…)"
    )
