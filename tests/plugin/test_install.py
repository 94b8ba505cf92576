"""The plugin is a distribution of its own: Girder loads it through its entry point, it needs
nothing of the daemon, and the daemon's distribution carries none of it."""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "girder-plugin-wtfs"
DAEMON_ONLY = {"pyfuse3", "trio", "asyncssh", "rich"}


def test_the_dev_girder_loads_the_plugin_through_its_entry_point(girder: LocalGirder) -> None:
    (entry,) = [
        e for e in importlib.metadata.entry_points(group="girder.plugin") if e.name == "wtfs"
    ]
    assert entry.value == "girder_plugin_wtfs:WtfsPlugin"
    assert entry.dist is not None and entry.dist.name == "girder-plugin-wtfs"
    plugins = httpx.get(
        f"{girder.api_url}/system/plugins", headers={"Girder-Token": girder.token()}
    ).json()
    assert plugins["loaded"] == ["wtfs"]
    assert plugins["all"]["wtfs"]["version"] == importlib.metadata.version("girder-plugin-wtfs")


def test_a_stock_girder_has_no_session_api(stock_girder: LocalGirder) -> None:
    token = {"Girder-Token": stock_girder.token()}
    plugins = httpx.get(f"{stock_girder.api_url}/system/plugins", headers=token).json()
    assert plugins["loaded"] == []
    for method, path in [("GET", "dm/session"), ("POST", "dm/session"), ("GET", "dm/session/x")]:
        answer = httpx.request(method, f"{stock_girder.api_url}/{path}", headers=token)
        assert answer.status_code == 404, (method, path)


def test_the_plugin_imports_nothing_of_the_daemon() -> None:
    """Girder's environment has no wtfs, pyfuse3, trio, asyncssh or rich: the plugin must not
    import them (nor reach ../shared or anything outside the repository)."""
    sources = sorted((PLUGIN / "girder_plugin_wtfs").rglob("*.py"))
    assert {p.name for p in sources} >= {"__init__.py", "dm.py", "session.py", "cluster.py",
                                         "locks.py", "download.py"}  # fmt: skip
    for path in sources:
        text = path.read_text()
        assert "../shared" not in text, path
        for node in ast.walk(ast.parse(text)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in DAEMON_ONLY | {"wtfs"}, f"{path.name} imports {name}"


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel`` of a copy of ``source`` (a build in place would leave build/ behind)."""
    copy = out / "src"
    shutil.copytree(
        source,
        copy,
        ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(copy)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel


def wheel_metadata(wheel: Path) -> tuple[list[str], email.message.Message, str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points[0]).decode() if entry_points else ""
        return names, email.parser.Parser().parsestr(z.read(meta).decode()), text


@pytest.mark.slow
def test_the_wheels_keep_server_and_daemon_apart(tmp_path: Path) -> None:
    plugin_wheel = build_wheel(PLUGIN, tmp_path / "plugin")
    names, meta, entry_points = wheel_metadata(plugin_wheel)
    assert meta["Name"] == "girder-plugin-wtfs"
    requires = meta.get_all("Requires-Dist") or []
    # Girder, and the store's index with its PostgreSQL driver (the cluster's index): no daemon
    assert [r.replace(" ", "") for r in requires] == ["girder<6,>=5", "wtfs-index[postgres]"]
    assert "[girder.plugin]\nwtfs = girder_plugin_wtfs:WtfsPlugin" in entry_points
    assert all(n.startswith(("girder_plugin_wtfs/", "girder_plugin_wtfs-")) for n in names)

    daemon_wheel = build_wheel(ROOT, tmp_path / "daemon")
    names, meta, entry_points = wheel_metadata(daemon_wheel)
    assert meta["Name"] == "wtfs"
    assert not [n for n in names if "girder_plugin" in n], "plugin code in the daemon's wheel"
    assert "girder.plugin" not in entry_points
    requires = {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip()
                for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}  # fmt: skip
    assert "girder" not in requires and requires >= DAEMON_ONLY
