"""A sorted set of half-open byte ranges [start, end), kept merged (rclone's `Ranges`)."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator


class Ranges:
    __slots__ = ("_ends", "_starts", "gen")

    def __init__(self, ranges: Iterable[tuple[int, int]] = (), gen: int = 0) -> None:
        #: the entry's generation these ranges were read at (the index counts every change of
        #: an entry's ranges): of two answers, the later one is the one with the higher `gen`
        self.gen = gen
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.insert(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ranges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Ranges({list(self)!r})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def insert(self, start: int, end: int) -> None:
        if end <= start:
            return
        # First range that could touch [start, end): its end >= start.
        i = bisect.bisect_left(self._ends, start)
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            start = min(start, self._starts[j])
            end = max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        kept: list[tuple[int, int]] = []
        for s, e in self:
            if e <= start or s >= end:
                kept.append((s, e))
                continue
            if s < start:
                kept.append((s, start))
            if e > end:
                kept.append((end, e))
        self._starts = [s for s, _ in kept]
        self._ends = [e for _, e in kept]

    def present(self, start: int, end: int) -> bool:
        """Whether all of [start, end) is held."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def find_missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not held, in order."""
        missing: list[tuple[int, int]] = []
        pos = start
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if e <= pos:
                i += 1
                continue
            if s >= end:
                break
            if s > pos:
                missing.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            missing.append((pos, end))
        return missing

    def overlap(self, start: int, end: int) -> int:
        """How many bytes of [start, end) are held."""
        return (end - start) - sum(e - s for s, e in self.find_missing(start, end))

    def to_json(self) -> str:
        return json.dumps([[s, e] for s, e in self])

    @classmethod
    def from_json(cls, text: str | None, gen: int = 0) -> Ranges:
        return cls(((int(s), int(e)) for s, e in json.loads(text or "[]")), gen)
