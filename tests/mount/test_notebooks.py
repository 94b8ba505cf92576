"""What a notebook does with /data: plain open(), os.walk, the csv module, mmap, on real mounts
of the seeded Girder. (pandas and numpy are not dependencies: the csv module and mmap stand in
for read_csv and np.memmap, which reach the file through the same system calls.)"""

from __future__ import annotations

import csv
import hashlib
import io
import mmap
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import BIG_FILE_SEED, BIG_FILE_SIZE, CSV_ROWS, SampleData, measurements_csv

from tests.support.mounts import mounted
from wtfs.cache.manager import RANDOM_SPAN

MiB = 1024 * 1024
BLOCK = 4 * MiB  # wtfs's default block_size
NOISE_KEY = "experiment/raw/noise-64MiB.bin/noise-64MiB.bin"
CSV_KEY = "experiment/raw/measurements.csv/measurements.csv"


def notebook_data(sample: SampleData) -> list[dict[str, str]]:
    return [{"itemId": sample.folders["experiment"], "mountPath": "/data/experiment"}]


@pytest.fixture(scope="module")
def noise(sample: SampleData) -> bytes:
    """The seeded 64 MiB file's bytes, regenerated the way the seed wrote them."""
    rng = random.Random(BIG_FILE_SEED)
    data = b"".join(rng.randbytes(MiB) for _ in range(BIG_FILE_SIZE // MiB))
    assert hashlib.sha256(data).hexdigest() == sample.sha256[NOISE_KEY]
    return data


def shown_paths(sample: SampleData, folder: str) -> dict[str, int]:
    """Every file under ``folder`` as the mount shows it, relative to it, with its size: an
    item with one file is that file; an item with several is a directory of them."""
    per_item: dict[str, int] = {}
    for key in sample.files:
        per_item[key.rsplit("/", 1)[0]] = per_item.get(key.rsplit("/", 1)[0], 0) + 1
    shown = {}
    for key, size in sample.sizes.items():
        if not key.startswith(folder + "/"):
            continue
        item = key.rsplit("/", 1)[0]
        path = key if per_item[item] > 1 else item
        shown[path.removeprefix(folder + "/")] = size
    return shown


def test_open_reads_text_and_bytes_with_seek_and_tell(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    with mounted(tmp_path, base_config, notebook_data(sample)) as m:
        notes = m.mountpoint / "data/experiment/notes"
        with open(notes / "résumé des données.txt", encoding="utf-8") as f:
            text = f.read()
        assert text.startswith("Résumé des données de la journée")
        assert (
            hashlib.sha256(text.encode()).hexdigest()
            == sample.sha256["experiment/notes/résumé des données.txt/résumé des données.txt"]
        )
        with open(notes / "day1.txt") as f:
            assert [line.rstrip("\n") for line in f][:2] == ["Day 1", "====="]
        with open(m.mountpoint / "data/experiment/raw/scan-001/scan-001.raw", "rb") as f:
            f.seek(-16, os.SEEK_END)
            assert f.tell() == 64 * 64 * 16 * 2 - 16
            tail = f.read()
            f.seek(0)
            whole = f.read()
        assert len(tail) == 16 and whole.endswith(tail)
        assert (
            hashlib.sha256(whole).hexdigest()
            == sample.sha256["experiment/raw/scan-001/scan-001.raw"]
        )


def test_os_walk_finds_every_seeded_file_with_its_size(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    want = shown_paths(sample, "experiment")
    assert len(want) == 8  # README, 3 notes, the CSV, the 64 MiB file, scan-001's two files
    with mounted(tmp_path, base_config, notebook_data(sample)) as m:
        top = m.mountpoint / "data/experiment"
        found = {}
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                path = Path(dirpath) / name
                found[str(path.relative_to(top))] = path.stat().st_size
        assert found == want
        assert {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()} == set(want)


def test_csv_module_parses_measurements_csv(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData
) -> None:
    expected = list(csv.DictReader(io.StringIO(measurements_csv().decode())))
    with mounted(tmp_path, base_config, notebook_data(sample)) as m:
        with open(m.mountpoint / "data/experiment/raw/measurements.csv", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        assert reader.fieldnames == [
            "timestamp",
            "station",
            "temperature_c",
            "pressure_kpa",
            "humidity_pct",
            "wind_m_s",
        ]
        assert len(rows) == CSV_ROWS
        assert rows == expected
        by_station: dict[str, list[float]] = {}
        for row in rows:
            by_station.setdefault(row["station"], []).append(float(row["temperature_c"]))
        assert sorted(by_station) == ["ST-01", "ST-02", "ST-03"]
        assert all(len(temps) == CSV_ROWS // 3 for temps in by_station.values())
        assert statistics.fmean(float(r["humidity_pct"]) for r in rows) == pytest.approx(
            statistics.fmean(float(r["humidity_pct"]) for r in expected)
        )


def test_mmap_of_64mib_file_reads_right_bytes_at_200_random_offsets(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, noise: bytes
) -> None:
    rng = random.Random(200)
    size = BIG_FILE_SIZE
    spans = [(0, 1), (size - 1, 1), (BLOCK - 10, 20), (size - 4096, 4096)]
    spans += [(offset, rng.randrange(1, 8192)) for offset in rng.sample(range(size), 196)]
    with mounted(tmp_path, base_config, notebook_data(sample)) as m:
        path = m.mountpoint / "data/experiment/raw/noise-64MiB.bin"
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert len(mm) == size
            for offset, length in spans:
                assert mm[offset : offset + length] == noise[offset : offset + length], offset
            assert mm.find(noise[40 * MiB : 40 * MiB + 64]) == 40 * MiB
            assert hashlib.sha256(mm).hexdigest() == sample.sha256[NOISE_KEY]


def test_first_access_through_mmap_fetches_only_the_faulted_blocks(
    tmp_path: Path,
    base_config: dict[str, Any],
    sample: SampleData,
    girder: LocalGirder,
    noise: bytes,
) -> None:
    # The file is not in the (fresh) store: each page fault becomes a FUSE read, which fetches
    # from where it reads, within the block it falls in, and only that.
    blocks = [1, 8, 15]
    offsets = [block * BLOCK + BLOCK // 2 + 123 for block in blocks]
    with mounted(tmp_path, base_config, notebook_data(sample)) as m:
        path = m.mountpoint / "data/experiment/raw/noise-64MiB.bin"
        girder.reset_stats()
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for offset in offsets:
                assert mm[offset] == noise[offset]
                assert mm[offset : offset + 4096] == noise[offset : offset + 4096]
            # A read returns as soon as its own bytes are in: the rest of its block may still be
            # arriving when the server's counters are read. Wait for the requests to end.
            deadline = time.monotonic() + 30
            while True:
                stats = girder.stats()
                fetched = sorted(
                    tuple(int(n) for n in r["range"].removeprefix("bytes=").split("-"))
                    for r in stats["ranges"]
                    if r["path"].endswith("/download")
                )
                if len(fetched) >= len(blocks) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            # One request per fault, from the page the kernel asked for (a random read waits for
            # no bytes before its own), of RANDOM_SPAN bytes or the kernel's read if longer, and
            # never past the end of that block.
            assert len(fetched) == len(blocks), fetched
            for (first, last), block, offset in zip(fetched, blocks, offsets, strict=True):
                block_end = (block + 1) * BLOCK
                assert block * BLOCK <= first <= offset < offset + 4096 <= last + 1 <= block_end
                assert last + 1 - first >= min(RANDOM_SPAN, block_end - first)
            assert stats["download_bytes"] == sum(last + 1 - first for first, last in fetched)
            # The rest comes on demand, through the same mapping.
            assert hashlib.sha256(mm).hexdigest() == sample.sha256[NOISE_KEY]
        assert m.status()["locks"] == []
