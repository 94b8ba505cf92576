"""The rules a session's dataSet must follow: one home for the client and the server.

The wtfs client checks a session file with them (`wtfs.namespace.session.parse_session`,
before a mount or `wtfs session create`), the server plugin each `POST /dm/session`
(girder_plugin_wtfs.dm), before anything touches its database: a dataSet one accepts, the
other accepts, in the same words when refused. Here because both install this package and
neither may import the other (the plugin runs in Girder's environment, without the daemon; the
daemon runs without Girder). Pure Python, no imports beyond the standard library.

A dataSet is a non-empty list of `{itemId, mountPath}` (the `type` and `obj` keys that
`loadObjects` adds are accepted and dropped, so a fetched record can be posted back). A
mountPath is absolute, has no `.` or `..` component, no NUL, no component over 255 bytes, and
is not `/`; it is stored normalised (`//a/b/` → `/a/b`). No two entries share a mountPath, and
none lies inside another's: the mount's tree would have to be both a Girder object and a
directory of mount points.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

ENTRY_KEYS = frozenset({"itemId", "mountPath", "type", "obj"})
NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)


class DataSetError(ValueError):
    """A dataSet that breaks a rule; the message names the entry (`dataSet[2]: ...`)."""


@dataclass(frozen=True)
class DataSetEntry:
    item_id: str
    mount_path: str  # normalised, absolute, never "/"

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.mount_path.strip("/").split("/"))


def check_data_set(data: Any) -> list[DataSetEntry]:
    """The entries of ``data`` (decoded JSON), or `DataSetError` naming the first rule broken."""
    if not isinstance(data, list):
        raise DataSetError("dataSet must be a list of {itemId, mountPath}")
    entries = [_entry(n, raw) for n, raw in enumerate(data)]
    if not entries:
        raise DataSetError("dataSet is empty")
    first: dict[str, int] = {}
    for n, entry in enumerate(entries):
        if entry.mount_path in first:
            raise DataSetError(
                f"dataSet[{n}]: duplicate mountPath {entry.mount_path!r} "
                f"(dataSet[{first[entry.mount_path]}] has it too)"
            )
        first[entry.mount_path] = n
    for n, entry in enumerate(entries):
        for m, other in enumerate(entries):
            if m != n and entry.mount_path.startswith(other.mount_path + "/"):
                raise DataSetError(
                    f"dataSet[{n}]: mountPath {entry.mount_path!r} lies inside "
                    f"{other.mount_path!r}, which dataSet[{m}] mounts"
                )
    return entries


def _entry(n: int, raw: Any) -> DataSetEntry:
    where = f"dataSet[{n}]"
    if not isinstance(raw, dict):
        raise DataSetError(f"{where}: expected a mapping with itemId and mountPath")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise DataSetError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    item_id, mount_path = raw.get("itemId"), raw.get("mountPath")
    if not isinstance(item_id, str) or not item_id.strip():
        raise DataSetError(f"{where}: itemId must be a non-empty string")
    if not isinstance(mount_path, str) or not mount_path.startswith("/"):
        raise DataSetError(f"{where}: mountPath must be an absolute path, got {mount_path!r}")
    if any(p in (".", "..") for p in mount_path.split("/")) or "\0" in mount_path:
        raise DataSetError(f"{where}: mountPath {mount_path!r} must not contain '.' or '..'")
    if not _is_unicode(mount_path):  # JSON may spell a lone surrogate ("\ud800"); no file can
        raise DataSetError(f"{where}: mountPath {mount_path!r} is not valid Unicode")
    # normpath keeps a leading "//" (POSIX allows it): collapse it, or "//a" ≠ "/a".
    normal = "/" + posixpath.normpath(mount_path).lstrip("/")
    if normal == "/":
        raise DataSetError(f"{where}: mountPath must name something below '/'")
    if any(len(p.encode()) > NAME_MAX for p in normal.split("/")):
        raise DataSetError(f"{where}: mountPath {mount_path!r} has a component over 255 bytes")
    return DataSetEntry(item_id.strip(), normal)


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
