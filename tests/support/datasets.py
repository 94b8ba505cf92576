"""DataSets both sides must judge alike: the client's `parse_session` (a session file, before a
mount or `wtfs session create`) and the server plugin's `POST /dm/session`. Both apply
`wtfs_index.dataset`'s rules; these tables check that each applies them, with its own framing
of the message. tests/unit/test_session.py runs them on the client,
tests/plugin/test_session_api.py on the server.
"""

from __future__ import annotations

from typing import Any

ITEM = "5f0000000000000000000001"


def entry(mount_path: Any, item_id: Any = ITEM) -> dict[str, Any]:
    return {"itemId": item_id, "mountPath": mount_path}


BAD_DATA_SETS: list[tuple[Any, str]] = [
    # (the dataSet, a regex the one-line message must contain). Not a mapping: to the client a
    # mapping is a session document ({dataSet: [...]}), to the server a wrong dataSet.
    ("just a string", "must be a list"),
    (None, "must be a list"),
    ([], "dataSet is empty"),
    (["/a"], r"dataSet\[0\]: expected a mapping"),
    ([{"mountPath": "/a"}], r"dataSet\[0\]: itemId must be a non-empty string"),
    ([{"itemId": "", "mountPath": "/a"}], "itemId must be a non-empty string"),
    ([{"itemId": "   ", "mountPath": "/a"}], "itemId must be a non-empty string"),
    ([{"itemId": 17, "mountPath": "/a"}], "itemId must be a non-empty string"),
    ([{"itemId": "a"}], r"dataSet\[0\]: mountPath must be an absolute path"),
    ([entry("relative/path")], "mountPath must be an absolute path"),
    ([entry("")], "mountPath must be an absolute path"),
    ([entry(5)], "mountPath must be an absolute path"),
    ([entry("/a"), entry("/b"), entry("c")], r"dataSet\[2\]: mountPath must be an absolute"),
    ([entry("/a/../b")], "must not contain '.' or '..'"),
    ([entry("/..")], "must not contain '.' or '..'"),
    ([entry("/a/./b")], "must not contain '.' or '..'"),
    ([entry("/a\0b")], "must not contain"),
    ([entry("/a\ud800")], "is not valid Unicode"),
    ([entry("/")], "below '/'"),
    ([entry("//")], "below '/'"),
    ([entry("/" + "x" * 256)], "over 255 bytes"),
    ([entry("/ok/" + "é" * 128)], "over 255 bytes"),
    ([{**entry("/a"), "extra": 1}], "unknown key 'extra'"),
    (
        [entry("/a"), entry("/b"), entry("/a", item_id="5f0000000000000000000002")],
        r"dataSet\[2\]: duplicate mountPath '/a' \(dataSet\[0\] has it too\)",
    ),
    ([entry("/a"), entry("/a/")], r"dataSet\[1\]: duplicate mountPath '/a'"),
    ([entry("/a"), entry("//a")], "duplicate mountPath"),
    (
        [entry("/a"), entry("/a/b/c")],
        r"dataSet\[1\]: mountPath '/a/b/c' lies inside '/a', which dataSet\[0\] mounts",
    ),
    ([entry("/a/b/c"), entry("/a")], r"dataSet\[0\]: mountPath '/a/b/c' lies inside '/a'"),
    ([entry("/a"), entry("//a/b")], "lies inside"),
]

NORMALISED: list[tuple[str, str]] = [
    # (a mountPath as given, as both sides keep it)
    ("/a/", "/a"),
    ("/a//b", "/a/b"),
    ("//a", "/a"),
    ("///a/b/", "/a/b"),
]


def ids(table: list[tuple[Any, str]]) -> list[str]:
    """Short, printable pytest ids for a table's inputs."""
    return [repr(data)[:60].encode("ascii", "backslashreplace").decode() for data, _ in table]
