"""An informer whose watch had worked and is then cut (a proxy closing long-lived connections, a
load balancer draining) watches again at once; only a retry that fails too backs off."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from setpoint.agent.informer import HEALTHY_FOR, Backoff, Informer
from setpoint.client import Client
from setpoint.testing.faultproxy import FaultProxy
from tests.agent.support import WIDGETS, client_for, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with client_for(server) as c:
        yield c


async def test_a_watch_cut_after_it_worked_is_resumed_at_once_not_after_a_backoff(
        server: ServerProcess, client: Client) -> None:
    ns = await prepare(client)
    async with FaultProxy.for_url(server.url) as proxy, client_for(server, url=proxy.url) as via:
        # A backoff far longer than the test's deadlines: a retry that waited for it fails the test.
        informer = Informer(via, WIDGETS, namespace=ns, backoff=Backoff(initial=60.0, cap=60.0))
        async with informer:
            await informer.wait_synced(timeout=10)
            for i in range(3):  # healthy for a while, then cut; each time the next change arrives
                await eventually(lambda: time.monotonic() - informer._healthy_since >= HEALTHY_FOR,
                                 timeout=HEALTHY_FOR + 10, what="the watch healthy long enough")
                assert proxy.cut() >= 1
                await client.create(WIDGETS, widget(f"after-cut-{i}", size=i), namespace=ns)
                await eventually(lambda i=i: informer.get(f"{ns}/after-cut-{i}") is not None, timeout=10,
                                 what=f"the change made after cut {i + 1}")
            assert informer.stats.watch_errors == 3
