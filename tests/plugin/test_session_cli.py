"""`wtfs session create|list|delete` and `wtfs mount --session-id` against the real dev Girder
with the plugin, and against a stock Girder: plain ids on stdout, one line and exit 2 for bad
input, the server's own words for what it refuses."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from wtfs_devgirder.control import LocalGirder

from tests.plugin.conftest import Tree
from tests.support.girder import GirderUser
from tests.support.mounts import run_wtfs, write_config

CREATE_ROUTE = "POST /api/v1/dm/session"


@dataclass
class Cli:
    """`wtfs -c CONFIG ...` as a user runs it: the API key from a file or $GIRDER_API_KEY."""

    config: Path
    env: dict[str, str]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_wtfs(["-c", str(self.config), *args], self.env, check=False)


def make_cli(path: Path, settings: dict[str, Any], **env: str) -> Cli:
    clean = {k: v for k, v in os.environ.items()
             if k != "GIRDER_API_KEY" and not k.startswith("WTFS_")}  # fmt: skip
    return Cli(write_config(path, settings), {**clean, **env})


@pytest.fixture
def admin(tmp_path: Path, base_config: dict[str, Any]) -> Cli:
    return make_cli(tmp_path / "admin.yaml", base_config)


@pytest.fixture
def bob_cli(tmp_path: Path, girder: LocalGirder, bob: GirderUser) -> Cli:
    """Bob's key through the environment, as a container would pass it: never in argv."""
    settings = {"girder": {"api_url": girder.api_url}, "private_storage_path": str(tmp_path)}
    return make_cli(tmp_path / "bob.yaml", settings, GIRDER_API_KEY=bob.api_key_file.read_text())


@pytest.fixture
def stock(tmp_path: Path, stock_girder: LocalGirder) -> Cli:
    settings = {
        "girder": {"api_url": stock_girder.api_url, "api_key_file": str(stock_girder.api_key_file)},
        "private_storage_path": str(tmp_path / "store"),
    }
    return make_cli(tmp_path / "stock.yaml", settings)


def one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The command failed with ``code`` and said so in one line holding every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("wtfs: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert result.stdout == ""
    return lines[0]


def session_file(path: Path, tree: Tree) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "dataSet": [
                    {"itemId": tree.folders["one"], "mountPath": "/data/one"},
                    {"itemId": tree.items["two/b.txt"], "mountPath": "/b.txt"},
                ]
            }
        )
    )
    return path


def creates(girder: LocalGirder) -> int:
    route = girder.stats()["by_route"].get(CREATE_ROUTE)
    return int(route["requests"]) if route else 0


def test_create_from_a_file_prints_the_id_then_list_and_delete_see_it(
    admin: Cli, girder: LocalGirder, tmp_path: Path, private_tree: Tree
) -> None:
    made = admin("session", "create", str(session_file(tmp_path / "s.yaml", private_tree)))
    assert made.returncode == 0, made.stderr
    sid = made.stdout.strip()
    assert made.stdout == sid + "\n" and len(sid) == 24  # id=$(wtfs session create s.yaml)
    record = httpx.get(
        f"{girder.api_url}/dm/session/{sid}", headers={"Girder-Token": girder.token()}
    ).json()
    assert [e["mountPath"] for e in record["dataSet"]] == ["/data/one", "/b.txt"]

    table = admin("session", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "created", "mountPath", "itemId"]
    (row,) = [line for line in lines if line.startswith(sid)]
    assert row.split()[-2:] == ["/data/one", private_tree.folders["one"]]
    follow = lines[lines.index(row) + 1].split()
    assert follow == ["/b.txt", private_tree.items["two/b.txt"]]
    listed = json.loads(admin("session", "list", "--json").stdout)
    assert sid in [r["_id"] for r in listed]

    gone = admin("session", "delete", sid)
    assert (gone.returncode, gone.stdout) == (0, f"deleted session {sid}\n"), gone.stderr
    assert {"event": "dm.session.delete", "id": sid} in girder.events()
    assert sid not in admin("session", "list").stdout
    one_line(admin("session", "delete", sid), 2, f"Invalid session id ({sid})")


def test_create_from_dataset_json_with_the_record_as_json(admin: Cli, private_tree: Tree) -> None:
    data_set = [{"itemId": private_tree.folders["two"], "mountPath": "//two/"}]
    made = admin("session", "create", "--json", "--dataset", json.dumps(data_set))
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert record["_modelType"] == "session"
    assert record["dataSet"] == [{"itemId": private_tree.folders["two"], "mountPath": "/two"}]
    # A session document works as --dataset too, as in a session file.
    document = json.dumps({"dataSet": data_set})
    assert admin("session", "create", "--dataset", document).returncode == 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ("give a session FILE or --dataset JSON",)),
        (("s.yaml", "--dataset", "[]"), ("give a session FILE or --dataset JSON",)),
        (("--dataset", "[{"), ("--dataset: not valid JSON",)),
        (("--dataset", '[{"itemId": "x", "mountPath": "rel"}]'), ("dataSet[0]", "absolute")),
        (("--dataset", json.dumps([{"itemId": "x", "mountPath": "/a"},
                                   {"itemId": "y", "mountPath": "/a/b"}])),
         ("dataSet[1]", "lies inside '/a'")),
        (("missing.yaml",), ("session file", "missing.yaml")),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2_before_asking_girder(
    admin: Cli, girder: LocalGirder, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    before = creates(girder)
    one_line(admin("session", "create", *args), 2, *needles)
    assert creates(girder) == before  # the client judged it: no request was made


def test_what_the_server_refuses_is_its_message_and_exit_2(
    admin: Cli, bob_cli: Cli, private_tree: Tree
) -> None:
    missing = "5f00000000000000000000ff"
    data_set = json.dumps([{"itemId": missing, "mountPath": "/x"}])
    line = one_line(admin("session", "create", "--dataset", data_set), 2)
    assert line == (
        "wtfs: Girder refused the session: dataSet[0]: itemId "
        f"'{missing}' is neither an item nor a folder you can read"
    )
    # Bob cannot name the admin's private folder: the same words as for a missing one.
    data_set = json.dumps([{"itemId": private_tree.folders["one"], "mountPath": "/x"}])
    one_line(bob_cli("session", "create", "--dataset", data_set), 2, "neither an item nor")
    one_line(admin("session", "delete", "not-an-id"), 2, "Invalid ObjectId: not-an-id")


def test_users_see_their_own_sessions_and_admins_everyones_with_all(
    admin: Cli, bob_cli: Cli, bob: GirderUser, girder: LocalGirder, public_tree: Tree
) -> None:
    data_set = json.dumps([{"itemId": public_tree.folders["one"], "mountPath": "/one"}])
    bobs = bob_cli("session", "create", "--dataset", data_set).stdout.strip()
    admins = admin("session", "create", "--dataset", data_set).stdout.strip()
    assert bobs and admins
    assert bobs in bob_cli("session", "list").stdout
    assert admins not in bob_cli("session", "list", "--all").stdout
    assert bobs not in admin("session", "list").stdout
    everyone = admin("session", "list", "--all").stdout.splitlines()
    assert everyone[0].split() == ["id", "owner", "created", "mountPath", "itemId"]
    assert [line.split()[1] for line in everyone if line.startswith(bobs)] == [bob.id]
    line = one_line(bob_cli("session", "delete", admins), 1, "403")
    assert "access denied" in line.lower()
    assert admins in admin("session", "list").stdout
    assert admin("session", "delete", bobs).returncode == 0  # a site admin may


def test_a_girder_without_the_plugin_is_named_with_how_to_install_it(
    stock: Cli, tmp_path: Path, public_tree: Tree
) -> None:
    data_set = json.dumps([{"itemId": "5f0000000000000000000001", "mountPath": "/x"}])
    for args in (
        ("session", "create", "--dataset", data_set),
        ("session", "list"),
        ("session", "delete", "5f0000000000000000000001"),
    ):
        one_line(
            stock(*args), 2, "has no wtfs plugin", "pip install ./girder-plugin-wtfs", "restart"
        )


def test_no_api_key_is_a_configuration_error(tmp_path: Path, girder: LocalGirder) -> None:
    cli = make_cli(tmp_path / "nokey.yaml", {"girder": {"api_url": girder.api_url}})
    one_line(cli("session", "list"), 2, "no Girder API key", "GIRDER_API_KEY")


# -- wtfs mount --session-id -----------------------------------------------------------------------


@pytest.fixture
def by_id(tmp_path: Path, base_config: dict[str, Any]) -> Iterator[tuple[Cli, Path, Path]]:
    """A CLI whose mounts log to a file; the mount point is always unmounted afterwards."""
    log = tmp_path / "mount.log"
    cli = make_cli(tmp_path / "m.yaml", {**base_config, "log_file": str(log)})
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        yield cli, mountpoint, log
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        if log.exists():
            assert "Traceback" not in log.read_text(), log.read_text()


def test_a_session_created_in_girder_mounts_by_id(
    by_id: tuple[Cli, Path, Path], girder: LocalGirder, tmp_path: Path, private_tree: Tree
) -> None:
    cli, mountpoint, _ = by_id
    sid = cli("session", "create", str(session_file(tmp_path / "s.yaml", private_tree)))
    assert sid.returncode == 0, sid.stderr
    mounted = cli("mount", "--session-id", sid.stdout.strip(), str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    assert sorted(os.listdir(mountpoint)) == ["b.txt", "data"]
    assert sorted(os.listdir(mountpoint / "data/one")) == ["a", "fa.txt"]
    token = {"Girder-Token": girder.token()}
    for shown, path in [("data/one/a/c.txt", "one/a/c.txt"), ("b.txt", "two/b.txt")]:
        from_girder = httpx.get(
            f"{girder.api_url}/item/{private_tree.items[path]}/download", headers=token
        ).content
        assert (mountpoint / shown).read_bytes() == from_girder == private_tree.contents[path]
    status = json.loads(cli("status", "--json").stdout)
    assert sid.stdout.strip() in json.dumps(status)
    assert cli("umount", str(mountpoint)).returncode == 0
    assert not os.path.ismount(mountpoint)
