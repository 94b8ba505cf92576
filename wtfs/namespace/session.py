"""Sessions: a dataSet of {itemId, mountPath}, from a YAML/JSON file or Girder's /dm/session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from wtfs_index.dataset import DataSetEntry, DataSetError, check_data_set

from wtfs.config import read_user_file
from wtfs.errors import ConfigError, NotFound, WtfsError
from wtfs.girder.client import GirderClient
from wtfs.girder.sessions import no_plugin


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
    try:
        entries = check_data_set(data)
    except DataSetError as exc:
        raise ConfigError(f"session {origin}: {exc}") from None
    return Session(session_id, tuple(entries), origin)


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
