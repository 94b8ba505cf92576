"""The one place where wtfs errors become errnos for the kernel."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from wtfs.errors import WtfsError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def to_errno(exc: BaseException) -> int:
    if isinstance(exc, WtfsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def translated(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn WtfsError (and any surprise) raised by a handler into a FUSEError with its errno."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except WtfsError as exc:
            if exc.errno not in (errno.ENOENT, errno.EROFS):
                log.warning("%s: %s", handler.__name__, exc.cause)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from None
        except Exception:
            log.exception("%s: unexpected error", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
