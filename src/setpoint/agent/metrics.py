"""Prometheus metrics of an agent process, on ``/metrics``.

An agent runs next to what it manages, often on a host without the control plane; what it knows
(how far behind its work queues are, what the reaper found) is scraped from the agent itself.
The work queues are read when scraped, not counted twice: the queue keeps its own counters and
a collector turns them into samples. Other parts register their metrics on the same registry
(:attr:`AgentMetrics.registry`).

The endpoint is served by uvicorn in this process's event loop, as an owned task: it starts
with the agent, stops with it, and needs no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from setpoint.agent.workqueue import WorkQueue
from setpoint.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class _QueueCollector(Collector):
    def __init__(self, queues: Callable[[], Iterable[WorkQueue[str]]]) -> None:
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("setpoint_workqueue_depth", "Keys ready to be reconciled.", labels=["name"])
        waiting = GaugeMetricFamily("setpoint_workqueue_waiting", "Keys waiting for a delayed retry.",
                                    labels=["name"])
        processing = GaugeMetricFamily("setpoint_workqueue_processing", "Keys being reconciled.", labels=["name"])
        longest = GaugeMetricFamily("setpoint_workqueue_longest_running_seconds",
                                    "How long the oldest reconcile in progress has run.", labels=["name"])
        adds = CounterMetricFamily("setpoint_workqueue_adds", "Adds accepted.", labels=["name"])
        coalesced = CounterMetricFamily("setpoint_workqueue_coalesced",
                                        "Adds absorbed by a key already waiting.", labels=["name"])
        retries = CounterMetricFamily("setpoint_workqueue_retries", "Rate-limited re-adds after a failure.",
                                      labels=["name"])
        for q in self._queues():
            name = [q.name]
            depth.add_metric(name, q.depth)
            waiting.add_metric(name, q.waiting)
            processing.add_metric(name, q.processing)
            longest.add_metric(name, q.longest_running_seconds)
            adds.add_metric(name, q.adds)
            coalesced.add_metric(name, q.coalesced)
            retries.add_metric(name, q.retries)
        yield from (depth, waiting, processing, longest, adds, coalesced, retries)


class AgentMetrics:
    """The registry of one agent process, with its work queues collected at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._queues: list[Callable[[], Iterable[WorkQueue[str]]]] = []
        self.registry.register(_QueueCollector(self._all_queues))

    def add_queues(self, queues: Callable[[], Iterable[WorkQueue[str]]]) -> None:
        """Collect the work queues ``queues()`` returns at each scrape (controllers come and go with
        leadership, so it is asked each time)."""
        self._queues.append(queues)

    def _all_queues(self) -> Iterator[WorkQueue[str]]:
        for source in self._queues:
            yield from source()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def app(self) -> Starlette:
        async def metrics(request: Request) -> Response:
            return Response(self.render(), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one) as uvicorn takes it."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"metrics address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the agent owns SIGTERM and SIGINT; uvicorn would take them for itself


@contextlib.asynccontextmanager
async def serving(metrics: AgentMetrics, address: str) -> AsyncIterator[str]:
    """Serve ``/metrics`` and ``/healthz`` on ``address`` while the block runs; yields the URL
    it listens on (the real port when ``address`` asked for port 0). The socket is bound here,
    before uvicorn starts, so a bind error is raised at once and a scrape that comes early
    waits in the backlog rather than being refused."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"metrics endpoint on {address}: {e.strerror}") from None
    bound_port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound_port}/metrics"
    config = uvicorn.Config(metrics.app(), log_level="warning", access_log=False, lifespan="off")
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-endpoint")
    log.info("metrics on %s", url)
    try:
        yield url
    finally:
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(task)
        await cancel_and_wait(task)
        sock.close()
