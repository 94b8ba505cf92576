"""The plugin's way to the cluster's store: two Girder settings, and the index opened from them.

    wtfs.index_url   postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE — the index the mounts
                     of the cluster share (their `index_url`); locks, pins and transfers live there
    wtfs.store_path  the store directory as the Girder server sees it (the mounts'
                     `private_storage_path`), read for `GET /dm/lock/{id}/download` only

An admin sets them with `PUT /system/setting` (validated by `register_settings`'s validators:
a `postgresql://` URL, an absolute directory). Only a PostgreSQL index can be shared: an SQLite
index lives inside one host's store, where a Girder server has no business writing.

The URL may hold the database's password. Girder stores it as given (the plugin needs it), but
shows settings to admins (`GET /system/setting`): that answer, every error and every log line
show `wtfs_index.redact(url)` instead. (Better still: no password in the URL at all, with
`?passfile=/path/readable/by/girder` or `PGPASSWORD` in Girder's environment.)

The index is opened lazily, once per process, on the first request that needs it, and again
only when the setting changes; a database that goes away is `IndexUnavailable` (503) for the
requests meanwhile, and the index connects again by itself on the next one.
"""

# Girder is untyped (Any to mypy).
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from girder import events
from girder.exceptions import RestException, ValidationException
from girder.models.setting import Setting
from girder.utility import setting_utilities
from wtfs_index import (
    Index,
    IndexFailure,
    IndexRefused,
    IndexUnavailable,
    Owner,
    open_index,
    redact,
)

log = logging.getLogger(__name__)

INDEX_URL = "wtfs.index_url"
STORE_PATH = "wtfs.store_path"
SCHEMES = ("postgresql", "postgres")

#: Girder's event after `GET /system/setting` returns, where the URL's password is hidden
SETTING_ANSWER_EVENT = "rest.get.system/setting.after"

NO_INDEX = (
    f"the wtfs plugin has no index: set {INDEX_URL} to the PostgreSQL index the cluster's "
    f"mounts share (PUT /system/setting key={INDEX_URL} value=postgresql://USER@HOST/DATABASE)"
)
NO_STORE = (
    f"the wtfs plugin has no store to read: set {STORE_PATH} to the store directory as this "
    f"Girder server sees it (PUT /system/setting key={STORE_PATH} value=/path/to/store)"
)


def plugin_owner() -> str:
    """Who releases a lock through Girder (`release_lock`'s `by_owner`). Never a registered
    owner: a batch of files to unlink that a release leaves under it is adopted and finished by
    the next mount's GC pass (`reclaim_dead`), since this server need not write to the store."""
    return f"girder-plugin@{socket.gethostname()}"


@cache
def me() -> Owner:
    """This Girder process, for judging whether a lock's owner lives (a mount on this host
    and in this PID namespace is judged by /proc, any other by its lease)."""
    return Owner.current("girder")


# -- settings ------------------------------------------------------------------------------------


def _check_index_url(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if value in (None, ""):
        doc["value"] = ""  # not configured: the endpoints answer NO_INDEX
        return
    if not isinstance(value, str):
        raise ValidationException(f"{INDEX_URL} must be a postgresql:// URL (a string)", "value")
    url = value.strip()
    shown = redact(url)
    scheme = url.partition(":")[0].lower()
    if scheme not in SCHEMES or not url[len(scheme) :].startswith("://"):
        raise ValidationException(
            f"{INDEX_URL}: {shown} is not a postgresql:// URL: the cluster's index is the "
            "PostgreSQL database its mounts share (their index_url)",
            "value",
        )
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:  # its message may quote a piece of the password ("u:pa/ss@h": port "pa")
        raise ValidationException(
            f"{INDEX_URL}: {shown} cannot be read: its port is not a number, or its password "
            "holds a character that must be %-encoded (/ ? # @ :)",
            "value",
        ) from None
    doc["value"] = url


def _check_store_path(doc: dict[str, Any]) -> None:
    value = doc["value"]
    if value in (None, ""):
        doc["value"] = ""  # not configured: downloads answer NO_STORE
        return
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValidationException(f"{STORE_PATH} must be an absolute path, got {value!r}", "value")
    path = os.path.normpath(value)
    if not os.path.isdir(path):
        raise ValidationException(f"{STORE_PATH}: {path} is not a directory", "value")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValidationException(
            f"{STORE_PATH}: {path} is not readable by the Girder server (uid {os.getuid()})",
            "value",
        )
    doc["value"] = path


def _hide_password(event: Any) -> None:
    """Show admins `redact(url)` where `GET /system/setting` would answer the stored URL, for
    `?key=wtfs.index_url` and for `?list=[..., "wtfs.index_url"]` alike. (The request's own
    parameters are consumed by then: an answer that *is* the stored URL is the one to hide.)"""
    answer = event.info.get("returnVal")
    if isinstance(answer, dict):
        if isinstance(answer.get(INDEX_URL), str):
            event.preventDefault().addResponse({**answer, INDEX_URL: redact(answer[INDEX_URL])})
    elif isinstance(answer, str) and answer and answer == Setting().get(INDEX_URL):
        event.preventDefault().addResponse(redact(answer))


def register_settings() -> None:
    setting_utilities.registerValidator(INDEX_URL, _check_index_url)
    setting_utilities.registerValidator(STORE_PATH, _check_store_path)
    events.bind(SETTING_ANSWER_EVENT, "wtfs.hide_index_password", _hide_password)


def store_path() -> Path:
    """The store directory, or a 503 saying which setting to set."""
    value = Setting().get(STORE_PATH)
    if not value:
        raise RestException(NO_STORE, 503)
    return Path(value)


# -- the index -----------------------------------------------------------------------------------


class Cluster:
    """The index of the setting's URL, opened once per process (and again when it changes).

    One `PostgresIndex` serves every request thread: it serialises its own transactions and
    reconnects after a lost connection. A first open that fails is not remembered: the next
    request tries again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: Index | None = None
        self._url: str | None = None

    def configured(self) -> bool:
        return bool(Setting().get(INDEX_URL))

    def index(self) -> Index:
        url = Setting().get(INDEX_URL)
        if not url:
            raise RestException(NO_INDEX, 503)
        with self._lock:
            if self._index is not None and self._url == url:
                return self._index
            old, self._index, self._url = self._index, None, None
            if old is not None:
                old.close()
            with answering():
                # A PostgreSQL index ignores the store root (it only places an SQLite index).
                self._index = open_index(url, Path(Setting().get(STORE_PATH) or "/"))
            self._url = url
            log.info("wtfs: the cluster's index is %s", redact(url))
            return self._index

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
            self._index, self._url = None, None


CLUSTER = Cluster()


@contextmanager
def answering() -> Iterator[None]:
    """Index failures as HTTP answers: 503 when the index cannot be reached or used as set,
    500 for anything else it reports; never a traceback (its causes carry no password)."""
    try:
        yield
    except (IndexUnavailable, IndexRefused) as exc:
        raise RestException(f"the wtfs index: {exc.cause}", 503) from None
    except IndexFailure as exc:
        raise RestException(f"the wtfs index: {exc.cause}", 500) from None
