"""The command transfer through what its NATS server goes through: a restart (the stream and the
consumers are on disk; clients reconnect) and a purge of the stream (the server notices its seed
marker is gone and publishes everything again). The agent's cache ends equal to the API's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from setpoint.agent.cache import object_key
from setpoint.agent.informer import Backoff, Informer
from setpoint.client import Client
from setpoint.transfer import transport_factory
from setpoint.transfer.natsserver import NatsServer
from setpoint.transfer.subjects import Subjects
from tests.agent.support import WIDGETS, client_for, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess

PREFIX = f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as n:
        yield n


@pytest.fixture
def own_server(tmp_path: Path, nats: NatsServer) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server", ["--nats", nats.url, "--nats-prefix", PREFIX]).start()
    yield srv
    srv.stop()


@pytest.fixture
async def client(own_server: ServerProcess) -> AsyncIterator[Client]:
    async with client_for(own_server) as c:
        yield c


async def same_as_server(informer: Informer, client: Client, ns: str) -> bool:
    truth = {object_key(o): o["metadata"]["resourceVersion"] for o in (await client.list(WIDGETS, namespace=ns)).items}
    return truth == {object_key(o): o["metadata"]["resourceVersion"] for o in informer.list()}


async def test_the_command_transfer_survives_a_nats_restart_and_a_purge(
        client: Client, nats: NatsServer) -> None:
    ns = await prepare(client)
    factory = transport_factory("command", nats_url=nats.url, consumer=f"t{uuid.uuid4().hex[:6]}",
                                resync_period=2.0)
    informer = Informer(client, WIDGETS, namespace=ns, transport=factory(), backoff=Backoff(initial=0.05, cap=0.5))
    for i in range(20):
        await client.create(WIDGETS, widget(f"w{i}", size=i), namespace=ns)
    async with informer:
        await informer.wait_synced(timeout=30)
        await eventually(lambda: same_as_server(informer, client, ns), timeout=20, what="the first picture")

        await asyncio.to_thread(nats.restart)  # the stream and the consumer are on disk
        for i in range(10):
            await client.patch(WIDGETS, f"w{i}", {"spec": {"size": 100 + i}}, namespace=ns)
        await client.delete(WIDGETS, "w19", namespace=ns)
        await eventually(lambda: same_as_server(informer, client, ns), timeout=30,
                         what="the changes made after the NATS restart")

        import nats as nats_py

        nc = await nats_py.connect(nats.url)
        try:
            await nc.jetstream().purge_stream(Subjects(PREFIX).command_stream)
        finally:
            await nc.close()
        for i in range(10, 15):
            await client.patch(WIDGETS, f"w{i}", {"spec": {"size": 200 + i}}, namespace=ns)
        await client.create(WIDGETS, widget("after-purge", size=1), namespace=ns)
        await eventually(lambda: same_as_server(informer, client, ns), timeout=30,
                         what="the changes made after the purge")


async def test_a_delivery_lost_on_the_way_is_read_from_the_stream_without_waiting_for_its_redelivery(
        client: Client, nats: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 % of the deliveries dropped between NATS and the agent, and a redelivery an hour away:
    the agent still converges, so what it lost it read from the stream itself."""
    from setpoint.testing.faultproxy import FaultProxy, NatsFaults
    from setpoint.transfer import command

    monkeypatch.setattr(command, "ACK_WAIT_SECONDS", 3600.0)
    ns = await prepare(client)
    for i in range(50):
        await client.create(WIDGETS, widget(f"w{i}", size=i), namespace=ns)
    host, port = nats.url.removeprefix("nats://").rsplit(":", 1)
    faults = NatsFaults(seed=7, subjects=(f"{PREFIX}.",))
    async with FaultProxy(host, int(port), nats=faults) as proxy:
        factory = transport_factory("command", nats_url=f"nats://{proxy.address}",
                                    consumer=f"t{uuid.uuid4().hex[:6]}", resync_period=3600.0)
        informer = Informer(client, WIDGETS, namespace=ns, transport=factory(),
                            backoff=Backoff(initial=0.05, cap=0.5))
        async with informer:
            await informer.wait_synced(timeout=30)
            await eventually(lambda: same_as_server(informer, client, ns), timeout=20, what="the first picture")
            faults.drop = 0.3  # from now on, after a snapshot that had to wait for none
            for round_ in range(4):
                for i in range(50):
                    await client.patch(WIDGETS, f"w{i}", {"spec": {"size": 1000 * (round_ + 1) + i}}, namespace=ns)
            await client.delete(WIDGETS, "w0", namespace=ns)
            await eventually(lambda: same_as_server(informer, client, ns), timeout=60,
                             what="every change, although deliveries were lost")
            assert proxy.stats.dropped > 0, "no delivery was dropped: the test proved nothing"
            assert informer.stats.recovered > 0
            assert informer.stats.watch_errors == 0  # recovered as it went, not by starting over


def test_the_stream_sequences_of_lost_deliveries_are_named_from_those_that_arrived() -> None:
    from setpoint.transfer.command import _Gaps

    g = _Gaps()
    g._saw(1, 10)
    g._saw(2, 12)  # 11 was not this consumer's (another kind's, or superseded): nothing lost
    assert g.take() == []
    g._saw(4, 15)  # delivery 3 lost: a stream sequence between 12 and 15
    assert g.take() == [13, 14]
    g._saw(6, 5)  # delivery 5 lost, and 6 a redelivery of an old message: not known yet which
    assert g.take() == []
    g._saw(7, 17)  # the next new message bounds it
    assert g.take() == [16]
    g.consumer_says(7, 17)  # all that was delivered arrived
    assert g.take() == []
    g.consumer_says(9, 20)  # the last two deliveries of a burst lost: nothing follows to show it
    assert g.take() == [18, 19, 20]


def test_subjects_match_as_nats_matches_them() -> None:
    from setpoint.transfer.command import subject_matches

    assert subject_matches("p.cmd.g.widgets.ns.*", "p.cmd.g.widgets.ns.w1")
    assert not subject_matches("p.cmd.g.widgets.ns.*", "p.cmd.g.widgets.ns.w1.x")
    assert not subject_matches("p.cmd.g.widgets.ns.*", "p.cmd.g.widgets.other.w1")
    assert subject_matches("p.cmd.g.widgets.>", "p.cmd.g.widgets.ns.w1")
    assert not subject_matches("p.cmd.g.widgets.>", "p.cmd.g.widgets")
    assert not subject_matches("p.cmd.g.gadgets.>", "p.cmd.g.widgets.ns.w1")
