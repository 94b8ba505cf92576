"""Large test files: written once to local disk and imported into Girder in place (Girder's own
filesystem-assetstore import), so GiB-scale data costs no upload. Tests compare what they read
through the mount with the original file on disk."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from wtfs_devgirder.control import LocalGirder

MiB = 1024 * 1024


@dataclass(frozen=True)
class BigFile:
    name: str
    item_id: str
    path: Path  # the original bytes on local disk
    size: int
    sha256: str

    def expected(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def import_files(girder: LocalGirder, directory: Path, sizes: dict[str, int]) -> dict[str, BigFile]:
    """Create the files, import the directory into a new public folder, return them by name."""
    directory.mkdir(parents=True, exist_ok=True)
    digests = {name: write_random(directory / name, size) for name, size in sizes.items()}
    client = girder.client()
    collection = client.createCollection(f"big-{directory.name}", public=True)
    folder = client.createFolder(collection["_id"], directory.name, parentType="collection",
                                 public=True)  # fmt: skip
    store = client.get("assetstore")[0]
    client.post(f"assetstore/{store['_id']}/import", parameters={
        "importPath": str(directory), "destinationId": folder["_id"],
        "destinationType": "folder", "progress": "false",
    })  # fmt: skip
    items = {item["name"]: item["_id"] for item in client.listItem(folder["_id"])}
    return {
        name: BigFile(name, items[name], directory / name, size, digests[name])
        for name, size in sizes.items()
    }
