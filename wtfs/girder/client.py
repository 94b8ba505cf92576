"""A small async Girder REST client: auth from an API key, paging, streaming downloads.

The API key is exchanged for a token with `POST /api_key/token`, the key sent in the request
body (never in a URL). The token goes in the `Girder-Token` header only; it is refreshed before
it expires and once on a 401 (a revoked token). Neither ever reaches a log line or an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
import trio

from wtfs.config import Config, GirderConfig, NetworkConfig, Secret
from wtfs.errors import (
    AccessDenied,
    GirderUnavailable,
    NotFound,
    TransferFailed,
    TransientError,
    WtfsError,
)
from wtfs.girder.rawhttp import NotSimple, RawHttp, Response
from wtfs.httpstatus import status_error, transport_error

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
# A page of the wtfs plugin's bulk listing: its largest (girder_plugin_wtfs.listing.MAX_LIMIT,
# which a plugin test holds this to). Each page costs the server a walk of the folder's items to
# the page's offset and one files query: 10,000 items take 3 requests rather than 11.
BULK_PAGE_SIZE = 5000
METADATA_ATTEMPTS = 4
TOKEN_DAYS = 30.0
# Refresh a token when less than this fraction of its lifetime is left.
TOKEN_REFRESH_FRACTION = 0.2


# httpcore reads HTTP/1.1 bodies 64 KiB per receive; a 1 MiB read moves the same bytes in
# far fewer trips through the event loop (bench: the provider alone went from ~200 to ~320 MB/s
# where curl made ~550). A class attribute of httpcore, set once for the daemon's clients.
READ_BYTES = 1024 * 1024


def tune_httpcore() -> None:
    connection = getattr(httpcore, "AsyncHTTP11Connection", None)
    if connection is not None and getattr(connection, "READ_NUM_BYTES", 0) < READ_BYTES:
        connection.READ_NUM_BYTES = READ_BYTES


class GirderClient:
    """One pooled `httpx.AsyncClient` per daemon, shared by metadata calls and downloads."""

    def __init__(
        self,
        api_url: str,
        api_key: Secret | None,
        *,
        connect_timeout: float = NetworkConfig.connect_timeout,
        read_timeout: float = NetworkConfig.read_timeout,
        transport: httpx.AsyncBaseTransport | None = None,
        bulk_listing: bool = GirderConfig.bulk_listing,
        raw_downloads: bool = True,
    ) -> None:
        """`transport` replaces the network (tests); `raw_downloads=False` sends every
        download through httpx (the raw receive path serves plain http only anyway)."""
        tune_httpcore()
        #: None: not known yet whether the server has the wtfs plugin (girder_plugin_wtfs)
        self._bulk_listing: bool | None = None if bulk_listing else False
        self.api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._token: Secret | None = None
        self._token_expires = 0.0
        self._token_lifetime = 0.0
        self._token_lock = trio.Lock()
        self.token_refreshes = 0
        self._raw = (
            RawHttp(connect_timeout, read_timeout)
            if raw_downloads and self.api_url.startswith("http://")
            else None
        )
        self._http = httpx.AsyncClient(
            base_url=self.api_url + "/",
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=True,
            transport=transport,
        )

    async def aclose(self) -> None:
        if self._raw is not None:
            await self._raw.aclose()
        await self._http.aclose()

    # -- auth ---------------------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        if self._token is None or time.time() > self._token_expires:
            await self.refresh_token(stale=self._token)
        assert self._token is not None
        return {"Girder-Token": self._token.reveal()}

    async def refresh_token(self, stale: Secret | None = None) -> None:
        """Get a new token from the API key, unless another task already replaced `stale`."""
        if self._api_key is None:
            raise AccessDenied("Girder refused the request and no API key is configured")
        async with self._token_lock:
            if (
                self._token is not None
                and self._token != stale
                and time.time() < self._token_expires
            ):
                return
            try:
                response = await self._http.post(
                    "api_key/token",
                    data={"key": self._api_key.reveal(), "duration": str(TOKEN_DAYS)},
                )
            except httpx.HTTPError as exc:
                raise network_error(exc, "getting a token") from None
            if response.status_code in (400, 401, 403):
                raise AccessDenied(
                    f"Girder refused the API key ({response.status_code}): {_message(response)}"
                )
            _raise_for_status(response, "getting a token")
            body = response.json()
            self._token = Secret(body["authToken"]["token"])
            lifetime = _lifetime(body["authToken"].get("expires"))
            self._token_lifetime = lifetime
            self._token_expires = time.time() + lifetime * (1 - TOKEN_REFRESH_FRACTION)
            self.token_refreshes += 1
            log.info("obtained a Girder token (valid %.1f days)", lifetime / 86400)

    # -- requests -----------------------------------------------------------------------------

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET with a few quick retries of transient failures (metadata calls are small)."""
        for attempt in range(METADATA_ATTEMPTS):
            try:
                return await self._get_json_once(path, params)
            except TransientError as exc:
                if attempt == METADATA_ATTEMPTS - 1:
                    raise
                delay = min(5.0, exc.resume_after or 0.2 * 2**attempt)
                log.warning("%s (retrying in %.1fs)", exc.cause, delay)
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _get_json_once(self, path: str, params: Mapping[str, Any] | None) -> Any:
        return await self.request_json("GET", path, params=params)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Any:
        """One request (form ``data`` in the body), its JSON answer; the token refreshed on 401.

        Not retried: a POST that timed out may have happened (`get_json` retries GETs).
        """
        what = f"{method} {path}"
        for attempt in range(2):
            headers = await self._auth_headers()
            try:
                response = await self._http.request(
                    method, path, params=params, data=data, headers=headers
                )
            except httpx.HTTPError as exc:
                raise network_error(exc, what) from None
            if response.status_code == 401 and attempt == 0 and self._api_key is not None:
                await self.refresh_token(stale=self._token)
                continue
            _raise_for_status(response, what)
            return response.json()
        raise AssertionError("unreachable")

    async def paged(
        self, path: str, params: Mapping[str, Any], page_size: int = PAGE_SIZE
    ) -> AsyncIterator[dict[str, Any]]:
        """Every result of a paginated listing; never trusts a single page to be all of it."""
        offset = 0
        while True:
            page = await self.get_json(path, {**params, "limit": page_size, "offset": offset})
            if not isinstance(page, list):
                raise TransferFailed(f"GET {path}: expected a list, got {type(page).__name__}")
            for entry in page:
                yield entry
            if len(page) < page_size:
                return
            offset += len(page)

    @asynccontextmanager
    async def stream(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[Response]:
        """A streamed GET; refreshes the token once on 401. Status checks are the caller's.

        Over plain http the body arrives through `RawHttp` (no copies in Python), else httpx.
        """
        for attempt in range(2):
            auth = await self._auth_headers()
            async with self._open(path, {**(headers or {}), **auth}) as response:
                refused = response.status_code == 401 and self._api_key is not None
                if not (refused and attempt == 0):
                    yield response
                    return
            await self.refresh_token(stale=self._token)

    @asynccontextmanager
    async def _open(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[Response]:
        if self._raw is not None:
            # The URL by hand: httpx's build_request took 90 us, a fifth of what a random
            # read's first byte spends in the daemon before its request leaves.
            base = self._http.base_url
            url = base.copy_with(raw_path=base.raw_path + quote(path, safe="/").encode())
            started = False
            try:
                async with self._raw.get(url, headers) as raw:
                    started = True
                    yield raw
                return
            except NotSimple as exc:
                if started:
                    raise
                log.debug("GET %s: %s, asking httpx", path, exc)
            except httpx.HTTPError as exc:
                if started:
                    raise
                raise network_error(exc, f"GET {path}") from None
        request = self._http.build_request("GET", path, headers=headers)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise network_error(exc, f"GET {path}") from None
        try:
            yield response
        finally:
            await response.aclose()

    # -- objects ------------------------------------------------------------------------------

    async def get_item(self, item_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(f"item/{item_id}")
        return result

    async def get_folder(self, folder_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(f"folder/{folder_id}")
        return result

    async def resolve(self, object_id: str) -> tuple[str, dict[str, Any]]:
        """("item" | "folder", document) for a dataSet `itemId`, which may be either."""
        try:
            return "item", await self.get_item(object_id)
        except (NotFound, BadRequest):
            pass
        try:
            return "folder", await self.get_folder(object_id)
        except (NotFound, BadRequest):
            raise NotFound(f"no Girder item or folder with id {object_id!r}") from None

    def list_folders(
        self, parent_id: str, parent_type: str = "folder"
    ) -> AsyncIterator[dict[str, Any]]:
        return self.paged(
            "folder", {"parentId": parent_id, "parentType": parent_type, "sort": "_id"}
        )

    def list_items(self, folder_id: str) -> AsyncIterator[dict[str, Any]]:
        return self.paged("item", {"folderId": folder_id, "sort": "_id"})

    def list_files(self, item_id: str) -> AsyncIterator[dict[str, Any]]:
        return self.paged(f"item/{item_id}/files", {"sort": "_id"})

    async def items_with_files(self, folder_id: str) -> list[dict[str, Any]] | None:
        """The folder's items, each with a `files` list, through the server's wtfs plugin.

        None when the server does not have the plugin (then: `list_items` + `list_files`).
        A 404 of the route says so once; it is not asked again.
        """
        if self._bulk_listing is False:
            return None
        try:
            path = f"wtfs/folder/{folder_id}/items"
            items = [i async for i in self.paged(path, {"sort": "_id"}, BULK_PAGE_SIZE)]
        except NotFound:
            if self._bulk_listing is None:
                log.info("Girder has no wtfs plugin: listing files one item at a time")
                self._bulk_listing = False
                return None
            raise
        if not all(isinstance(i, dict) and isinstance(i.get("files"), list) for i in items):
            raise TransferFailed(f"GET wtfs/folder/{folder_id}/items: items without file lists")
        self._bulk_listing = True
        return items


def girder_client(config: Config) -> GirderClient | None:
    """The daemon's client, from the `girder` and `network` sections; None without an API URL
    (whatever then needs Girder says that it is not configured)."""
    if config.girder.api_url is None:
        return None
    return GirderClient(
        config.girder.api_url,
        config.girder.api_key,
        connect_timeout=config.network.connect_timeout,
        read_timeout=config.network.read_timeout,
        bulk_listing=config.girder.bulk_listing,
    )


class BadRequest(WtfsError):
    """Girder's 400. It answers so for an id it does not have, whatever the reason: an item id
    asked of /folder (`resolve()` falls back on it), a file deleted since it was listed, or a
    dataSet the session API refuses. `message` is the server's own words, to show as they are."""

    def __init__(self, cause: str, message: str = "") -> None:
        super().__init__(cause)
        self.message = message


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no details"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return response.reason_phrase or "no details"


def _raise_for_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code < 400:
        return
    message = _message(response)
    cause = f"{what}: Girder answered {code}: {message}"
    if code == 400:
        raise BadRequest(cause, message)
    raise status_error(code, response.headers, cause)


def network_error(exc: httpx.HTTPError, what: str) -> WtfsError:
    """A failed exchange with Girder; one it cannot be reached at is `GirderUnavailable`."""
    return transport_error(exc, what, peer="Girder", unreachable=GirderUnavailable)


def _lifetime(expires: object) -> float:
    if isinstance(expires, str):
        try:
            when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
            return max(60.0, when.timestamp() - time.time())
        except ValueError:
            pass
    return TOKEN_DAYS * 86400
