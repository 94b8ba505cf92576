"""mount(8)'s helper arguments → `wtfs mount` arguments (wtfs/mounthelper.py). The argument
lists are the ones mount(8) and mount.fuse3 really pass (captured on Debian 12, util-linux 2.38.1,
fuse3 3.14); tests/mount/test_mount_helper.py runs them for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from wtfs.errors import ConfigError
from wtfs.mounthelper import from_mount_fuse3, split_options, translate

CWD = Path("/home/u")


def wtfs_args(*argv: str) -> list[str] | None:
    return translate(argv, cwd=CWD)


def refused(*argv: str) -> str:
    with pytest.raises(ConfigError) as info:
        translate(argv, cwd=CWD)
    assert "\n" not in info.value.cause
    return info.value.cause


def test_a_session_file_and_a_config() -> None:
    assert wtfs_args("s.yaml", "/mnt/d", "-o", "rw,config=/etc/w.yaml") == [
        "-c", "/etc/w.yaml", "mount", "/home/u/s.yaml", "/mnt/d"]  # fmt: skip


def test_relative_paths_are_made_absolute_for_the_daemon() -> None:
    assert wtfs_args("./s.yaml", "mnt", "-o", "config=conf/w.yaml") == [
        "-c", "/home/u/conf/w.yaml", "mount", "/home/u/s.yaml", "/home/u/mnt"]  # fmt: skip


def test_without_config_wtfs_looks_for_its_config_as_usual() -> None:
    assert wtfs_args("/s.yaml", "/mnt", "-o", "rw") == ["mount", "/s.yaml", "/mnt"]


def test_the_options_mount_and_mount_fuse3_add_or_pass_are_accepted() -> None:
    # what `mount -T fstab` passed for `config=...,ro,nofail,_netdev,user,...` ...
    fstab = "ro,nosuid,noexec,nodev,config=/w.yaml,nofail,_netdev,user"
    assert wtfs_args("/s", "/m", "-o", fstab) == ["-c", "/w.yaml", "mount", "--noexec", "/s", "/m"]
    # ... what mount.fuse3 passes (dev,suid added), and what a hand-made call may hold
    for options in (
        "rw,dev,suid,config=/w.yaml",
        "config=/w.yaml,noauto,auto,defaults,users",
        "config=/w.yaml,x-systemd.automount,x-systemd.idle-timeout=10min,comment=x",
        "config=/w.yaml,noatime,relatime,sync,async,lazytime,nouser,owner,group",
    ):
        assert wtfs_args("/s", "/m", "-o", options) == ["-c", "/w.yaml", "mount", "/s", "/m"]


def test_noexec_is_honoured_and_the_last_of_exec_noexec_wins() -> None:
    assert wtfs_args("/s", "/m", "-o", "noexec") == ["mount", "--noexec", "/s", "/m"]
    assert wtfs_args("/s", "/m", "-o", "noexec,exec") == ["mount", "/s", "/m"]
    assert wtfs_args("/s", "/m", "-o", "exec", "-o", "noexec") == ["mount", "--noexec", "/s", "/m"]


def test_session_ids_as_source_or_as_an_option() -> None:
    expected = ["mount", "--session-id", "5f00", "/m"]
    assert wtfs_args("session-id:5f00", "/m", "-o", "rw") == expected
    assert wtfs_args("wtfs", "/m", "-o", "session_id=5f00") == expected
    assert wtfs_args("session-id:5f00", "/m", "-o", "session_id=5f00") == expected
    assert "different sessions" in refused("session-id:5f00", "/m", "-o", "session_id=6a11")
    assert "no session id" in refused("session-id:", "/m")


def test_quoted_values_keep_their_commas() -> None:
    assert split_options('config="/etc/a,b.yaml",ro') == ["config=/etc/a,b.yaml", "ro"]
    assert wtfs_args("/s", "/m", "-o", 'config="/a,b.yaml"') == ["-c", "/a,b.yaml", "mount", "/s",
                                                                 "/m"]  # fmt: skip
    assert "unbalanced" in refused("/s", "/m", "-o", 'config="/a')


def test_mount_flags_fake_sloppy_verbose_and_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert wtfs_args("/s", "/m", "-f", "-o", "config=/w.yaml") is None  # checked, not mounted
    assert "unknown" in refused("/s", "/m", "-f", "-o", "frobnicate")  # -f still checks
    sloppy = wtfs_args("/s", "/m", "-s", "-n", "-o", "frobnicate,allow_other")
    assert sloppy == ["mount", "/s", "/m"]
    assert wtfs_args("/s", "/m", "-t", "fuse.wtfs", "-v", "-o", "rw") == ["-v", "mount", "/s", "/m"]
    assert capsys.readouterr().err == "wtfs: running wtfs -v mount /s /m\n"
    assert "fuse.wtfs only" in refused("/s", "/m", "-t", "fuse.sshfs")
    assert "not supported" in refused("/s", "/m", "-N", "/proc/1/ns/mnt")
    assert "unknown flag -w" in refused("/s", "/m", "-w")


def test_bad_options_are_named() -> None:
    cause = refused("/s", "/m", "-o", "rw,config=/w.yaml,frobnicate=3")
    assert "'frobnicate=3'" in cause and "config=FILE" in cause
    assert "mount.allow_other" in refused("/s", "/m", "-o", "allow_other")
    assert "mount.uid" in refused("/s", "/m", "-o", "uid=1000")
    assert "needs a value" in refused("/s", "/m", "-o", "config=")
    assert "ro=1" in refused("/s", "/m", "-o", "ro=1")


def test_what_would_run_as_root_where_less_was_asked_is_refused() -> None:
    assert "setuid=USER is not supported" in refused("/s", "/m", "-o", "setuid=alice")
    assert "drop_privileges" in refused("/s", "/m", "-o", "drop_privileges")
    assert "drop_privileges" in refused("/s", "/dev/fd/3", "-o", "rw")  # mount.fuse3 did it


def test_source_and_mountpoint_are_required() -> None:
    assert refused("/s").startswith("usage: mount -t fuse.wtfs")
    assert refused("/s", "/m", "/extra").startswith("usage:")


def test_only_mount_fuse3s_exact_call_is_taken_for_a_mount() -> None:
    commands = {"mount", "status", "umount"}
    assert from_mount_fuse3(["/s.yaml", "/m", "-o", "rw,dev,suid,config=/w.yaml"], commands) == [
        "-c", "/w.yaml", "mount", "/s.yaml", "/m"]  # fmt: skip
    for args in (["mount", "/m", "-o", "x"], ["status"], ["--version"], ["typo", "/m"],
                 ["-c", "/w.yaml", "mount", "/s"], ["/s", "/m", "-v", "x"]):  # fmt: skip
        assert from_mount_fuse3(args, commands) is None, args
