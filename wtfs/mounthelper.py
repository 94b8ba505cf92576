"""`mount -t fuse.wtfs SOURCE MOUNTPOINT -o OPTIONS`: mount(8)'s helper protocol mapped onto
`wtfs [-c FILE] mount SOURCE MOUNTPOINT`, so fstab lines and systemd .mount units work.

mount(8) reaches wtfs in one of two ways, and both end here:

- `/sbin/mount.fuse.wtfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS]`, when the
  `mount.fuse.wtfs` console script is linked there (the install step in the README): mount(8)
  looks for helpers in /sbin only, and clears PATH and HOME before running one, so a virtualenv's
  bin directory on PATH is not enough.
- without that link, `mount.fuse3 SOURCE MOUNTPOINT -t fuse.wtfs -o OPTIONS`, which runs
  `wtfs SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh with sh's default PATH (so a `wtfs` in
  /usr/local/bin, where `pip install` as root puts it). It has already dropped `nofail`,
  `_netdev`, `user`... and added `dev,suid` unless told `nodev,nosuid`; `wtfs` sends that call
  here (`from_mount_fuse3`).

The mapping is a pure function of the arguments (`translate`) so that it can be tested on its
own; the mount itself is `wtfs mount` in its background mode, which returns once the mount
answers or fails with its one-line reason: mount(8)'s contract. The API key is never an option:
it comes from the config's `girder.api_key_file` (or $GIRDER_API_KEY) as for `wtfs mount`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from wtfs.errors import ConfigError

SESSION_ID_PREFIX = "session-id:"

#: Accepted and ignored. wtfs mounts are always read-only, nosuid and nodev, so `rw`, `suid` and
#: `dev` (mount(8) and mount.fuse3 add them by default) change nothing; the atime and sync
#: families mean nothing on a read-only file system; the rest are for mount(8) and systemd
#: (which of them reach a helper depends on the route, so all are accepted on both).
IGNORED = frozenset(
    {
        "ro", "rw", "defaults", "nosuid", "suid", "nodev", "dev",
        "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "group",
        "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "lazytime", "nolazytime", "diratime", "nodiratime", "iversion", "noiversion",
        "sync", "async", "dirsync", "mand", "nomand", "silent", "loud",
    }
)  # fmt: skip
IGNORED_PREFIXES = ("x-", "comment=")

#: FUSE options other file systems take in fstab; for wtfs they are config keys, and a mount
#: that silently ignored `allow_other` would fail its container later and far away.
IN_THE_CONFIG = {
    "allow_other": "mount.allow_other: true",
    "uid": "mount.uid",
    "gid": "mount.gid",
    "umask": "mount.umask",
}

#: What mount.fuse3 does for other file systems and the helper does not (the daemon would run
#: as root where the fstab line asked for less).
UNSUPPORTED = {
    "setuid": "setuid=USER is not supported: mount as that user with a config of theirs",
    "drop_privileges": "drop_privileges is not supported",
}

USAGE = (
    "usage: mount -t fuse.wtfs SESSION_FILE|session-id:ID MOUNTPOINT "
    "-o config=FILE[,session_id=ID][,noexec][,...]"
)


def split_options(text: str) -> list[str]:
    """Split an option string on commas outside double quotes, as libmount does, dropping the
    quotes: `config="/etc/a,b.yaml",ro` is two options."""
    options: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ConfigError(f"mount options {text!r}: unbalanced double quote")
    options.append("".join(current))
    return [o for o in options if o]


def translate(argv: Sequence[str], cwd: Path | None = None) -> list[str] | None:
    """The `wtfs` arguments for a helper call, or None for `-f` (mount(8)'s fake mount: check
    the arguments, mount nothing). Bad input raises ConfigError (one line, exit 2)."""
    cwd = cwd or Path.cwd()
    positional: list[str] = []
    option_texts: list[str] = []
    fake = sloppy = False
    verbose = 0
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-o", "-t", "-N"):
            if not args:
                raise ConfigError(f"{arg} needs a value; {USAGE}")
            value = args.pop(0)
            if arg == "-o":
                option_texts.append(value)
            elif arg == "-t" and value not in ("fuse.wtfs", "wtfs"):
                raise ConfigError(f"-t {value}: this helper mounts fuse.wtfs only")
            elif arg == "-N":
                raise ConfigError("-N (mount in another namespace) is not supported")
        elif arg.startswith("-o") and len(arg) > 2:
            option_texts.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnv"):
            fake |= "f" in arg
            sloppy |= "s" in arg
            verbose += arg.count("v")
        elif arg.startswith("-") and len(arg) > 1:
            raise ConfigError(f"unknown flag {arg}; {USAGE}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ConfigError(USAGE)
    source, mountpoint = positional
    if mountpoint.startswith("/dev/fd/"):  # mount.fuse3's drop_privileges mounted it already
        raise ConfigError(UNSUPPORTED["drop_privileges"])

    config: str | None = None
    session_id: str | None = None
    noexec = False
    for option in (o for text in option_texts for o in split_options(text)):
        name, has_value, value = option.partition("=")
        if name in ("config", "session_id"):
            if not value:
                raise ConfigError(f"mount option {name}= needs a value")
            if name == "config":
                config = str(cwd / value)
            else:
                session_id = value
        elif name in ("noexec", "exec") and not has_value:
            noexec = name == "noexec"  # the last one wins, as for mount(8)
        elif (name in IGNORED and not has_value) or option.startswith(IGNORED_PREFIXES):
            continue
        elif name in UNSUPPORTED:
            raise ConfigError(f"mount option {option}: {UNSUPPORTED[name]}")
        elif sloppy:
            continue  # mount -s: tolerate what we do not know
        elif name in IN_THE_CONFIG:
            raise ConfigError(
                f"mount option {option}: set {IN_THE_CONFIG[name]} in the wtfs config instead"
            )
        else:
            raise ConfigError(
                f"unknown mount option {option!r} for fuse.wtfs "
                "(wtfs takes config=FILE, session_id=ID, noexec; see the README)"
            )

    if source.startswith(SESSION_ID_PREFIX):
        named = source.removeprefix(SESSION_ID_PREFIX)
        if not named:
            raise ConfigError(f"{source}: no session id after {SESSION_ID_PREFIX!r}")
        if session_id is not None and session_id != named:
            raise ConfigError(f"{source} and session_id={session_id} name different sessions")
        session_id = named
    # With -o session_id=ID, SOURCE is only a name (`wtfs`, say), as `none` is for tmpfs.
    session = ["--session-id", session_id] if session_id is not None else [str(cwd / source)]

    wtfs = [*(["-c", config] if config else []), *(["-v"] * verbose), "mount"]
    wtfs += [*(["--noexec"] if noexec else []), *session, str(cwd / mountpoint)]
    if verbose:
        print(f"wtfs: running wtfs {shlex.join(wtfs)}", file=sys.stderr)
    return None if fake else wtfs


def from_mount_fuse3(args: Sequence[str], commands: Collection[str]) -> list[str] | None:
    """The `wtfs` arguments for mount.fuse3's call `wtfs SOURCE MOUNTPOINT -o OPTIONS`, or
    None when `args` is not that call (it always has exactly that shape: mount.fuse3 always
    passes options, and SOURCE is no subcommand name, so a mistyped command is not taken for
    it)."""
    shaped = len(args) == 4 and args[2] == "-o" and args[0] not in commands
    if shaped and not args[0].startswith("-") and not args[1].startswith("-"):
        return translate(args)
    return None


def main() -> None:
    """The `mount.fuse.wtfs` console script."""
    try:
        args = translate(sys.argv[1:])
    except ConfigError as exc:
        print(f"wtfs: {exc.cause}", file=sys.stderr)
        sys.exit(2)
    if args is None:
        sys.exit(0)
    from wtfs.cli import main as wtfs

    wtfs.main(args=args, prog_name="wtfs")
