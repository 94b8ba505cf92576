"""GirderClient's bulk listing contract, against `httpx.MockTransport` (no sockets).

The real server side (girder_plugin_wtfs in the dev Girder, the same tree either way) is in
tests/mount/test_mount.py.
"""

from __future__ import annotations

import httpx
import pytest

from wtfs.errors import TransferFailed
from wtfs.girder.client import GirderClient

FOLDER = "f" * 24
ITEMS = [
    {"_id": "a" * 24, "name": "one", "files": [{"_id": "1" * 24, "name": "one", "size": 3}]},
    {"_id": "b" * 24, "name": "two", "files": []},
]


def client(handler: httpx.MockTransport, *, bulk: bool = True) -> GirderClient:
    return GirderClient("http://girder.test/api/v1", None, transport=handler, bulk_listing=bulk)


async def test_items_come_with_their_files_in_one_request() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=ITEMS)

    girder = client(httpx.MockTransport(handle))
    assert await girder.items_with_files(FOLDER) == ITEMS
    assert seen == [f"/api/v1/wtfs/folder/{FOLDER}/items"]


async def test_a_server_without_the_plugin_is_asked_once_then_never_again() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(404, json={"message": "not found"})

    girder = client(httpx.MockTransport(handle))
    assert await girder.items_with_files(FOLDER) is None
    assert await girder.items_with_files(FOLDER) is None
    assert len(seen) == 1


async def test_bulk_listing_off_never_asks() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    assert await client(httpx.MockTransport(handle), bulk=False).items_with_files(FOLDER) is None


async def test_items_without_file_lists_are_an_error_not_empty_directories() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"_id": "a" * 24, "name": "one"}])

    with pytest.raises(TransferFailed, match="without file lists"):
        await client(httpx.MockTransport(handle)).items_with_files(FOLDER)


async def test_a_404_after_the_plugin_answered_is_the_folders_not_the_plugins() -> None:
    answers = iter([httpx.Response(200, json=ITEMS), httpx.Response(404, json={"message": "x"})])

    def handle(request: httpx.Request) -> httpx.Response:
        return next(answers)

    girder = client(httpx.MockTransport(handle))
    assert await girder.items_with_files(FOLDER) == ITEMS
    with pytest.raises(Exception, match="404"):
        await girder.items_with_files(FOLDER)
