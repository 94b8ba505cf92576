"""Transfers as records and `wtfs status`: live progress, failures with causes, retry, several
mounts, seed 001's field names, Prometheus metrics."""

from __future__ import annotations

import errno
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder
from wtfs_devgirder.seed import SampleData

from tests.support.bigdata import BigFile, MiB
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.mounts import ROOT, mounted, run_wtfs, write_config

SEED_001 = ROOT / "tests" / "fixtures" / "seed001"  # seed 001's example records, as JSON


def session_of(*files: BigFile) -> list[dict[str, str]]:
    return [{"itemId": f.item_id, "mountPath": f"/{f.name}"} for f in files]


def seed_transfer_example() -> dict[str, Any]:
    """The example response of seed 001's `GET /dm/transfer`."""
    examples: list[dict[str, Any]] = json.loads(
        (SEED_001 / "transfer_list_response.json").read_text()
    )
    return examples[0]


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s")


def test_status_json_uses_seed_001_field_names_and_codes(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    example = seed_transfer_example()
    f = big["s05.bin"]
    with mounted(tmp_path, base_config, session_of(f)) as m:
        (m.mountpoint / f.name).read_bytes()
        transfers = m.status("--all")["transfers"]
    assert transfers
    for record in transfers:
        assert set(example) <= set(record), set(example) - set(record)
        assert record["_modelType"] == example["_modelType"] == "transfer"
        assert record["status"] == example["status"] == 3  # DONE
        assert isinstance(record["size"], int) and isinstance(record["transferred"], int)
        assert record["startTime"] and record["endTime"]


def test_slow_transfer_shows_transferring_with_growing_bytes_then_done(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile], girder: LocalGirder
) -> None:
    f = big["p15.bin"]  # 64 MiB at 8 MiB/s: about 8 s
    girder.throttle(8 * MiB)
    try:
        with mounted(tmp_path, base_config, session_of(f)) as m:
            reader = threading.Thread(target=(m.mountpoint / f.name).read_bytes)
            reader.start()

            def transferring() -> list[dict[str, Any]]:
                return [t for t in m.status()["transfers"] if t["status"] == 2 and t["transferred"]]

            first = wait_for(transferring)[0]
            time.sleep(1.0)
            second = next(t for t in m.status()["transfers"] if t["_id"] == first["_id"])
            assert second["status"] == 2 and second["transferred"] > first["transferred"]
            assert second["rate"] > 0
            reader.join(timeout=60)
            done = next(t for t in m.status()["transfers"] if t["_id"] == first["_id"])
            assert done["status"] == 3 and done["endTime"] is not None
            assert done["transferred"] == done["size"]
    finally:
        girder.throttle(None)


def test_failed_transfer_keeps_its_cause_and_retry_brings_it_to_done(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile], girder: LocalGirder
) -> None:
    f = big["s06.bin"]
    with FaultProxy(girder.api_url) as proxy:
        proxy.add_rule(match=lambda r: "/download" in r.path, action=Fault.status(500))
        config = {**base_config, "girder": {**base_config["girder"], "api_url": proxy.base},
                  "network": {"retry_attempts": 2, "retry_base_delay": 0.01,
                              "read_deadline": 10}}  # fmt: skip
        with mounted(tmp_path, config, session_of(f)) as m:
            with pytest.raises(OSError) as info:
                (m.mountpoint / f.name).read_bytes()
            assert info.value.errno == 5  # EIO
            status = m.wtfs("status", "--json", check=False)
            assert status.returncode == 3  # a FAILED transfer makes status exit non-zero
            failed = [t for t in json.loads(status.stdout)["transfers"] if t["status"] == 4]
            assert failed and "500" in failed[0]["error"]
            assert failed[0]["attempts"] == 2
            proxy.clear_rules()  # the server is fixed
            out = m.wtfs("retry", "--failed").stdout
            assert f"transfer {failed[0]['_id']}" in out and "re-queued" in out

            def done() -> bool:
                record = next(t for t in m.status()["transfers"] if t["_id"] == failed[0]["_id"])
                return bool(record["status"] == 3)

            wait_for(done)
            assert m.wtfs("status", check=False).returncode == 0
            assert hashlib.sha256((m.mountpoint / f.name).read_bytes()).hexdigest() == f.sha256


def test_status_shows_two_mounts_sharing_a_store_and_history_with_none(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    a, b = big["s07.bin"], big["s08.bin"]
    with mounted(tmp_path / "a", base_config, session_of(a)) as ma, \
         mounted(tmp_path / "b", base_config, session_of(b)) as mb:  # fmt: skip
        (ma.mountpoint / a.name).read_bytes()
        (mb.mountpoint / b.name).read_bytes()
        status = ma.status("--all")
        assert {m["mountpoint"] for m in status["mounts"]} == {
            str(ma.mountpoint),
            str(mb.mountpoint),
        }
        table = ma.wtfs("status", "--all").stdout
        assert str(ma.mountpoint) in table.replace("\n", "") or "mounts" in table
    config = write_config(tmp_path / "after.yaml", base_config)
    result = run_wtfs(["-c", str(config), "status", "--all", "--json"], {})
    after = json.loads(result.stdout)
    assert after["mounts"] == []
    assert after["store"]["usage"] >= a.size + b.size
    assert {t["itemId"] for t in after["transfers"]} >= {a.item_id, b.item_id}
    assert after["totals"]["misses"] >= 2  # the finished mounts' counters are kept
    assert "no mount running" in run_wtfs(["-c", str(config), "status"], {}).stdout


def test_status_into_a_pipe_or_a_file_keeps_every_column_and_the_whole_error(
    tmp_path: Path, base_config: dict[str, Any], sample: SampleData, girder: LocalGirder
) -> None:
    """rich cut the table at 80 columns off a terminal: rate, ETA and error were gone."""
    client = girder.client()
    collection = client.createCollection(f"piped-status-{time.monotonic_ns()}", public=True)
    folder = client.createFolder(collection["_id"], "items", parentType="collection")
    name = "a-name-long-enough-to-overflow-any-terminal-" + "x" * 100 + ".bin"
    item = client.createItem(folder["_id"], name)
    client.addMetadataToItem(item["_id"], {"phys_path": f"nosuch://host/{name}", "size": 100})
    data_set = [
        {"itemId": item["_id"], "mountPath": f"/{name}"},  # the error names the file
        {"itemId": sample.items["experiment/raw/measurements.csv"], "mountPath": "/m.csv"},
    ]
    with mounted(tmp_path, base_config, data_set) as m:
        (m.mountpoint / "m.csv").read_bytes()
        with pytest.raises(OSError) as info:
            (m.mountpoint / name).read_bytes()
        assert info.value.errno == errno.EIO
        failed = [t for t in m.status()["transfers"] if t["status"] == 4]
        assert failed  # one per read the kernel tried
        error = failed[0]["error"]
        assert name in error and len(error) > 200
        env = {**m.env, "COLUMNS": "80"}
        piped = run_wtfs(["-c", str(m.config_path), "status"], env, check=False)
        saved = tmp_path / "status.txt"
        with open(saved, "w") as out:
            to_file = subprocess.run(
                [sys.executable, "-m", "wtfs", "-c", str(m.config_path), "status"],
                stdout=out, stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=60,
            )  # fmt: skip
        outputs = [(piped.returncode, piped.stdout), (to_file.returncode, saved.read_text())]
        for code, text in outputs:
            assert code == 3  # a FAILED transfer is listed
            lines = text.splitlines()
            header = lines[lines.index("transfers") + 1]
            assert header.split() == ["id", "path", "status", "progress", "size", "rate", "ETA",
                                      "error"]  # fmt: skip
            rows = [line for line in lines if f"/{name}" in line]
            assert len(rows) == len(failed)
            assert all("FAILED" in row and row.endswith(error) for row in rows), rows
            [done] = [line for line in lines if "/m.csv" in line and "DONE" in line]
            assert "100%" in done and done.rstrip().endswith("/s"), done  # the rate is there
            assert str(m.mountpoint) in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]  # fmt: skip
    assert values, f"{name} not in metrics"
    return sum(values)


def test_metrics_endpoint_counts_reads(
    tmp_path: Path, base_config: dict[str, Any], big: dict[str, BigFile]
) -> None:
    f = big["s09.bin"]
    port = free_port()
    with mounted(tmp_path, {**base_config, "metrics_port": port}, session_of(f)) as m:
        url = f"http://127.0.0.1:{port}/metrics"
        before = httpx.get(url).text
        assert "# TYPE wtfs_read_misses_total counter" in before
        assert metric(before, "wtfs_fetched_bytes_total") == 0
        with open(m.mountpoint / f.name, "rb") as handle:
            handle.read()
            during = httpx.get(url).text
            assert metric(during, "wtfs_locks") == 1
        after = httpx.get(url).text
        assert metric(after, "wtfs_fetched_bytes_total") == f.size
        assert metric(after, "wtfs_read_misses_total") >= 1
        assert metric(after, "wtfs_store_usage_bytes") == f.size
        assert metric(after, "wtfs_store_capacity_bytes") == 1024 * MiB
        assert 'wtfs_transfers{status="DONE"}' in after
