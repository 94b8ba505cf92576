from pathlib import Path

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
