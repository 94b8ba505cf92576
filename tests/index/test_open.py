"""Opening an index: a fresh one is made at the current schema, an existing one is reopened
with its data, one made by a newer wtfs is refused."""

from __future__ import annotations

import pytest
from wtfs_index import SCHEMA_VERSION, Index, IndexRefused, Owner

from tests.index.conftest import OpenIndex, filled, write_schema_version


def test_a_fresh_index_is_empty_at_the_current_schema(index: Index) -> None:
    assert index.schema_version() == SCHEMA_VERSION
    summary = index.summary()
    assert (summary.usage, summary.entries, summary.complete) == (0, 0, 0)
    assert index.entries() == [] and index.transfers() == [] and index.totals() == {}


def test_an_index_is_reopened_with_its_data(open_test_index: OpenIndex) -> None:
    first = open_test_index()
    me = Owner.current("me")
    first.register_owner(me, "mount")
    key = filled(first, "k", 100, me).key
    first.heartbeat(me, {"hits": 2}, {})
    first.close()
    again = open_test_index()
    assert again.get_entry(key).present == 100  # type: ignore[union-attr]
    assert [o.owner_id for o in again.owners(me)] == [me.owner_id]
    assert again.totals() == {"hits": 2}


def test_an_index_of_a_newer_wtfs_is_refused(index: Index, open_test_index: OpenIndex) -> None:
    write_schema_version(index, SCHEMA_VERSION + 1)
    with pytest.raises(IndexRefused, match=f"schema {SCHEMA_VERSION + 1} is newer"):
        open_test_index()
