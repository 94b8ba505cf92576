"""Sessions: a dataSet of {itemId, mountPath}, from a YAML/JSON file or Girder's /dm/session."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wtfs.config import read_user_file
from wtfs.errors import ConfigError, NotFound, WtfsError
from wtfs.girder.client import GirderClient
from wtfs.girder.sessions import no_plugin


@dataclass(frozen=True)
class DataSetEntry:
    item_id: str
    mount_path: str  # normalised, absolute, never "/"

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.mount_path.strip("/").split("/"))


@dataclass(frozen=True)
class Session:
    session_id: str
    data_set: tuple[DataSetEntry, ...]
    origin: str  # "file:/path" or "girder:<id>", for status and refresh


def parse_session(data: Any, *, session_id: str, origin: str) -> Session:
    """Validate a session document (`{"dataSet": [...]}` or a bare list)."""
    if isinstance(data, dict):
        if "dataSet" not in data:
            raise ConfigError(f"session {origin}: no 'dataSet' key")
        session_id = str(data.get("_id") or data.get("id") or session_id)
        data = data["dataSet"]
    if not isinstance(data, list):
        raise ConfigError(f"session {origin}: dataSet must be a list of {{itemId, mountPath}}")
    entries: list[DataSetEntry] = []
    for n, raw in enumerate(data):
        where = f"session {origin}: dataSet[{n}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with itemId and mountPath")
        unknown = set(raw) - {"itemId", "mountPath", "type", "obj"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        item_id, mount_path = raw.get("itemId"), raw.get("mountPath")
        if not isinstance(item_id, str) or not item_id.strip():
            raise ConfigError(f"{where}: itemId must be a non-empty string")
        if not isinstance(mount_path, str) or not mount_path.startswith("/"):
            raise ConfigError(f"{where}: mountPath must be an absolute path, got {mount_path!r}")
        parts = mount_path.split("/")
        if any(p in (".", "..") for p in parts) or "\0" in mount_path:
            raise ConfigError(f"{where}: mountPath {mount_path!r} must not contain '.' or '..'")
        if not _is_unicode(mount_path):  # JSON may spell a lone surrogate ("\ud800")
            raise ConfigError(f"{where}: mountPath {mount_path!r} is not valid Unicode")
        # normpath keeps a leading "//" (POSIX allows it): collapse it, or "//a" ≠ "/a".
        normal = "/" + posixpath.normpath(mount_path).lstrip("/")
        if normal == "/":
            raise ConfigError(f"{where}: mountPath must name something below '/'")
        if any(len(p.encode()) > 255 for p in normal.split("/")):
            raise ConfigError(f"{where}: mountPath {mount_path!r} has a component over 255 bytes")
        entries.append(DataSetEntry(item_id.strip(), normal))
    if not entries:
        raise ConfigError(f"session {origin}: dataSet is empty")
    # The same rules, in the same order and words, as the server plugin's check_data_set
    # (girder-plugin-wtfs/girder_plugin_wtfs/dataset.py): tests/support/datasets.py tests both.
    first: dict[str, int] = {}
    for n, entry in enumerate(entries):
        if entry.mount_path in first:
            raise ConfigError(
                f"session {origin}: dataSet[{n}]: duplicate mountPath {entry.mount_path!r} "
                f"(dataSet[{first[entry.mount_path]}] has it too)"
            )
        first[entry.mount_path] = n
    for n, entry in enumerate(entries):
        for m, other in enumerate(entries):
            if m != n and entry.mount_path.startswith(other.mount_path + "/"):
                raise ConfigError(
                    f"session {origin}: dataSet[{n}]: mountPath {entry.mount_path!r} lies "
                    f"inside {other.mount_path!r}, which dataSet[{m}] mounts"
                )
    return Session(session_id, tuple(entries), origin)


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def load_session_file(path: str | Path) -> Session:
    path = Path(path)
    text = read_user_file(path, "session file")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"session file {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return parse_session(data, session_id=path.stem, origin=f"file:{path.resolve()}")


async def fetch_session(girder: GirderClient, session_id: str) -> Session:
    """`GET /dm/session/{id}`: seed 001's session record, from a Girder with the wtfs plugin.

    A stock Girder has no such route (404: said in one line with how to install the plugin);
    with the plugin, an unknown id is Girder's 400 "Invalid session id", passed on as it is.
    """
    try:
        data = await girder.get_json(f"dm/session/{session_id}")
    except NotFound:
        raise ConfigError(
            f"session {session_id}: {no_plugin(girder).cause}; or mount a session file"
        ) from None
    except WtfsError as exc:
        raise ConfigError(f"session {session_id}: {exc.cause}") from None
    return parse_session(data, session_id=session_id, origin=f"girder:{session_id}")
