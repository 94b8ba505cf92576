"""`/dm/session` on the real dev Girder with girder-plugin-wtfs loaded: every endpoint, the records'
shape against seed 001's examples, who may see what, and the dataSet rules the client shares."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder

from tests.plugin.conftest import Tree, seed_example
from tests.support.datasets import BAD_DATA_SETS, NORMALISED, entry, ids
from tests.support.girder import GirderUser

MISSING = "5f00000000000000000000ff"


def create(http: httpx.Client, data_set: Any) -> httpx.Response:
    """POST /dm/session with the dataSet as JSON in a form parameter, as seed 001's curl does."""
    return http.post("dm/session", data={"dataSet": json.dumps(data_set)})


def created(http: httpx.Client, data_set: Any) -> dict[str, Any]:
    response = create(http, data_set)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def json_type(value: Any) -> str:
    for kind, types in (
        ("null", type(None)),
        ("boolean", bool),
        ("number", (int, float)),
        ("string", str),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, types):
            return kind
    raise AssertionError(f"not a JSON value: {value!r}")


def assert_shaped_like(ours: Any, seed: Any, where: str = "$") -> None:
    """Every key of seed 001's example is in ours, holding a value of the same JSON type; lists
    are compared element by element with the seed's first element. Ours may have more keys."""
    assert json_type(ours) == json_type(seed), f"{where}: {ours!r} is not like {seed!r}"
    if isinstance(seed, dict):
        missing = set(seed) - set(ours)
        assert not missing, f"{where}: missing {sorted(missing)} (have {sorted(ours)})"
        for key, value in seed.items():
            assert_shaped_like(ours[key], value, f"{where}.{key}")
    elif isinstance(seed, list) and seed:
        assert ours, f"{where}: empty, the seed's example is not"
        for n, element in enumerate(ours):
            assert_shaped_like(element, seed[0], f"{where}[{n}]")


def two_entries(tree: Tree) -> list[dict[str, str]]:
    """The seed's example session: a folder at /one, an item at /fa.txt."""
    return [
        {"itemId": tree.folders["one"], "mountPath": "/one"},
        {"itemId": tree.items["two/b.txt"], "mountPath": "/fa.txt"},
    ]


# -- records and their shape ---------------------------------------------------------------------


def test_create_answers_a_record_shaped_like_the_seeds(
    admin_http: httpx.Client, girder: LocalGirder, private_tree: Tree
) -> None:
    record = created(admin_http, two_entries(private_tree))
    assert_shaped_like(record, seed_example("session_create_response.json"))
    assert record["_modelType"] == "session"
    assert record["_accessLevel"] == 2  # the creator has ADMIN on it
    assert record["ownerId"] == girder.admin_user_id
    assert record["access"]["users"][0]["id"] == girder.admin_user_id
    assert record["access"]["users"][0]["level"] == 2
    assert record["dataSet"] == two_entries(private_tree)
    assert re.fullmatch(r"[0-9a-f]{24}", record["_id"])
    assert isinstance(record["created"], str) and record["created"] == record["updated"]


def test_list_and_get_answer_records_shaped_like_the_seeds(
    admin_http: httpx.Client, private_tree: Tree
) -> None:
    record = created(admin_http, two_entries(private_tree))
    listed = admin_http.get("dm/session").json()
    assert record["_id"] in [r["_id"] for r in listed]
    assert_shaped_like(listed, seed_example("session_list_response.json"))
    got = admin_http.get(f"dm/session/{record['_id']}").json()
    assert_shaped_like(got, seed_example("session_get_response.json"))
    # A get answers what create answered (the database keeps times to the millisecond).
    assert set(got) == set(record)
    assert {k: v for k, v in got.items() if k not in ("created", "updated")} == {
        k: v for k, v in record.items() if k not in ("created", "updated")
    }
    assert got["created"][:23] == record["created"][:23]


def test_load_objects_adds_each_entrys_type_and_girders_document(
    admin_http: httpx.Client, private_tree: Tree
) -> None:
    record = created(admin_http, two_entries(private_tree))
    plain = admin_http.get(f"dm/session/{record['_id']}").json()
    assert all(set(e) == {"itemId", "mountPath"} for e in plain["dataSet"])
    loaded = admin_http.get(f"dm/session/{record['_id']}", params={"loadObjects": "true"}).json()
    folder, item = loaded["dataSet"]
    assert (folder["type"], item["type"]) == ("folder", "item")
    assert folder["obj"] == admin_http.get(f"folder/{private_tree.folders['one']}").json()
    assert item["obj"] == admin_http.get(f"item/{private_tree.items['two/b.txt']}").json()
    bare = admin_http.get(f"dm/session/{record['_id']}?loadObjects").json()  # seed-style flag
    assert bare == loaded
    off = admin_http.get(f"dm/session/{record['_id']}", params={"loadObjects": "false"}).json()
    assert off == plain


def test_a_deleted_object_loads_as_null_and_the_session_still_answers(
    admin_http: httpx.Client, girder: LocalGirder, private_tree: Tree
) -> None:
    gc = girder.client()
    doomed = gc.createFolder(private_tree.folders["two"], "doomed", parentType="folder")
    record = created(admin_http, [{"itemId": doomed["_id"], "mountPath": "/doomed"}])
    gc.delete(f"folder/{doomed['_id']}")
    loaded = admin_http.get(f"dm/session/{record['_id']}?loadObjects=true").json()
    assert loaded["dataSet"] == [
        {"itemId": doomed["_id"], "mountPath": "/doomed", "type": None, "obj": None}
    ]


def test_delete_removes_the_session_and_fires_the_lock_release_hook_once(
    admin_http: httpx.Client, girder: LocalGirder, private_tree: Tree
) -> None:
    record = created(admin_http, two_entries(private_tree))
    sid = record["_id"]
    before = [e for e in girder.events() if e["id"] == sid]
    assert before == []
    answer = admin_http.delete(f"dm/session/{sid}")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"message": f"Deleted session {sid}."}
    # dm.session.delete (girder_plugin_wtfs.session.SESSION_DELETE_EVENT) fired for it, once.
    assert [e for e in girder.events() if e["id"] == sid] == [
        {"event": "dm.session.delete", "id": sid}
    ]
    gone = admin_http.get(f"dm/session/{sid}")
    assert gone.status_code == 400
    assert gone.json()["message"] == f"Invalid session id ({sid})."
    assert sid not in [r["_id"] for r in admin_http.get("dm/session").json()]
    again = admin_http.delete(f"dm/session/{sid}")
    assert again.status_code == 400
    assert [e for e in girder.events() if e["id"] == sid] == [
        {"event": "dm.session.delete", "id": sid}
    ]


def test_lists_page_like_girders(admin_http: httpx.Client, private_tree: Tree) -> None:
    for _ in range(3):
        created(admin_http, two_entries(private_tree))
    everything = admin_http.get("dm/session", params={"limit": 0}).json()
    assert len(everything) >= 3
    first = admin_http.get("dm/session", params={"limit": 2}).json()
    rest = admin_http.get("dm/session", params={"limit": 0, "offset": 2}).json()
    assert [r["_id"] for r in first + rest] == [r["_id"] for r in everything]
    assert [r["_id"] for r in everything] == sorted(r["_id"] for r in everything)


# -- access ---------------------------------------------------------------------------------------


def test_another_user_gets_403_on_someone_elses_session(
    admin_http: httpx.Client, bob_http: httpx.Client, private_tree: Tree
) -> None:
    sid = created(admin_http, two_entries(private_tree))["_id"]
    item = private_tree.items["two/b.txt"]
    for method, path in [
        ("GET", f"dm/session/{sid}"),
        ("GET", f"dm/session/{sid}?loadObjects=true"),
        ("GET", f"dm/session/{sid}/object?path=/one"),
        ("GET", f"dm/session/{sid}/item/{item}"),
        ("DELETE", f"dm/session/{sid}"),
    ]:
        answer = bob_http.request(method, path)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["type"] == "access"
    assert sid not in [r["_id"] for r in bob_http.get("dm/session").json()]
    assert sid not in [r["_id"] for r in bob_http.get("dm/session?all=true").json()]
    assert admin_http.get(f"dm/session/{sid}").status_code == 200  # bob's DELETE did nothing


def test_without_a_token_the_api_answers_401(girder: LocalGirder) -> None:
    answer = httpx.get(f"{girder.api_url}/dm/session")
    assert answer.status_code == 401


def test_a_user_sees_their_own_sessions_and_an_admin_sees_everyones_with_all(
    admin_http: httpx.Client, bob_http: httpx.Client, bob: GirderUser, public_tree: Tree
) -> None:
    mine = created(bob_http, [{"itemId": public_tree.folders["one"], "mountPath": "/one"}])
    assert mine["ownerId"] == bob.id and mine["_accessLevel"] == 2
    assert mine["_id"] in [r["_id"] for r in bob_http.get("dm/session").json()]
    admins = admin_http.get("dm/session").json()
    assert mine["_id"] not in [r["_id"] for r in admins]  # by default: the caller's own
    everyone = admin_http.get("dm/session", params={"all": "true"}).json()
    theirs = [r for r in everyone if r["_id"] == mine["_id"]]
    assert len(theirs) == 1 and theirs[0]["ownerId"] == bob.id
    assert theirs[0]["_accessLevel"] == 2  # a site admin may do anything with it
    assert {r["ownerId"] for r in everyone} >= {bob.id, admins[0]["ownerId"]}
    bobs_all = bob_http.get("dm/session", params={"all": "true"}).json()
    assert {r["ownerId"] for r in bobs_all} == {bob.id}  # all: only what bob may read
    assert admin_http.get(f"dm/session/{mine['_id']}").json()["ownerId"] == bob.id
    assert admin_http.delete(f"dm/session/{mine['_id']}").status_code == 200
    assert bob_http.get(f"dm/session/{mine['_id']}").status_code == 400


# -- the dataSet rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(("data_set", "message"), BAD_DATA_SETS, ids=ids(BAD_DATA_SETS))
def test_a_bad_data_set_is_a_400_naming_the_rule_as_the_client_does(
    admin_http: httpx.Client, data_set: Any, message: str
) -> None:
    answer = create(admin_http, data_set)
    assert answer.status_code == 400, answer.text
    assert re.search(message, answer.json()["message"]), answer.json()["message"]


@pytest.mark.parametrize(("given", "kept"), NORMALISED)
def test_mount_paths_are_kept_normalised_as_the_client_does(
    admin_http: httpx.Client, private_tree: Tree, given: str, kept: str
) -> None:
    record = created(admin_http, [entry(given, private_tree.folders["one"])])
    assert record["dataSet"] == [{"itemId": private_tree.folders["one"], "mountPath": kept}]


def test_load_objects_extras_are_accepted_and_dropped(
    admin_http: httpx.Client, private_tree: Tree
) -> None:
    folder = private_tree.folders["one"]
    record = created(admin_http, [{**entry("/x", folder), "type": "folder", "obj": {"a": 1}}])
    assert record["dataSet"] == [{"itemId": folder, "mountPath": "/x"}]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"itemId": "a", "mountPath": "/a"}', "^dataSet must be a list"),
        ("[{", "^dataSet: not valid JSON"),
        ("", "^dataSet: not valid JSON"),
        (json.dumps([entry("/x", MISSING)]), rf"^dataSet\[0\]: itemId '{MISSING}' is neither"),
        (json.dumps([entry("/x", "not-an-id")]), r"^dataSet\[0\]: itemId 'not-an-id' is neither"),
    ],
)
def test_a_data_set_the_client_cannot_judge_is_a_400_too(
    admin_http: httpx.Client, value: str, message: str
) -> None:
    answer = admin_http.post("dm/session", data={"dataSet": value})
    assert answer.status_code == 400, answer.text
    assert re.search(message, answer.json()["message"]), answer.json()["message"]


def test_the_data_set_parameter_is_required(admin_http: httpx.Client) -> None:
    answer = admin_http.post("dm/session")
    assert answer.status_code == 400
    assert "dataSet" in answer.json()["message"]


def test_an_object_the_caller_cannot_read_is_refused_as_if_missing(
    bob_http: httpx.Client, private_tree: Tree, public_tree: Tree
) -> None:
    """Bob may not learn which private ids exist: the same 400 as for an id nobody has."""
    readable = entry("/one", public_tree.folders["one"])
    for hidden in (private_tree.folders["one"], public_tree.items["secret/s.txt"], MISSING):
        answer = create(bob_http, [readable, entry("/hidden", hidden)])
        assert answer.status_code == 400, answer.text
        assert answer.json()["message"] == (
            f"dataSet[1]: itemId '{hidden}' is neither an item nor a folder you can read"
        )


# -- GET /dm/session/{id}/object -------------------------------------------------------------------


@pytest.fixture
def nested(admin_http: httpx.Client, private_tree: Tree) -> dict[str, Any]:
    """A session with a nested mountPath, a folder and an item entry."""
    return created(
        admin_http,
        [
            {"itemId": private_tree.folders["one"], "mountPath": "/data/one"},
            {"itemId": private_tree.items["two/b.txt"], "mountPath": "/b.txt"},
        ],
    )


def obj(http: httpx.Client, session: dict[str, Any], path: str, **params: Any) -> httpx.Response:
    return http.get(f"dm/session/{session['_id']}/object", params={"path": path, **params})


def test_object_with_children_is_shaped_like_the_seeds_example(
    admin_http: httpx.Client, nested: dict[str, Any], private_tree: Tree
) -> None:
    answer = admin_http.get(f"dm/session/{nested['_id']}/object?path=/data/one&children")
    assert answer.status_code == 200, answer.text
    found = answer.json()
    example = seed_example("session_object_response.json")
    # Girder 5 no longer shows a folder's `access` (it is the /access endpoint's, for ADMINs)
    # nor `lowerName` to readers; the seed's example comes from a 2017 Girder that did.
    unshown = {"access", "lowerName"}
    example["object"] = {k: v for k, v in example["object"].items() if k not in unshown}
    example["children"] = [
        {k: v for k, v in c.items() if k not in unshown} for c in example["children"]
    ]
    assert set(found) == {"object", "children"}
    assert_shaped_like(found["object"], example["object"], "$.object")
    # The seed's one child is a folder (it has parentCollection); ours are folders, then items.
    folder_children = [c for c in found["children"] if c["type"] == "folder"]
    assert_shaped_like(folder_children, example["children"], "$.children")
    assert found["object"]["_id"] == private_tree.folders["one"]
    assert found["object"]["type"] == "folder"
    folders = [c for c in found["children"] if c["type"] == "folder"]
    items = [c for c in found["children"] if c["type"] == "item"]
    assert [c["name"] for c in found["children"]] == ["a", "fa.txt"]  # folders, then items
    assert folders[0]["_id"] == private_tree.folders["one/a"]
    assert items[0]["_id"] == private_tree.items["one/fa.txt"]
    assert items[0] == {
        **admin_http.get(f"item/{private_tree.items['one/fa.txt']}").json(),
        "type": "item",
    }


def test_object_walks_folder_names_then_an_item_name(
    admin_http: httpx.Client, nested: dict[str, Any], private_tree: Tree
) -> None:
    found = obj(admin_http, nested, "/data/one/a/c.txt").json()
    assert set(found) == {"object"}  # no children unless asked
    assert found["object"]["_id"] == private_tree.items["one/a/c.txt"]
    assert found["object"]["type"] == "item"
    sub = obj(admin_http, nested, "/data/one/a/", children="true").json()
    assert sub["object"]["_id"] == private_tree.folders["one/a"]
    assert [c["_id"] for c in sub["children"]] == [private_tree.items["one/a/c.txt"]]
    item_entry = obj(admin_http, nested, "/b.txt", children="").json()
    assert item_entry["object"]["_id"] == private_tree.items["two/b.txt"]
    assert item_entry["children"] == []  # an item has no subfolders or items
    off = obj(admin_http, nested, "/data/one", children="false").json()
    assert set(off) == {"object"}


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("data/one", 400, "path 'data/one' is not absolute"),
        ("/elsewhere", 400, "path '/elsewhere' lies outside the session's dataSet"),
        ("/data", 400, "lies outside"),  # only a directory of mount points, no Girder object
        ("/", 400, "lies outside"),
        ("/data/onex", 400, "lies outside"),
        ("/data/one/../one", 400, "must not contain '.' or '..'"),
        ("/data/one/nope", 404, "/data/one: no folder or item named 'nope'"),
        ("/data/one/nope/c.txt", 404, "/data/one: no folder named 'nope'"),
        ("/data/one/fa.txt/x", 404, "/data/one: no folder named 'fa.txt'"),
        ("/b.txt/x", 404, "/b.txt is an item: there is no 'x' below it"),
    ],
)
def test_object_refuses_paths_outside_and_names_that_do_not_exist(
    admin_http: httpx.Client, nested: dict[str, Any], path: str, status: int, message: str
) -> None:
    answer = obj(admin_http, nested, path)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"]


def shared_folder(girder: LocalGirder, tree: Tree, name: str) -> tuple[str, str, str]:
    """A public folder holding a public and a private subfolder: (shared, open, closed) ids."""
    gc = girder.client()
    shared = gc.createFolder(tree.folders["two"], name, parentType="folder", public=True)
    opened = gc.createFolder(shared["_id"], "open", parentType="folder", public=True)
    closed = gc.createFolder(shared["_id"], "closed", parentType="folder", public=False)
    return str(shared["_id"]), str(opened["_id"]), str(closed["_id"])


def make_private(http: httpx.Client, folder_id: str) -> None:
    access = http.get(f"folder/{folder_id}/access").json()
    http.put(
        f"folder/{folder_id}/access", params={"access": json.dumps(access), "public": "false"}
    ).raise_for_status()


def test_object_is_403_for_a_folder_the_caller_cannot_read(
    admin_http: httpx.Client, bob_http: httpx.Client, girder: LocalGirder, public_tree: Tree
) -> None:
    """Bob's own session on public data; a folder inside it he may not read answers 403."""
    shared, opened, closed = shared_folder(girder, public_tree, "shared-o")
    mine = created(bob_http, [{"itemId": shared, "mountPath": "/s"}])
    assert obj(bob_http, mine, "/s/open").json()["object"]["_id"] == opened
    answer = obj(bob_http, mine, "/s/closed")
    assert answer.status_code == 403, answer.text
    assert answer.json()["type"] == "access"
    children = obj(bob_http, mine, "/s", children="true").json()["children"]
    assert [c["_id"] for c in children] == [opened]  # the listing skips what bob cannot read
    assert obj(admin_http, mine, "/s/closed").json()["object"]["_id"] == closed
    # Read access taken away after the session was made counts, too.
    make_private(admin_http, opened)
    assert obj(bob_http, mine, "/s/open").status_code == 403
    make_private(admin_http, shared)
    assert obj(bob_http, mine, "/s").status_code == 403


# -- GET /dm/session/{id}/item/{itemId} -----------------------------------------------------------


def test_item_answers_the_whole_document_of_items_in_the_data_set(
    admin_http: httpx.Client, nested: dict[str, Any], private_tree: Tree
) -> None:
    for path in ("two/b.txt", "one/fa.txt", "one/a/c.txt"):  # the entry, and below the folder
        item_id = private_tree.items[path]
        answer = admin_http.get(f"dm/session/{nested['_id']}/item/{item_id}")
        assert answer.status_code == 200, answer.text
        full = answer.json()
        filtered = admin_http.get(f"item/{item_id}").json()
        assert full["_id"] == item_id and full["name"] == path.rsplit("/", 1)[-1]
        assert full["lowerName"] == full["name"].lower()  # unfiltered: Girder's filter drops it
        assert "lowerName" not in filtered
        assert "_modelType" not in full  # the stored document, not a filtered view
        assert {k: v for k, v in full.items() if k in filtered} == {
            k: v for k, v in filtered.items() if k != "_modelType"
        }


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("outside", "is not in session"),
        ("missing", "Invalid item id"),
        ("folder", "Invalid item id"),
        ("junk", "Invalid item id (junk)."),
    ],
)
def test_item_refuses_what_is_not_an_item_of_the_data_set(
    admin_http: httpx.Client, nested: dict[str, Any], private_tree: Tree, which: str, message: str
) -> None:
    item_id = {
        "outside": private_tree.items["secret/s.txt"],
        "missing": MISSING,
        "folder": private_tree.folders["one"],
        "junk": "junk",
    }[which]
    answer = admin_http.get(f"dm/session/{nested['_id']}/item/{item_id}")
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["message"]


def test_item_is_403_for_an_item_the_caller_cannot_read(
    admin_http: httpx.Client, bob_http: httpx.Client, girder: LocalGirder, public_tree: Tree
) -> None:
    shared, opened, closed = shared_folder(girder, public_tree, "shared-i")
    gc = girder.client()
    visible = gc.createItem(opened, "visible.txt")
    hidden = gc.createItem(closed, "hidden.txt")
    mine = created(bob_http, [{"itemId": shared, "mountPath": "/s"}])
    assert bob_http.get(f"dm/session/{mine['_id']}/item/{visible['_id']}").status_code == 200
    answer = bob_http.get(f"dm/session/{mine['_id']}/item/{hidden['_id']}")
    assert answer.status_code == 403, answer.text
    assert admin_http.get(f"dm/session/{mine['_id']}/item/{hidden['_id']}").status_code == 200
