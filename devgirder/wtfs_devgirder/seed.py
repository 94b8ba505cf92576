"""Sample data for the dev Girder: a small, realistic, fully known tree.

Layout of the public collection ``wtfs-demo`` (folder / item / file)::

    experiment/README.txt/README.txt
    experiment/notes/day1.txt/day1.txt
    experiment/notes/day2.md/day2.md
    experiment/notes/résumé des données.txt/résumé des données.txt   (spaces, accents)
    experiment/raw/measurements.csv/measurements.csv                  (300 rows)
    experiment/raw/noise-64MiB.bin/noise-64MiB.bin                    (64 MiB, deterministic)
    experiment/raw/scan-001/scan-001.hdr                              (one item, two files)
    experiment/raw/scan-001/scan-001.raw
    quirks/smørrebrød.txt/smørrebrød.txt        (Girder answers 500 on /file/{id}/download)
    many/sample-000.txt/sample-000.txt ... many/sample-119.txt/...     (more than a page of 50)

Every path in `SampleData` is relative to the collection and spells the Girder hierarchy in
full: ``folder/.../item`` for items, ``folder/.../item/file`` for files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from girder_client import GirderClient

logger = logging.getLogger(__name__)

COLLECTION_NAME = "wtfs-demo"
MANY_COUNT = 120
BIG_FILE_SIZE = 64 * 1024 * 1024
BIG_FILE_SEED = 20240917
CSV_ROWS = 300
UPLOAD_CHUNK = 8 * 1024 * 1024

UNICODE_NAME = "résumé des données.txt"
"""Spaces and accents; downloads fine (Girder's NFKD folding drops the combining marks)."""

QUIRKY_NAME = "smørrebrød.txt"
"""'ø' has no NFKD decomposition: Girder answers 500 on /file/{id}/download for this name."""


@dataclass(frozen=True)
class SampleData:
    """Ids and digests of everything `seed_sample_data` created."""

    collection_id: str
    collection_name: str
    folders: Mapping[str, str]
    """folder path -> folder id ("experiment", "experiment/raw", "many", ...)."""
    items: Mapping[str, str]
    """item path -> item id ("experiment/raw/scan-001", ...)."""
    files: Mapping[str, str]
    """file path -> file id ("experiment/raw/scan-001/scan-001.hdr", ...)."""
    sha256: Mapping[str, str]
    """file path -> sha256 hex digest of the content, for every seeded file."""
    sizes: Mapping[str, int]
    """file path -> size in bytes."""
    big_file_id: str
    csv_file_id: str
    unicode_file_id: str
    two_file_item_id: str
    quirky_item_id: str
    quirky_file_id: str
    many_folder_id: str
    many_count: int = MANY_COUNT
    seconds: float = field(default=0.0, compare=False)

    def to_json(self) -> str:
        return json.dumps({k: _plain(v) for k, v in asdict(self).items()}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SampleData:
        return cls(**json.loads(text))

    def file_path(self, file_id: str) -> str:
        """The path of the file with id ``file_id``."""
        for path, fid in self.files.items():
            if fid == file_id:
                return path
        raise KeyError(file_id)


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


class _Seeder:
    def __init__(self, gc: GirderClient) -> None:
        self.gc = gc
        self.folders: dict[str, str] = {}
        self.items: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.sha256: dict[str, str] = {}
        self.sizes: dict[str, int] = {}

    def folder(self, path: str, parent_id: str, parent_type: str = "folder") -> str:
        name = path.rsplit("/", 1)[-1]
        folder = self.gc.createFolder(parent_id, name, parentType=parent_type)
        self.folders[path] = str(folder["_id"])
        return self.folders[path]

    def _record(self, item_path: str, name: str, file: dict[str, Any], digest: str) -> str:
        path = f"{item_path}/{name}"
        self.files[path] = str(file["_id"])
        self.sha256[path] = digest
        self.sizes[path] = int(file["size"])
        return path

    def small_item(
        self,
        folder_path: str,
        name: str,
        content: bytes,
        mime: str = "text/plain",
        meta: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """An item named ``name`` holding one file of that name (one request); (item, file)."""
        file = self.gc.uploadStreamToFolder(
            self.folders[folder_path], io.BytesIO(content), name, len(content), mimeType=mime
        )
        item_id = str(file["itemId"])
        item_path = f"{folder_path}/{name}"
        self.items[item_path] = item_id
        self._record(item_path, name, file, hashlib.sha256(content).hexdigest())
        if meta:
            self.gc.addMetadataToItem(item_id, meta)
        return item_id, str(file["_id"])

    def item(self, folder_path: str, name: str, meta: dict[str, Any] | None = None) -> str:
        item = self.gc.createItem(self.folders[folder_path], name, metadata=meta)
        self.items[f"{folder_path}/{name}"] = str(item["_id"])
        return str(item["_id"])

    def file_into_item(
        self, item_path: str, name: str, content: bytes, mime: str = "application/octet-stream"
    ) -> str:
        file = self.gc.uploadFile(
            self.items[item_path], io.BytesIO(content), name, len(content), mimeType=mime
        )
        self._record(item_path, name, file, hashlib.sha256(content).hexdigest())
        return str(file["_id"])

    def big_item(
        self, folder_path: str, name: str, source: Path, digest: str, meta: dict[str, Any]
    ) -> str:
        """Upload ``source`` in 8 MiB chunks (never the whole file in memory)."""
        item_id = self.item(folder_path, name, meta)
        size = source.stat().st_size
        upload = self.gc.post(
            "file",
            parameters={
                "parentType": "item",
                "parentId": item_id,
                "name": name,
                "size": size,
                "mimeType": "application/octet-stream",
            },
        )
        offset = 0
        with source.open("rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                upload = self.gc.post(
                    "file/chunk",
                    parameters={"offset": offset, "uploadId": upload["_id"]},
                    data=chunk,
                )
                offset += len(chunk)
        if offset != size or upload.get("_modelType") != "file":
            raise RuntimeError(f"upload of {name} ended at {offset} of {size} bytes: {upload}")
        self._record(f"{folder_path}/{name}", name, upload, digest)
        return str(upload["_id"])


def write_noise(path: Path, size: int = BIG_FILE_SIZE, seed: int = BIG_FILE_SEED) -> str:
    """Write ``size`` deterministic pseudo-random bytes to ``path``; return their sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1024 * 1024))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def measurements_csv(rows: int = CSV_ROWS, seed: int = 42) -> bytes:
    """A CSV of plausible weather-station readings."""
    rng = random.Random(seed)
    lines = ["timestamp,station,temperature_c,pressure_kpa,humidity_pct,wind_m_s"]
    start = 1_700_000_000
    temp, pressure, humidity = 11.5, 101.3, 62.0
    for i in range(rows):
        temp += rng.gauss(0, 0.35)
        pressure += rng.gauss(0, 0.05)
        humidity = min(100.0, max(5.0, humidity + rng.gauss(0, 1.2)))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 600 * i))
        lines.append(
            f"{stamp},ST-{1 + i % 3:02d},{temp:.2f},{pressure:.3f},{humidity:.1f},"
            f"{abs(rng.gauss(3.2, 1.6)):.2f}"
        )
    return ("\n".join(lines) + "\n").encode()


def seed_sample_data(gc: GirderClient, workdir: Path) -> SampleData:
    """Create the ``wtfs-demo`` collection (see the module docstring) through ``gc``.

    ``gc`` must be allowed to create collections (the dev Girder's admin). ``workdir`` holds the
    64 MiB file while it is uploaded; it is removed afterwards.
    """
    started = time.monotonic()
    s = _Seeder(gc)
    collection = gc.createCollection(
        COLLECTION_NAME, description="Sample data for wtfs", public=True
    )
    cid = str(collection["_id"])
    s.folder("experiment", cid, "collection")
    s.folder("experiment/raw", s.folders["experiment"])
    s.folder("experiment/notes", s.folders["experiment"])
    s.folder("quirks", cid, "collection")
    s.folder("many", cid, "collection")
    gc.addMetadataToFolder(s.folders["experiment"], {"project": "wtfs demo", "owner": "lab-7"})

    s.small_item(
        "experiment",
        "README.txt",
        b"Experiment 7: station readings and one CT scan.\n"
        b"raw/   instrument output, never edited\n"
        b"notes/ lab notebook\n",
    )
    s.small_item(
        "experiment/notes",
        "day1.txt",
        b"Day 1\n=====\nCalibrated ST-01..ST-03 against the reference barometer.\n"
        b"Offset on ST-02: +0.12 kPa, corrected in firmware.\n",
    )
    s.small_item(
        "experiment/notes",
        "day2.md",
        b"# Day 2\n\n- Scan 001 acquired (see `raw/scan-001`).\n- Humidity sensor drift: none.\n",
        mime="text/markdown",
    )
    _, unicode_file_id = s.small_item(
        "experiment/notes",
        UNICODE_NAME,
        "Résumé des données de la journée : températures stables, pas d'anomalie.\n".encode(),
        meta={"language": "fr"},
    )
    csv = measurements_csv()
    _, csv_file_id = s.small_item(
        "experiment/raw",
        "measurements.csv",
        csv,
        mime="text/csv",
        meta={"rows": CSV_ROWS, "instrument": "WX-200", "interval_s": 600},
    )

    noise_path = Path(workdir) / f".seed-noise-{os.getpid()}.bin"
    try:
        digest = write_noise(noise_path)
        big_file_id = s.big_item(
            "experiment/raw",
            "noise-64MiB.bin",
            noise_path,
            digest,
            {"generator": "python random.Random.randbytes", "seed": BIG_FILE_SEED},
        )
    finally:
        noise_path.unlink(missing_ok=True)

    two_file_item_id = s.item("experiment/raw", "scan-001", {"modality": "CT", "slices": 16})
    header = b"scan-001\nwidth=64\nheight=64\nslices=16\ndtype=uint16\n"
    s.file_into_item("experiment/raw/scan-001", "scan-001.hdr", header, "text/plain")
    voxels = random.Random(1).randbytes(64 * 64 * 16 * 2)
    s.file_into_item("experiment/raw/scan-001", "scan-001.raw", voxels)

    quirky_item_id, quirky_file_id = s.small_item(
        "quirks",
        QUIRKY_NAME,
        "Smørrebrød: Girder cannot put this name in a Content-Disposition header.\n".encode(),
        meta={"quirk": "file download answers 500"},
    )

    for i in range(MANY_COUNT):
        s.small_item("many", f"sample-{i:03d}.txt", f"sample {i}\n".encode() * (1 + i % 7))

    seconds = time.monotonic() - started
    logger.info("seeded %s: %d files in %.2f s", COLLECTION_NAME, len(s.files), seconds)
    return SampleData(
        collection_id=cid,
        collection_name=COLLECTION_NAME,
        folders=dict(s.folders),
        items=dict(s.items),
        files=dict(s.files),
        sha256=dict(s.sha256),
        sizes=dict(s.sizes),
        big_file_id=big_file_id,
        csv_file_id=csv_file_id,
        unicode_file_id=unicode_file_id,
        two_file_item_id=two_file_item_id,
        quirky_item_id=quirky_item_id,
        quirky_file_id=quirky_file_id,
        many_folder_id=s.folders["many"],
        seconds=seconds,
    )
