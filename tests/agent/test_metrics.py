"""An agent's /metrics: served in the agent's loop, work queues read at scrape time, a taken port
or a malformed address refused at once, nothing left listening after it stops."""

from __future__ import annotations

import socket

import httpx
import pytest

from setpoint.agent.metrics import AgentMetrics, parse_address, serving
from setpoint.agent.workqueue import WorkQueue


async def test_work_queues_are_read_when_scraped_and_the_port_closes_after() -> None:
    metrics = AgentMetrics()
    queue: WorkQueue[str] = WorkQueue(name="widgets")
    metrics.add_queues(lambda: [queue])
    async with serving(metrics, "127.0.0.1:0") as url, httpx.AsyncClient() as h:
        queue.add("a")
        queue.add("b")
        queue.add("a")  # coalesced
        text = (await h.get(url)).text
        assert 'setpoint_workqueue_depth{name="widgets"} 2.0' in text
        assert 'setpoint_workqueue_adds_total{name="widgets"} 3.0' in text
        assert 'setpoint_workqueue_coalesced_total{name="widgets"} 1.0' in text
        assert (await h.get(url.replace("/metrics", "/healthz"))).text == "ok"
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "still listening after the block"


async def test_a_taken_port_and_a_bad_address_are_refused_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            async with serving(AgentMetrics(), f"127.0.0.1:{port}"):
                pass
    for bad in ("9464", "localhost:", ":9464", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)
    assert parse_address("[::1]:9464") == ("::1", 9464)
