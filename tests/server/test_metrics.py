"""The request-latency histogram is setpoint's own (a bisect, no locks): scraped, it must read
exactly as prometheus-client's Histogram would, so dashboards and alerts see no difference."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from setpoint.server.metrics import LATENCY_BUCKETS, LoopHistogram


def _without_created(text: bytes) -> bytes:
    """prometheus-client adds a ``_created`` gauge per child; the loop histogram has none."""
    kept = text.split(b"\n# HELP setpoint_request_duration_seconds_created")[0]
    return kept.rstrip(b"\n") + b"\n"


def test_the_loop_histogram_exposes_what_prometheus_clients_would() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    args = ("setpoint_request_duration_seconds", "API request latency.", ["verb", "group", "resource", "code"])
    reference = Histogram(*args, buckets=LATENCY_BUCKETS, registry=theirs)
    histogram = LoopHistogram(*args, buckets=LATENCY_BUCKETS, registry=ours)
    rng = random.Random(7)
    for i in range(3000):
        labels = (rng.choice(["CREATE", "GET", "WATCH"]), "example.com", "widgets", rng.choice(["200", "201", "404"]))
        # Values on the bucket bounds too: a bound is inclusive ("le").
        value = LATENCY_BUCKETS[i % len(LATENCY_BUCKETS)] if i % 5 == 0 else rng.expovariate(50)
        reference.labels(*labels).observe(value)
        histogram.labels(*labels).observe(value)
    histogram.labels("GET", "", "", "200").observe(100.0)  # past the last bound: +Inf only
    reference.labels("GET", "", "", "200").observe(100.0)
    assert generate_latest(ours) == _without_created(generate_latest(theirs))
    assert b'le="+Inf"' in generate_latest(ours)


def test_wrong_label_count_is_refused() -> None:
    histogram = LoopHistogram("h_seconds", "h", ["a", "b"], buckets=(1.0,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="2 label values"):
        histogram.labels("x")
