"""Sessions: a dataSet of {itemId, mountPath} from a file, validated before anything mounts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.datasets import BAD_DATA_SETS, NORMALISED, entry, ids
from wtfs.errors import ConfigError
from wtfs.namespace.session import load_session_file, parse_session


def parse(data: Any) -> Any:
    return parse_session(data, session_id="fallback-id", origin="test")


def test_a_seed_style_session_document_is_accepted() -> None:
    session = parse(
        {
            "_accessLevel": 2,
            "_id": "58d2e630cbb11e3ba1e91b26",
            "_modelType": "session",
            "dataSet": [
                {"itemId": "58acccc7cbb11e4425ce147b", "mountPath": "/one"},
                {"itemId": "58acccc7cbb11e4425ce148b", "mountPath": "/fa.txt"},
            ],
            "ownerId": "582f621ccbb11e75430a89ae",
        }
    )
    assert session.session_id == "58d2e630cbb11e3ba1e91b26"
    assert session.origin == "test"
    assert [(e.item_id, e.mount_path) for e in session.data_set] == [
        ("58acccc7cbb11e4425ce147b", "/one"),
        ("58acccc7cbb11e4425ce148b", "/fa.txt"),
    ]


def test_a_bare_list_is_a_data_set_and_keeps_the_given_session_id() -> None:
    session = parse([entry("/a/b/c.txt")])
    assert session.session_id == "fallback-id"
    assert session.data_set[0].parts == ("a", "b", "c.txt")


def test_load_objects_extras_are_allowed() -> None:
    session = parse([{**entry("/x"), "type": "folder", "obj": {"name": "x"}}])
    assert session.data_set[0].mount_path == "/x"


@pytest.mark.parametrize(("raw", "normal"), NORMALISED)
def test_mount_paths_are_normalised(raw: str, normal: str) -> None:
    assert parse([entry(raw)]).data_set[0].mount_path == normal


def test_item_ids_are_stripped() -> None:
    assert parse([entry("/a", item_id="  abc \n")]).data_set[0].item_id == "abc"


# The rules the server plugin shares are in tests/support/datasets.py; these concern the
# session document around the dataSet, which only the client reads.
INVALID = [
    ({"items": []}, "no 'dataSet' key"),
    ({"dataSet": "abc"}, "must be a list"),
    ({"dataSet": {"itemId": "a", "mountPath": "/a"}}, "must be a list"),
    ({"dataSet": []}, "dataSet is empty"),
    *BAD_DATA_SETS,
]


@pytest.mark.parametrize(("data", "message"), INVALID, ids=ids(INVALID))
def test_an_invalid_data_set_is_a_config_error(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse(data)
    assert str(info.value).startswith("session test")


def test_the_failing_entry_is_named_by_its_position() -> None:
    with pytest.raises(ConfigError, match=r"dataSet\[2\]"):
        parse([entry("/a"), entry("/b"), entry("c")])


def test_a_name_of_255_bytes_is_allowed() -> None:
    name = "é" * 127 + "x"  # 255 bytes
    assert parse([entry("/" + name)]).data_set[0].parts == (name,)


def test_siblings_sharing_a_prefix_are_not_nested() -> None:
    session = parse([entry("/a"), entry("/ab"), entry("/a.txt")])
    assert [e.mount_path for e in session.data_set] == ["/a", "/ab", "/a.txt"]


def test_double_slashed_duplicates_are_caught() -> None:
    with pytest.raises(ConfigError, match="duplicate mountPath"):
        parse([entry("/a"), entry("//a")])


def test_double_slashed_nesting_is_caught() -> None:
    with pytest.raises(ConfigError, match="lies inside"):
        parse([entry("/a"), entry("//a/b")])


# -- files ----------------------------------------------------------------------------------------


def test_a_json_session_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "mysession.json"
    path.write_text(json.dumps({"dataSet": [entry("/one")]}))
    session = load_session_file(path)
    assert session.session_id == "mysession"
    assert session.origin == f"file:{path.resolve()}"
    assert session.data_set[0].mount_path == "/one"


def test_a_yaml_session_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tale.yaml"
    path.write_text("_id: abc123\ndataSet:\n  - itemId: i1\n    mountPath: /data/x.csv\n")
    session = load_session_file(path)
    assert session.session_id == "abc123"
    assert [(e.item_id, e.mount_path) for e in session.data_set] == [("i1", "/data/x.csv")]


def test_malformed_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataSet:\n  - itemId: [unclosed\n")
    with pytest.raises(ConfigError, match=r"session file .*bad\.yaml: not valid YAML"):
        load_session_file(path)


def test_malformed_json_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{'dataSet': []}")
    with pytest.raises(ConfigError, match=r"session file .*bad\.json: not valid JSON"):
        load_session_file(path)


def test_a_json_file_is_parsed_as_json_not_yaml(tmp_path: Path) -> None:
    # Valid YAML, invalid JSON: the suffix decides.
    path = tmp_path / "s.json"
    path.write_text("dataSet:\n  - itemId: a\n    mountPath: /a\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_session_file(path)


def test_an_empty_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="dataSet must be a list"):
        load_session_file(path)


def test_a_missing_session_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="session file"):
        load_session_file(tmp_path / "nope.yaml")


def test_a_session_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00d\x00a\x00t\x00a")
    with pytest.raises(ConfigError, match="session file"):
        load_session_file(path)
