"""Logging set-up: stderr in the foreground, a file in the background; secrets redacted.

A background mount's default log file lives in the private store, which must not be created by
a mount that is refused (bad input writes nothing): its records wait in memory until the mount
is ready (`open_deferred_log`), and a refused mount reports through the ready pipe instead.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from wtfs.config import Config

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Last line of defence: replace any known secret that slipped into a record with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(s in message for s in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


def _handler(config: Config, log_file: Path | None) -> logging.Handler:
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    secrets = [config.girder.api_key.reveal()] if config.girder.api_key else []
    handler.addFilter(RedactSecrets(secrets))
    return handler


def setup_logging(
    config: Config, verbose: int = 0, log_file: Path | None = None, *, deferred: bool = False
) -> logging.handlers.MemoryHandler | None:
    """Log to `log_file` (or stderr). With `deferred`, hold records in memory instead and
    return the buffer for `open_deferred_log`."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else config.log_level
    memory = None
    handler: logging.Handler
    if deferred:
        handler = memory = logging.handlers.MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1)
    else:
        handler = _handler(config, log_file)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: too chatty for a data path, and URLs may carry secrets.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return memory


def open_deferred_log(memory: logging.handlers.MemoryHandler, config: Config, path: Path) -> None:
    """The mount is up: write the held records to `path` and log there from now on."""
    target = _handler(config, path)
    memory.setTarget(target)
    memory.flush()
    logging.getLogger().handlers[:] = [target]
    memory.close()
