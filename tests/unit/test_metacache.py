import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wtfs.girder.metacache import MetadataCache


def item(item_id: str, updated: str = "2026-01-01T00:00:00", size: int = 10) -> dict[str, object]:
    return {"_id": item_id, "updated": updated, "size": size}


def test_cached_file_lists_survive_a_reopen(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path)
    cache.put_files([(item("a"), [{"_id": "f1", "name": "x", "size": 10, "token": "secret"}])])
    cache.close()
    again = MetadataCache(tmp_path)
    assert again.get_files([item("a")]) == {"a": [{"_id": "f1", "name": "x", "size": 10}]}
    again.close()


def test_a_changed_item_is_not_answered_from_the_cache(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path)
    cache.put_files([(item("a"), [{"_id": "f1", "size": 10}]), (item("b"), [])])
    assert cache.get_files([item("a", updated="2026-02-02T00:00:00")]) == {}
    assert cache.get_files([item("a", size=11)]) == {}
    assert cache.get_files([item("b"), item("c")]) == {"b": []}
    cache.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (we are root), unmounted in teardown."""
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_cache_on_a_full_disk_keeps_nothing_and_raises_nothing(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = MetadataCache(small_fs / "metadata")
    filler = small_fs / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"x" * 65536)
            f.flush()
    files = [{"_id": f"f{n}", "name": "x" * 200, "size": n} for n in range(2000)]
    cache.put_files([(item(f"i{n}"), files) for n in range(20)])  # "database or disk is full"
    assert "file lists not kept" in caplog.text
    assert cache.get_files([item("i0")]) in ({}, {"i0": files})  # never a partial list
    cache.close()


def test_a_damaged_cache_is_opened_at_first_use_and_then_answers_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opened lazily (a Girder with the plugin never needs it): a damaged one fails at its first
    use, which says so in the log, answers nothing (the caller asks Girder) and keeps nothing."""
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "cache.db").write_bytes(b"not a database at all" * 100)
    cache = MetadataCache(tmp_path / "metadata")
    item = {"_id": "i1", "updated": "t", "size": 1}
    assert cache.get_files([item]) == {}
    cache.put_files([(item, [{"_id": "f1", "name": "a"}])])
    assert cache.get_files([item]) == {}
    assert "metadata cache" in caplog.text
    cache.close()
