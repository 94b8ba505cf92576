"""Local provider: exact bytes inside the allowed roots, and a fence that holds outside them."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from tests.support.sinks import MemorySink
from wtfs.errors import AccessDenied, ConfigError, NotFound, SizeMismatch
from wtfs.providers.base import ProviderSettings, Source
from wtfs.providers.local import CHUNK, LocalProvider

SIZE = 3 * 1024 * 1024 + 777


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    return r


@pytest.fixture
def blob(root: Path) -> bytes:
    data = random.Random(3).randbytes(SIZE)
    (root / "sub" / "data.bin").write_bytes(data)
    return data


def local(*roots: Path) -> LocalProvider:
    return LocalProvider(ProviderSettings(allowed_local_roots=tuple(str(r) for r in roots)))


async def test_full_file_and_random_ranges_are_exact(root: Path, blob: bytes) -> None:
    p = local(root)
    source = Source(f"local://{root}/sub/data.bin", size=SIZE)
    assert await p.size(source) == SIZE
    rng = random.Random(5)
    ranges = [(0, SIZE), (0, 1), (SIZE - 1, SIZE), (CHUNK - 1, CHUNK + 1)]
    ranges += [(a, rng.randrange(a + 1, SIZE + 1)) for a in rng.sample(range(SIZE), 30)]
    for start, end in ranges:
        sink = MemorySink(start, end)
        await p.fetch(source, start, end, sink)
        assert hashlib.sha256(sink.data).digest() == hashlib.sha256(blob[start:end]).digest()
        assert all(n <= CHUNK for _, n in sink.writes)


@pytest.mark.parametrize(
    "url",
    [
        "file://{root}/sub/data.bin",
        "local:{root}/sub/data.bin",
        "file://localhost{root}/sub/data.bin",
    ],
)
async def test_every_spelling_of_a_local_url_works(root: Path, blob: bytes, url: str) -> None:
    sink = MemorySink(10, 20)
    await local(root).fetch(Source(url.format(root=root), size=SIZE), 10, 20, sink)
    assert sink.data == blob[10:20]


async def test_local_paths_are_verbatim_and_file_urls_percent_decoded(root: Path) -> None:
    (root / "100% sure?#.txt").write_bytes(b"odd name")
    p = local(root)
    sink = MemorySink(0)
    await p.fetch(Source(f"local://{root}/100% sure?#.txt"), 0, 8, sink)
    assert sink.data == b"odd name"
    sink = MemorySink(0)
    await p.fetch(Source(f"file://{root}/100%25%20sure%3F%23.txt"), 0, 8, sink)
    assert sink.data == b"odd name"


async def test_symlinks_that_stay_inside_a_root_are_followed(root: Path, blob: bytes) -> None:
    (root / "alias.bin").symlink_to(root / "sub" / "data.bin")
    sink = MemorySink(0)
    await local(root).fetch(Source(f"local://{root}/alias.bin", size=SIZE), 0, 100, sink)
    assert sink.data == blob[:100]


async def test_a_root_given_through_a_symlink_works(
    tmp_path: Path, root: Path, blob: bytes
) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root)
    sink = MemorySink(0)
    await local(link).fetch(Source(f"local://{link}/sub/data.bin"), 0, 100, sink)
    assert sink.data == blob[:100]


def refusals(tmp_path: Path, root: Path) -> dict[str, tuple[str, LocalProvider]]:
    """Every way out of the fence we know of: url -> provider that must refuse it."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret outside the root")
    (root / "escape.bin").symlink_to(outside)
    (root / "sub" / "deep").mkdir()
    (root / "sub" / "deep" / "up").symlink_to("../../..")
    sibling = tmp_path / "rootx"  # shares the root's name as a string prefix
    sibling.mkdir()
    (sibling / "f.bin").write_bytes(b"not yours")
    os.mkfifo(root / "fifo")
    fenced = local(root)
    return {
        "shadow": ("file:///etc/shadow", fenced),
        "passwd": ("local:///etc/passwd", fenced),
        "dotdot": (f"local://{root}/../outside.bin", fenced),
        "dotdot-file-url": (f"file://{root}/sub/../../outside.bin", fenced),
        "symlink-out": (f"local://{root}/escape.bin", fenced),
        "symlinked-dir-out": (f"local://{root}/sub/deep/up/outside.bin", fenced),
        "prefix-trick": (f"local://{sibling}/f.bin", fenced),
        "directory": (f"local://{root}/sub", fenced),
        "root-itself": (f"local://{root}", fenced),
        "fifo": (f"local://{root}/fifo", fenced),
        "relative": ("local://sub/data.bin", fenced),
        "nul-byte": (f"local://{root}/sub/data.bin\x00.txt", fenced),
        "remote-host": (f"file://otherhost{root}/sub/data.bin", fenced),
        "no-roots": (f"local://{root}/sub/data.bin", LocalProvider(ProviderSettings())),
    }


CASES = [
    "shadow",
    "passwd",
    "dotdot",
    "dotdot-file-url",
    "symlink-out",
    "symlinked-dir-out",
    "prefix-trick",
    "directory",
    "root-itself",
    "fifo",
    "relative",
    "nul-byte",
    "remote-host",
    "no-roots",
]


@pytest.mark.parametrize("case", CASES)
async def test_paths_outside_the_fence_are_refused_without_a_byte(
    tmp_path: Path, root: Path, blob: bytes, case: str
) -> None:
    url, p = refusals(tmp_path, root)[case]
    sink = MemorySink(0)
    with pytest.raises(AccessDenied) as info:
        await p.fetch(Source(url), 0, 10, sink)
    assert sink.received == 0 and sink.writes == []
    # The cause names the path, never the contents.
    assert "secret" not in info.value.cause and "not yours" not in info.value.cause
    with pytest.raises(AccessDenied):
        await p.size(Source(url))


async def test_a_missing_file_is_not_found_inside_and_refused_outside(
    tmp_path: Path, root: Path
) -> None:
    p = local(root)
    with pytest.raises(NotFound):
        await p.fetch(Source(f"local://{root}/nope.bin"), 0, 1, MemorySink(0))
    # Outside the fence, existence is nobody's business.
    with pytest.raises(AccessDenied):
        await p.fetch(Source(f"local://{tmp_path}/nope.bin"), 0, 1, MemorySink(0))


async def test_a_size_mismatch_is_refused_before_any_byte(root: Path, blob: bytes) -> None:
    p = local(root)
    sink = MemorySink(0)
    with pytest.raises(SizeMismatch, match=f"{SIZE} bytes"):
        await p.fetch(Source(f"local://{root}/sub/data.bin", size=SIZE + 1), 0, 10, sink)
    with pytest.raises(SizeMismatch):
        await p.fetch(Source(f"local://{root}/sub/data.bin"), SIZE - 5, SIZE + 5, sink)
    assert sink.received == 0


def test_relative_roots_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        LocalProvider(ProviderSettings(allowed_local_roots=("data",)))


@pytest.mark.parametrize("via", ["final-component", "directory"])
async def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret")
    p = local(root)
    if via == "final-component":
        (root / "late.bin").symlink_to(outside / "secret.bin")
        url = f"local://{root}/late.bin"
    else:
        (root / "late-dir").symlink_to(outside)
        url = f"local://{root}/late-dir/secret.bin"
    # Pretend the check ran before the symlink appeared: resolution sees a plain path.
    monkeypatch.setattr(os.path, "realpath", lambda path: os.path.normpath(path))
    sink = MemorySink(0)
    with pytest.raises(AccessDenied, match="changed while being opened"):
        await p.fetch(Source(url), 0, 6, sink)
    assert sink.received == 0
