"""Prometheus metrics of one server, in a registry of its own (so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "setpoint_request_duration_seconds",
            "API request latency by verb, resource and response code (watch: time to first byte).",
            ["verb", "group", "resource", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.watchers = Gauge(
            "setpoint_watchers", "Open client watches.", registry=self.registry
        )
        self.watch_events = Counter(
            "setpoint_watch_cache_events_total", "Events applied to the watch cache.",
            registry=self.registry,
        )
        self.watchers_cut = Counter(
            "setpoint_watchers_cut_off_total", "Watches closed because the client fell behind.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "setpoint_store_write_batch_size", "Writes committed together in one store transaction.",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.store_revision = Gauge(
            "setpoint_store_revision", "Newest revision seen by the watch cache.", registry=self.registry
        )

    def track_revision(self, fn: Callable[[], float]) -> None:
        self.store_revision.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
