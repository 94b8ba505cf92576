"""Bad input to `wtfs mount` (the user's command: background mode): each is one line on stderr
naming the problem, exit code 2, nothing mounted and nothing written (the private store
directory is not created). The log file is pointed outside the store so that only the store
itself is judged here."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.mounts import run_wtfs


@dataclass
class Setup:
    tmp: Path
    config: dict[str, Any]
    store: Path
    mountpoint: Path
    env: dict[str, str]

    def config_file(self, text: str | None = None) -> Path:
        path = self.tmp / "wtfs.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(self.config))
        return path

    def session_file(self, data: Any, name: str = "session.json") -> Path:
        path = self.tmp / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    def mount(self, *args: str, config_text: str | None = None) -> subprocess.CompletedProcess[str]:
        config = self.config_file(config_text)
        return run_wtfs(["-c", str(config), "mount", *args], self.env, check=False, timeout=60)


@pytest.fixture
def setup(tmp_path: Path, base_config: dict[str, Any]) -> Iterator[Setup]:
    store = tmp_path / "store"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = {**base_config, "private_storage_path": str(store),
              "log_file": str(tmp_path / "logs" / "wtfs.log")}  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if k != "GIRDER_API_KEY" and not k.startswith("WTFS_")}  # fmt: skip
    s = Setup(tmp_path, config, store, mountpoint, env)
    try:
        yield s
    finally:
        # A mount that should not have happened must not outlive the test.
        for path in (mountpoint, tmp_path / "file-mnt", tmp_path / "full-mnt"):
            if os.path.ismount(path):
                subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


def assert_refused(
    result: subprocess.CompletedProcess[str],
    s: Setup,
    *needles: str,
    mountpoint: Path | None = None,
) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("wtfs: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not os.path.ismount(mountpoint or s.mountpoint), "mounted anyway"
    assert not s.store.exists(), (
        f"the private store was created ({sorted(p.name for p in s.store.iterdir())}) "
        f"though the mount was refused: {lines[0]}"
    )


def good_session(s: Setup, sample: SampleData) -> Path:
    return s.session_file({"dataSet": [{"itemId": sample.folders["experiment"],
                                        "mountPath": "/x"}]})  # fmt: skip


# --- configuration ----------------------------------------------------------------------------


def test_malformed_yaml_config(setup: Setup, sample: SampleData) -> None:
    result = setup.mount(
        str(good_session(setup, sample)), str(setup.mountpoint),
        config_text="girder: {api_url: [http://x\nprivate_storage_path: /tmp\n",
    )  # fmt: skip
    assert_refused(result, setup, "config file", "line")


def test_unknown_config_key(setup: Setup, sample: SampleData) -> None:
    setup.config["no_such_key"] = 1
    result = setup.mount(str(good_session(setup, sample)), str(setup.mountpoint))
    assert_refused(result, setup, "no_such_key", "unknown key")


@pytest.mark.parametrize("capacity", [0, -5, "lots", "10 parsecs"])
def test_bad_capacity(setup: Setup, sample: SampleData, capacity: object) -> None:
    setup.config["private_storage_capacity"] = capacity
    result = setup.mount(str(good_session(setup, sample)), str(setup.mountpoint))
    assert_refused(result, setup, "private_storage_capacity")


def test_gc_start_fraction_below_end_fraction(setup: Setup, sample: SampleData) -> None:
    setup.config.update(gc_collect_start_fraction=0.3, gc_collect_end_fraction=0.6)
    result = setup.mount(str(good_session(setup, sample)), str(setup.mountpoint))
    assert_refused(result, setup, "gc_collect_start_fraction")


def test_store_path_under_a_regular_file(setup: Setup, sample: SampleData) -> None:
    blocker = setup.tmp / "a-file"
    blocker.write_text("not a directory\n")
    setup.store = blocker / "store"
    setup.config["private_storage_path"] = str(setup.store)
    result = setup.mount(str(good_session(setup, sample)), str(setup.mountpoint))
    assert_refused(result, setup, "private_storage_path", str(setup.store))
    assert blocker.read_text() == "not a directory\n"


def test_api_key_file_missing(setup: Setup, sample: SampleData) -> None:
    missing = setup.tmp / "no-such-key-file"
    setup.config["girder"] = {**setup.config["girder"], "api_key_file": str(missing)}
    result = setup.mount(str(good_session(setup, sample)), str(setup.mountpoint))
    assert_refused(result, setup, "girder.api_key_file", str(missing))


# --- the mountpoint ---------------------------------------------------------------------------


def test_missing_mountpoint(setup: Setup, sample: SampleData) -> None:
    missing = setup.tmp / "no-such-dir"
    result = setup.mount(str(good_session(setup, sample)), str(missing))
    assert_refused(result, setup, "mountpoint", str(missing), mountpoint=missing)
    assert not missing.exists()


def test_non_empty_mountpoint(setup: Setup, sample: SampleData) -> None:
    full = setup.tmp / "full-mnt"
    full.mkdir()
    (full / "precious.txt").write_text("keep me\n")
    result = setup.mount(str(good_session(setup, sample)), str(full))
    assert_refused(result, setup, "mountpoint", "not empty", mountpoint=full)
    assert (full / "precious.txt").read_text() == "keep me\n"


def test_mountpoint_that_is_a_file(setup: Setup, sample: SampleData) -> None:
    file_mnt = setup.tmp / "file-mnt"
    file_mnt.write_text("a file\n")
    result = setup.mount(str(good_session(setup, sample)), str(file_mnt))
    assert_refused(result, setup, "mountpoint", "not a directory", mountpoint=file_mnt)
    assert file_mnt.read_text() == "a file\n"


# --- the session ------------------------------------------------------------------------------


def test_session_with_a_relative_mount_path(setup: Setup, sample: SampleData) -> None:
    session = setup.session_file(
        {"dataSet": [{"itemId": sample.folders["experiment"], "mountPath": "relative/x"}]}
    )
    result = setup.mount(str(session), str(setup.mountpoint))
    assert_refused(result, setup, "mountPath", "relative/x")


def test_session_with_duplicate_mount_paths(setup: Setup, sample: SampleData) -> None:
    session = setup.session_file({"dataSet": [
        {"itemId": sample.folders["experiment"], "mountPath": "/x"},
        {"itemId": sample.items["experiment/raw/measurements.csv"], "mountPath": "/x"},
    ]})  # fmt: skip
    result = setup.mount(str(session), str(setup.mountpoint))
    assert_refused(result, setup, "duplicate mountPath", "/x")


def test_malformed_session_json(setup: Setup) -> None:
    session = setup.session_file('{"dataSet": [{"itemId": "abc", ', name="broken.json")
    result = setup.mount(str(session), str(setup.mountpoint))
    assert_refused(result, setup, "session file", "JSON")


def test_session_naming_an_item_girder_does_not_have(setup: Setup) -> None:
    missing = "0123456789abcdef01234567"
    session = setup.session_file({"dataSet": [{"itemId": missing, "mountPath": "/x"}]})
    result = setup.mount(str(session), str(setup.mountpoint))
    assert_refused(result, setup, missing)


def test_session_id_against_a_stock_girder(setup: Setup, stock_girder: LocalGirder) -> None:
    stock = {"api_url": stock_girder.api_url, "api_key_file": str(stock_girder.api_key_file)}
    config = yaml.safe_dump({**setup.config, "girder": stock})
    result = setup.mount(
        "--session-id", "5f0000000000000000000000", str(setup.mountpoint), config_text=config
    )
    assert_refused(result, setup, "404", "has no wtfs plugin", "pip install ./girder-plugin-wtfs")


def test_session_id_girder_does_not_have(setup: Setup) -> None:
    missing = "5f0000000000000000000000"
    result = setup.mount("--session-id", missing, str(setup.mountpoint))
    assert_refused(result, setup, f"Invalid session id ({missing})")
