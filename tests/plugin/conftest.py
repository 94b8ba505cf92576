"""Fixtures for the server plugin's tests: a second (non-admin) user, small trees of data, and
the plugin's cluster settings pointing at a real PostgreSQL index (`cluster`).

Everything runs against the session's real dev Girder (tests/conftest.py `girder`), which loads
girder-plugin-wtfs through its entry point, as a production Girder would.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_index import Index, open_index

from tests.support.girder import GirderUser, create_user

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed001"
INDEX_URL = "wtfs.index_url"
STORE_PATH = "wtfs.store_path"


def seed_example(name: str) -> Any:
    """One of seed 001's example responses (tests/fixtures/seed001/README.md)."""
    return json.loads((SEED / name).read_text())


@dataclass
class Tree:
    """A collection made for a test module; paths are relative to it (`one/a/c.txt`)."""

    collection_id: str
    folders: dict[str, str] = field(default_factory=dict)
    items: dict[str, str] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)


def make_tree(girder: LocalGirder, name: str, *, public: bool) -> Tree:
    """``name``/one/{a/c.txt, fa.txt}, two/b.txt and, private even in a public collection,
    secret/s.txt: one folder inside another, items at two depths, a folder only its owner reads."""
    gc = girder.client()
    collection = gc.createCollection(f"{name}-{time.monotonic_ns()}", public=public)
    tree = Tree(str(collection["_id"]))

    def folder(path: str, parent: str, parent_type: str = "folder", **kw: Any) -> str:
        doc = gc.createFolder(parent, path.rsplit("/", 1)[-1], parentType=parent_type, **kw)
        tree.folders[path] = str(doc["_id"])
        return tree.folders[path]

    def item(path: str, content: bytes) -> None:
        folder_path, item_name = path.rsplit("/", 1)
        stream = io.BytesIO(content)
        file = gc.uploadStreamToFolder(tree.folders[folder_path], stream, item_name, len(content))
        tree.items[path] = str(file["itemId"])
        tree.contents[path] = content

    folder("one", tree.collection_id, "collection", public=public)
    folder("one/a", tree.folders["one"], public=public)
    folder("two", tree.collection_id, "collection", public=public)
    folder("secret", tree.collection_id, "collection", public=False)
    item("one/a/c.txt", b"c, two levels down\n")
    item("one/fa.txt", b"fa, one level down\n")
    item("two/b.txt", b"b\n")
    item("secret/s.txt", b"secret\n")
    return tree


@pytest.fixture(scope="session")
def bob(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> GirderUser:
    """A second user, not an admin, made through Girder's REST API."""
    return create_user(girder, "bobby", tmp_path_factory.mktemp("bobby"))


@pytest.fixture(scope="session")
def private_tree(girder: LocalGirder) -> Tree:
    """The admin's private data: bob can read none of it."""
    return make_tree(girder, "private", public=False)


@pytest.fixture(scope="session")
def public_tree(girder: LocalGirder) -> Tree:
    """Public data (bob reads it), but for secret/, which only the admin reads."""
    return make_tree(girder, "public", public=True)


@pytest.fixture
def admin_http(girder: LocalGirder) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=girder.api_url + "/", headers={"Girder-Token": girder.token()}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def bob_http(girder: LocalGirder, bob: GirderUser) -> Iterator[httpx.Client]:
    with bob.http(girder) as client:
        yield client


def put_settings(http: httpx.Client, settings: dict[str, Any]) -> httpx.Response:
    """`PUT /system/setting` as an admin does it (a JSON list; a None value unsets the key)."""
    listed = [{"key": key, "value": value} for key, value in settings.items()]
    return http.put("system/setting", data={"list": json.dumps(listed)})


@dataclass
class Cluster:
    """The plugin's settings as a test set them, and the same index, opened by the test."""

    index_url: str
    store: Path
    index: Index


@pytest.fixture
def cluster(admin_http: httpx.Client, postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """The plugin configured through Girder's REST API: `wtfs.index_url` is a fresh PostgreSQL
    database, `wtfs.store_path` an empty store directory (a mount given the same two shares
    them). Unset afterwards: the next test may expect a plugin without settings."""
    store = tmp_path / "store"
    (store / "data").mkdir(parents=True)
    answer = put_settings(admin_http, {INDEX_URL: postgres_url, STORE_PATH: str(store)})
    assert answer.status_code == 200, answer.text
    index = open_index(postgres_url, store)
    try:
        yield Cluster(postgres_url, store, index)
    finally:
        index.close()
        answer = put_settings(admin_http, {INDEX_URL: None, STORE_PATH: None})
        assert answer.status_code == 200, answer.text
