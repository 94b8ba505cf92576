"""Prometheus text metrics on 127.0.0.1:`metrics_port`, served by a trio task (no thread).

Per-process counters come from the mount's `Stats`; store-wide gauges (usage, capacity, live
locks, transfers by status) are read from the shared index at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from wtfs_index import Index, TransferStatus

from wtfs.cache.stats import Stats

log = logging.getLogger(__name__)

MAX_REQUEST = 8192


class WtfsCollector(Collector):
    def __init__(self, stats: Stats, index: Index, capacity: int, mountpoint: str) -> None:
        self.stats = stats
        self.index = index
        self.capacity = capacity
        self.mountpoint = mountpoint

    def collect(self) -> Iterator[Metric]:
        labels = ["mountpoint"]
        here = [self.mountpoint]
        s = self.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            metric = CounterMetricFamily(name, doc, labels=labels)
            metric.add_metric(here, value)
            return metric

        yield counter("wtfs_read_hits", "Reads served entirely from the private store", s.hits)
        yield counter("wtfs_read_misses", "Reads that had to wait for a fetch", s.misses)
        yield counter("wtfs_served_bytes", "Bytes returned to readers", s.bytes_from_store)
        yield counter("wtfs_fetched_bytes", "Bytes fetched from the network", s.bytes_from_network)
        yield counter("wtfs_evictions", "Entries evicted by this process's GC", s.evictions)
        yield counter("wtfs_evicted_bytes", "Bytes evicted by this process's GC", s.evicted_bytes)
        usage = self.index.usage()
        yield GaugeMetricFamily("wtfs_store_usage_bytes", "Bytes held or reserved in the store",
                                value=usage)  # fmt: skip
        yield GaugeMetricFamily("wtfs_store_capacity_bytes", "Store capacity", value=self.capacity)
        locks = self.index.lock_total()
        yield GaugeMetricFamily("wtfs_locks", "Live locks in the store (all mounts)", value=locks)
        by_status = GaugeMetricFamily("wtfs_transfers", "Transfer records by status",
                                      labels=["status"])  # fmt: skip
        counts = self.index.transfer_counts()
        for status in TransferStatus:
            by_status.add_metric([status.name], counts.get(int(status), 0))
        yield by_status
        moved = self.index.transferred_total()
        yield GaugeMetricFamily("wtfs_transferred_bytes", "Bytes moved by recorded transfers",
                                value=moved)  # fmt: skip


def registry_of(collector: WtfsCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return bytes(generate_latest(registry))


async def serve_metrics(
    port: int,
    make_registry: Callable[[], CollectorRegistry],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer `GET /metrics` (any path) on 127.0.0.1:port. Reports the bound port."""
    registry = make_registry()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(10):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                if not request.startswith(b"GET "):
                    await stream.send_all(
                        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
                    )
                    return
                body = await trio.to_thread.run_sync(render, registry)
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(head.encode() + body)

    await trio.serve_listeners(handle, listeners)
