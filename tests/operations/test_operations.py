"""The pyfuse3 handlers called directly (no kernel): real tree, real store and index, and a
provider serving bytes from memory so each test controls what the 'remote' holds."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.lowlevel
from wtfs_index.owner import Owner

from tests.support.memprovider import MemoryProvider
from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.manager import RANDOM_SPAN, CacheManager, CacheSettings
from wtfs.cache.store import Store
from wtfs.config import Config, MountConfig
from wtfs.fuse.operations import Operations
from wtfs.namespace.tree import DirNode, FileNode, Tree
from wtfs.providers.base import ProviderSettings, Source
from wtfs.providers.registry import ProviderRegistry
from wtfs.providers.retry import RetryPolicy

MiB = 1024 * 1024


@pytest.fixture
async def ops(tmp_path: Path) -> AsyncIterator[Operations]:
    MemoryProvider.reset()
    rng = random.Random(7)
    MemoryProvider.blobs["mem://big"] = rng.randbytes(10 * MiB + 123)
    MemoryProvider.blobs["mem://small"] = b"hello, wtfs\n"
    tree = Tree(girder=None)
    root = tree.root
    assert root.children is not None
    data = DirNode(tree._next(), "data", 0, root, children={})
    root.children["data"] = tree._register(data)
    assert data.children is not None
    for name, url in (("big.bin", "mem://big"), ("small.txt", "mem://small")):
        size = len(MemoryProvider.blobs[url])
        node = FileNode(tree._next(), name, 1_700_000_000 * 10**9, data, size, f"item-{name}",
                        f"key-{name}", Source(url, size, label=name))  # fmt: skip
        data.children[name] = tree._register(node)
    broken = FileNode(tree._next(), "broken", 0, data, 10, "item-broken", "key-broken",
                      Source("mem://broken", 10), error="meta.size missing")  # fmt: skip
    data.children["broken"] = tree._register(broken)
    store = Store(tmp_path / "store")
    store.prepare()
    index = store.open_index()
    owner = Owner.current("test")
    index.register_owner(owner, "mount")
    registry = ProviderRegistry(ProviderSettings(), None, classes={"mem": MemoryProvider})
    settings = dataclasses.replace(
        CacheSettings.from_config(Config(private_storage_capacity=64 * MiB, block_size=MiB)),
        retry=RetryPolicy(attempts=2, base_delay=0.01),
    )
    manager = CacheManager(store, AsyncIndex(index), owner, registry, settings, session_id="s1")
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield Operations(tree, manager, MountConfig(uid=1234, gid=5678, umask=0o022))
        nursery.cancel_scope.cancel()
    index.close()


async def lookup_path(ops: Operations, *names: str) -> pyfuse3.EntryAttributes:
    inode = pyfuse3.ROOT_INODE
    attr = None
    for name in names:
        attr = await ops.lookup(inode, name.encode())
        inode = attr.st_ino
    assert attr is not None
    return attr


async def test_lookup_and_getattr_come_from_the_tree(ops: Operations) -> None:
    attr = await lookup_path(ops, "data", "big.bin")
    assert stat.S_ISREG(attr.st_mode) and attr.st_mode & 0o777 == 0o444
    assert attr.st_size == 10 * MiB + 123
    assert (attr.st_uid, attr.st_gid) == (1234, 5678)
    assert attr.st_mtime_ns == 1_700_000_000 * 10**9
    assert attr.entry_timeout == attr.attr_timeout == 300
    again = await ops.getattr(attr.st_ino)
    assert again.st_size == attr.st_size
    directory = await lookup_path(ops, "data")
    assert stat.S_ISDIR(directory.st_mode) and directory.st_mode & 0o777 == 0o555


async def test_missing_name_is_enoent(ops: Operations) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await lookup_path(ops, "data", "nope")
    assert info.value.errno == errno.ENOENT


async def test_readdir_lists_children_and_resumes_from_offset(ops: Operations) -> None:
    data = await lookup_path(ops, "data")
    fh = await ops.opendir(data.st_ino)
    seen: list[tuple[bytes, int]] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        seen.append((name, next_id))
        return len(seen) < 2  # a full buffer after two entries

    original = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = reply
    try:
        await ops.readdir(fh, 0, None)
        assert [n for n, _ in seen] == [b"big.bin", b"small.txt"]
        seen.clear()
        await ops.readdir(fh, 2, None)
    finally:
        pyfuse3.readdir_reply = original
    assert [n for n, _ in seen] == [b"broken"]


async def test_read_fetches_only_the_blocks_it_needs_then_serves_from_store(
    ops: Operations,
) -> None:
    attr = await lookup_path(ops, "data", "big.bin")
    info = await ops.open(attr.st_ino, os.O_RDONLY)
    blob = MemoryProvider.blobs["mem://big"]
    offset = 7 * MiB + 1000
    assert await ops.read(info.fh, offset, 4096) == blob[offset : offset + 4096]
    # One request, from the page the read needs (not the block's start), of RANDOM_SPAN bytes
    # (not the rest of the block).
    page = offset - offset % 4096
    assert MemoryProvider.requests == [("mem://big", page, page + RANDOM_SPAN)]
    assert await ops.read(info.fh, offset + 10, 100) == blob[offset + 10 : offset + 110]
    assert len(MemoryProvider.requests) == 1  # served from the store
    await ops.release(info.fh)


async def test_sequential_read_of_whole_file_is_correct_and_marks_it_complete(
    ops: Operations,
) -> None:
    attr = await lookup_path(ops, "data", "big.bin")
    info = await ops.open(attr.st_ino, os.O_RDONLY)
    assert info.keep_cache is False
    chunks = []
    offset = 0
    while chunk := await ops.read(info.fh, offset, 128 * 1024):
        chunks.append(bytes(chunk))  # a view of the reply buffer: pyfuse3 sends it at once
        offset += len(chunk)
    assert b"".join(chunks) == MemoryProvider.blobs["mem://big"]
    await ops.release(info.fh)
    # Sequential reading asks for long runs, not one request per block.
    assert len(MemoryProvider.requests) <= 3
    again = await ops.open(attr.st_ino, os.O_RDONLY)
    assert again.keep_cache is True  # complete files may stay in the kernel's page cache
    await ops.release(again.fh)


async def test_concurrent_readers_share_one_download(ops: Operations) -> None:
    attr = await lookup_path(ops, "data", "big.bin")
    blob = MemoryProvider.blobs["mem://big"]
    results: dict[int, bytes] = {}

    async def reader(n: int) -> None:
        info = await ops.open(attr.st_ino, os.O_RDONLY)
        results[n] = await ops.read(info.fh, 3 * MiB, MiB)
        await ops.release(info.fh)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(reader, n)
    assert all(r == blob[3 * MiB : 4 * MiB] for r in results.values())
    assert MemoryProvider.requests == [("mem://big", 3 * MiB, 4 * MiB)]


async def test_open_locks_and_release_unlocks(ops: Operations) -> None:
    attr = await lookup_path(ops, "data", "small.txt")
    index = ops.manager.index.sync
    info = await ops.open(attr.st_ino, os.O_RDONLY)
    assert index.lock_count("item-small.txt") == 1
    assert await ops.read(info.fh, 0, 100) == b"hello, wtfs\n"
    await ops.release(info.fh)
    assert index.lock_count("item-small.txt") == 0


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC])
async def test_open_for_writing_is_erofs(ops: Operations, flags: int) -> None:
    attr = await lookup_path(ops, "data", "small.txt")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(attr.st_ino, flags)
    assert info.value.errno == errno.EROFS


async def test_every_writing_handler_is_erofs(ops: Operations) -> None:
    data = await lookup_path(ops, "data")
    calls = [
        ops.mkdir(data.st_ino, b"d", 0o755, None),
        ops.unlink(data.st_ino, b"small.txt", None),
        ops.rmdir(data.st_ino, b"x", None),
        ops.create(data.st_ino, b"n", 0o644, os.O_WRONLY, None),
        ops.rename(data.st_ino, b"small.txt", data.st_ino, b"y", 0, None),
        ops.setattr(data.st_ino, None, None, None, None),
        ops.write(1, 0, b"x"),
        ops.symlink(data.st_ino, b"l", b"t", None),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.EROFS


async def test_unfetchable_item_fails_open_with_eio_and_records_one_failed_transfer(
    ops: Operations,
) -> None:
    attr = await lookup_path(ops, "data", "broken")
    for _ in range(3):
        with pytest.raises(pyfuse3.FUSEError) as err:
            await ops.open(attr.st_ino, os.O_RDONLY)
        assert err.value.errno == errno.EIO
    rows = ops.manager.index.sync.transfers()
    assert [(r.status, r.error) for r in rows] == [(4, "meta.size missing")]
    assert ops.manager.index.sync.lock_count("item-broken") == 0
