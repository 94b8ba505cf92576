"""Keeping glibc's malloc from holding on to freed megabytes.

A daemon streaming through the store allocates and frees buffers of a MiB or so all the time.
glibc serves those from mmap until the first such free, after which it raises its threshold
and keeps them in the heap, where freed memory is rarely given back: RSS crept up by several
MiB over a long stream. A fixed threshold keeps them mmapped (returned at once); `trim_memory`
hands back what the heap still holds after a burst (a GC pass). Not glibc: nothing to do.
"""

from __future__ import annotations

import contextlib
import ctypes

M_MMAP_THRESHOLD = -3  # mallopt(3)
THRESHOLD = 256 * 1024


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def tame_malloc() -> None:
    with contextlib.suppress(OSError, AttributeError):
        _libc().mallopt(M_MMAP_THRESHOLD, THRESHOLD)


def trim_memory() -> None:
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)
