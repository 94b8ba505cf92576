"""Per-process counters, flushed into the owner's row of the index (read by `wtfs status`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    bytes_from_store: int = 0
    bytes_from_network: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    refreshes: int = 0
    refresh_failures: int = 0

    def hit(self, n: int) -> None:
        self.hits += 1
        self.bytes_from_store += n

    def miss(self, n: int) -> None:
        self.misses += 1
        self.bytes_from_store += n

    def fetched(self, n: int) -> None:
        self.bytes_from_network += n

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
