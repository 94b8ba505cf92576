"""Sessions kept in Girder: the REST calls of the wtfs server plugin's `/dm/session` API.

`wtfs session create|list|delete` and `wtfs demo` use these; `wtfs mount --session-id` reads a
session with `wtfs.namespace.session.fetch_session`. They run on the daemon's `GirderClient`
(its API key from the config, never from argv). A Girder without the plugin answers 404 on
every `/dm/session` route (with it, an unknown session id is a 400), which becomes one line
saying how to install the plugin; the server's 400 messages are shown in its own words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from wtfs.errors import ConfigError, NotFound, TransferFailed
from wtfs.girder.client import BadRequest, GirderClient

ROUTE = "dm/session"
INSTALL_HINT = (
    "a Girder admin installs it with `pip install ./girder-plugin-wtfs` (from a wtfs clone) "
    "in Girder's environment and restarts Girder"
)


def no_plugin(girder: GirderClient) -> ConfigError:
    return ConfigError(
        f"Girder at {girder.api_url} has no wtfs plugin (404 for /{ROUTE}): {INSTALL_HINT}"
    )


async def _call(
    girder: GirderClient,
    method: str,
    path: str,
    refused: str,
    *,
    params: dict[str, Any] | None = None,
    data: dict[str, str] | None = None,
) -> Any:
    """One call of the session API; ``refused`` introduces the server's 400 message."""
    with _plain_errors(girder, refused):
        return await girder.request_json(method, path, params=params, data=data)


@contextmanager
def _plain_errors(girder: GirderClient, refused: str) -> Iterator[None]:
    """The session API's answers in one line: a 404 is a Girder without the plugin, a 400 the
    server's own message after ``refused``."""
    try:
        yield
    except NotFound:
        raise no_plugin(girder) from None
    except BadRequest as exc:
        raise ConfigError(f"{refused}: {exc.message}") from None


async def create_session(
    girder: GirderClient, data_set: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """`POST /dm/session` of (itemId, mountPath) pairs: the new record (seed 001's shape)."""
    entries = [{"itemId": item_id, "mountPath": mount_path} for item_id, mount_path in data_set]
    # In the body, not the URL: a dataSet of many entries outgrows a query string.
    record = await _call(
        girder,
        "POST",
        ROUTE,
        "Girder refused the session",
        data={"dataSet": json.dumps(entries)},
    )
    return _record(record, "POST")


async def list_sessions(girder: GirderClient, *, every: bool = False) -> list[dict[str, Any]]:
    """`GET /dm/session`, every page: the caller's sessions (``every``: all they may read)."""
    params = {"all": str(every).lower(), "sort": "_id"}
    with _plain_errors(girder, "Girder refused the listing"):
        return [_record(r, "GET") async for r in girder.paged(ROUTE, params)]


async def delete_session(girder: GirderClient, session_id: str) -> None:
    """`DELETE /dm/session/{id}` (the server releases the session's locks)."""
    await _call(girder, "DELETE", f"{ROUTE}/{session_id}", f"Girder refused to delete {session_id}")


def _record(value: Any, method: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("_id"), str):
        raise TransferFailed(f"{method} /{ROUTE}: the answer is not a session record")
    return value
