"""The wtfs Girder server plugin: what the wtfs daemon asks of a Girder beyond its stock API.

- `GET /wtfs/folder/{id}/items` (`listing`): a folder's items with their files, per page;
- `/dm/session` (`dm`, `session`): seed 001's sessions, so `wtfs mount --session-id` works;
- `/dm/lock`, `/dm/transfer` (`locks`, `download`): the locks, pins and transfers of the cluster's
  store, read from its shared index (`cluster`: the `wtfs.index_url` and `wtfs.store_path`
  settings); deleting a session releases its locks there.

A distribution of its own (`girder-plugin-wtfs`) so that a Girder server installs it without the
wtfs daemon's dependencies (pyfuse3, trio, asyncssh, rich), and the daemon's environment never
carries server code. Girder finds it through the `girder.plugin` entry point and calls `load`.
"""

# mypy: disallow-subclassing-any=False

from __future__ import annotations

from typing import Any

from girder.plugin import GirderPlugin
from girder.utility.model_importer import ModelImporter

from girder_plugin_wtfs import download, locks
from girder_plugin_wtfs.cluster import register_settings
from girder_plugin_wtfs.dm import DataManager
from girder_plugin_wtfs.listing import WtfsListing
from girder_plugin_wtfs.session import Session


class WtfsPlugin(GirderPlugin):
    DISPLAY_NAME = "wtfs"

    def load(self, info: dict[str, Any]) -> None:
        ModelImporter.registerModel("session", Session, plugin="wtfs")
        info["apiRoot"].wtfs = WtfsListing()
        register_settings()
        dm = DataManager()
        locks.add_routes(dm)
        download.add_route(dm)
        info["apiRoot"].dm = dm
