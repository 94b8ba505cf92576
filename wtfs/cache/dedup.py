"""Content dedup: two sources with the same contents (a copied Girder item, the same file
uploaded twice) share one store file, and the second is served with no download.

Only files whose contents are known by a hash can be told equal: Girder's sha512 (shown by the
wtfs server plugin's listing, which a stock Girder's REST answers leave out) or a `meta.checksum`.
Without one there is no dedup.

When a new, empty entry is loaded and a complete, whole entry with the same hash and size is in
the store, its file is hard-linked as the new entry's file, then the index marks the new entry
complete (`Index.adopt_complete`). The link is made only where the new entry's file does not
exist yet (`os.link` never replaces): so no process can have the entry's file open on another
inode whose holes it would trust to be filled. Each entry keeps its own row, locks, atime and
eviction: evicting one unlinks its name, and the other's name keeps the bytes. A file shared
this way is never punched (`Store.punch_many`): its spans are the other entry's too.
"""

from __future__ import annotations

import contextlib
import logging
import os

import trio
from wtfs_index import EntryRow

from wtfs.cache.aindex import AsyncIndex
from wtfs.cache.store import Store
from wtfs.errors import WtfsError

log = logging.getLogger(__name__)


async def adopt(index: AsyncIndex, store: Store, row: EntryRow, owner_id: str) -> EntryRow | None:
    """Make the empty entry `row` complete by sharing the file of a complete entry with the
    same contents. None: no such entry, or it could not be shared (then nothing changed)."""
    if row.content_hash is None or row.complete or row.present or row.size == 0:
        return None
    try:
        donor = await index.run(index.sync.dedup_donor, row.content_hash, row.size, row.key)
    except WtfsError as exc:
        log.debug("%s: no dedup, the index did not answer: %s", row.path, exc.cause)
        return None
    if donor is None:
        return None
    target = store.path_of(row.file_name)
    linked = await trio.to_thread.run_sync(_link, store.path_of(donor.file_name), target)
    if not linked:
        return None
    try:
        adopted = await index.run(index.sync.adopt_complete, row.key, donor.key, owner_id)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink, target)
        raise
    if adopted is None:
        await trio.to_thread.run_sync(_unlink, target)
        return None
    log.info(
        "%s: the same contents as %s are in the store: shared its file, nothing downloaded",
        row.path, donor.path,
    )  # fmt: skip
    return adopted


def _link(source: os.PathLike[str] | str, target: os.PathLike[str] | str) -> bool:
    try:
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:  # the donor went meanwhile, the entry's file exists, no hard links
        log.debug("no dedup link %s -> %s: %s", target, source, exc)
        return False
    return True


def _unlink(target: os.PathLike[str] | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
