"""Girder names → POSIX names: deterministic, collision-free, every object reachable.

Girder accepts names POSIX cannot show (`a/b`, `.`, `..`, control characters, > 255 bytes) and
two children with one name. The mapping, documented in the README:

1. `/` and control characters (U+0000–U+001F, U+007F) become `%XX` (`a/b` → `a%2Fb`); a name
   that already reads like an escape and collides with one is handled by rule 4.
2. `.` → `%2E`, `..` → `%2E%2E`; an empty name → `%00`.
3. Names over 255 UTF-8 bytes are cut on a character boundary, keeping the extension, with
   `~` + 8 hex digits of the name's SHA-1 appended.
4. Children that still share a name: the one with the smallest Girder id keeps it, the others
   get `~` + the last 8 characters of their id before the extension (more if needed).
Names that differ only by Unicode normalisation (NFC vs NFD) are different byte strings on
Linux and are kept as they are: both are reachable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

NAME_MAX = 255


def escape_name(name: str) -> str:
    if name == "":
        return "%00"
    if name in (".", ".."):
        return "%2E" * len(name)
    out = []
    for char in name:
        code = ord(char)
        if char == "/" or code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate cannot be encoded as UTF-8
            out.append("\ufffd")
        else:
            out.append(char)
    return _fit(("".join(out)), name)


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0 or len(name) - dot > 16:
        return name, ""
    return name[:dot], name[dot:]


def _fit(name: str, original: str, extra: str = "") -> str:
    """Append `extra` before the extension; cut the stem until the whole is ≤ NAME_MAX bytes."""
    stem, ext = _split_ext(name)
    candidate = stem + extra + ext
    if len(candidate.encode()) <= NAME_MAX:
        return candidate
    digest = "~" + hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    budget = NAME_MAX - len((extra + digest + ext).encode())
    cut = stem.encode()[:budget].decode("utf-8", "ignore")
    return cut + digest + extra + ext


def posix_names(children: Sequence[tuple[str, str]]) -> list[str]:
    """[(girder name, girder id)] → POSIX names in the same order, unique within the list."""
    escaped = [escape_name(name) for name, _ in children]
    order = sorted(range(len(children)), key=lambda i: children[i][1])
    taken: set[str] = set()
    result = [""] * len(children)
    # First pass: the smallest id holding a name keeps it.
    for i in order:
        if escaped[i] not in taken:
            taken.add(escaped[i])
            result[i] = escaped[i]
    for i in order:
        if result[i]:
            continue
        object_id = children[i][1]
        for width in range(8, len(object_id) + 9):
            suffix = "~" + (
                object_id[-width:] if width <= len(object_id) else f"{object_id}{width}"
            )
            candidate = _fit(escaped[i], children[i][0], suffix)
            if candidate not in taken:
                break
        taken.add(candidate)
        result[i] = candidate
    for (name, _), mapped in zip(children, result, strict=True):
        if mapped != name:
            log.info("Girder name %r is shown as %r", name, mapped)
    return result
