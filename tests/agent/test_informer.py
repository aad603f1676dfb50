"""The informer against a real server: list + watch, resume, relist on 410, dead connections,
indexers, selectors, resync, transform.

Faults are real: the server process is restarted, its history compacted, and the connection
runs through a TCP proxy that can cut connections or freeze them (stop forwarding without
closing). Tests wait for conditions with deadlines, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.agent.cache import object_key
from setpoint.agent.informer import Backoff, Informer
from setpoint.client import BadRequest, Client, Resource
from setpoint.testing.faultproxy import FaultProxy
from setpoint.transfer.natsserver import NatsServer
from tests.agent.support import WIDGETS, client_for, eventually, prepare
from tests.conftest import nats_args, widget
from tests.servers import ServerProcess

pytestmark = pytest.mark.usefixtures("transfer")  # each test runs on every transport

Obj = dict[str, Any]


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, cap=0.3)


class Recorder:
    """Handlers that write down what they were told, as (event, name, spec.size)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int | None]] = []
        self.deleted: list[Obj] = []
        self.pairs: list[tuple[Obj, Obj]] = []

    @staticmethod
    def _size(obj: Obj) -> int | None:
        return (obj.get("spec") or {}).get("size")

    def on_add(self, obj: Obj) -> None:
        self.log.append(("add", obj["metadata"]["name"], self._size(obj)))

    def on_update(self, old: Obj, new: Obj) -> None:
        self.pairs.append((old, new))
        self.log.append(("update", new["metadata"]["name"], self._size(new)))

    def on_delete(self, obj: Obj) -> None:
        self.deleted.append(obj)
        self.log.append(("delete", obj["metadata"]["name"], self._size(obj)))

    def attach(self, informer: Informer) -> Recorder:
        informer.add_handler(self.on_add, self.on_update, self.on_delete)
        return self

    def since(self, mark: int) -> list[tuple[str, str, int | None]]:
        return self.log[mark:]


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with client_for(server) as c:
        yield c


@pytest.fixture
async def ns(client: Client) -> str:
    return await prepare(client)


async def same_as_server(informer: Informer, client: Client, ns: str) -> bool:
    truth = {object_key(o): o["metadata"]["resourceVersion"]
             for o in (await client.list(WIDGETS, namespace=ns)).items}
    mine = {object_key(o): o["metadata"]["resourceVersion"] for o in informer.list()}
    return truth == mine


# ---- basics ----------------------------------------------------------------------------------------


async def test_initial_list_then_live_events(client: Client, ns: str) -> None:
    for name in ("a", "b", "c"):
        await client.create(WIDGETS, widget(name, labels={"app": "web"}), namespace=ns)
    informer = Informer(client, WIDGETS, namespace=ns, page_size=2, backoff=fast_backoff())
    rec = Recorder().attach(informer)
    async with informer:
        await informer.wait_synced(timeout=10)
        assert informer.has_synced
        assert sorted(rec.log) == [("add", "a", 1), ("add", "b", 1), ("add", "c", 1)]
        assert informer.get(f"{ns}/a") is not None and len(informer.list()) == 3
        mark = len(rec.log)

        await client.create(WIDGETS, widget("d", 4), namespace=ns)
        await client.patch(WIDGETS, "a", {"spec": {"size": 2}}, namespace=ns)
        await client.delete(WIDGETS, "b", namespace=ns)
        await eventually(lambda: len(rec.log) == mark + 3, what="three live events")
        assert rec.since(mark) == [("add", "d", 4), ("update", "a", 2), ("delete", "b", 1)]
        old, new = rec.pairs[-1]
        assert (old["spec"]["size"], new["spec"]["size"]) == (1, 2)
        assert informer.get(f"{ns}/b") is None
        assert await same_as_server(informer, client, ns)
        assert int(informer.resource_version or 0) >= int(new["metadata"]["resourceVersion"])

        late = Recorder().attach(informer)  # a handler added after sync starts from the same state
        assert sorted(late.log) == [("add", "a", 2), ("add", "c", 1), ("add", "d", 4)]
    assert informer.stats.lists == 1 and informer.stats.expired == 0


async def test_indexers_selectors_and_transform(client: Client, ns: str) -> None:
    await client.create(WIDGETS, widget("r1", 1, labels={"team": "a"}, color="red"), namespace=ns)
    await client.create(WIDGETS, widget("g1", 2, labels={"team": "a"}, color="green"), namespace=ns)
    await client.create(WIDGETS, widget("r2", 3, labels={"team": "b"}, color="red"), namespace=ns)

    def strip(obj: Obj) -> Obj:
        meta = {k: v for k, v in obj["metadata"].items() if k not in ("managedFields", "annotations")}
        return {**obj, "metadata": meta}

    team_a = Informer(client, WIDGETS, namespace=ns, label_selector={"team": "a"}, transform=strip,
                      backoff=fast_backoff())
    team_a.add_indexer("color", lambda o: [o["spec"]["color"]])
    rec = Recorder().attach(team_a)
    one = Informer(client, WIDGETS, field_selector=f"metadata.namespace={ns},metadata.name=r2",
                   backoff=fast_backoff())
    async with team_a, one:
        await team_a.wait_synced(timeout=10)
        await one.wait_synced(timeout=10)
        assert sorted(o["metadata"]["name"] for o in team_a.list()) == ["g1", "r1"]
        assert [o["metadata"]["name"] for o in team_a.by_index("color", "red")] == ["r1"]
        assert len(team_a.by_index("namespace", ns)) == 2
        assert [o["metadata"]["name"] for o in team_a.cache.by_label("team", "a")] == ["g1", "r1"]
        assert [object_key(o) for o in one.list()] == [f"{ns}/r2"]

        mark = len(rec.log)
        await client.patch(WIDGETS, "r1", {"metadata": {"annotations": {"note": "x" * 100}},
                                           "spec": {"color": "green"}}, namespace=ns)
        await client.patch(WIDGETS, "r2", {"metadata": {"labels": {"team": "a"}}}, namespace=ns)  # joins
        await client.patch(WIDGETS, "g1", {"metadata": {"labels": {"team": "c"}}}, namespace=ns)  # leaves
        await eventually(lambda: len(rec.log) == mark + 3, what="selector transitions")
        assert rec.since(mark) == [("update", "r1", 1), ("add", "r2", 3), ("delete", "g1", 2)]
        assert "annotations" not in team_a.get(f"{ns}/r1")["metadata"]  # type: ignore[index]
        assert [o["metadata"]["name"] for o in team_a.by_index("color", "green")] == ["r1"]
        assert [o["metadata"]["name"] for o in team_a.by_index("color", "red")] == ["r2"]
        assert team_a.cache.index_values("color") == ["green", "red"]
        assert [o["metadata"]["name"] for o in team_a.cache.by_label("team", "a")] == ["r1", "r2"]


async def test_one_nodes_share_by_a_selectable_field(client: Client, ns: str) -> None:
    processsets = await client.resource_for("setpoint.dev/v1alpha1", "ProcessSet")

    def processset(name: str, node: str) -> Obj:
        return {"metadata": {"name": name}, "spec": {"command": "true", "nodeName": node}}

    await client.create(processsets, processset("p1", "n1"), namespace=ns)
    await client.create(processsets, processset("p2", "n2"), namespace=ns)
    informer = Informer(client, processsets, namespace=ns, field_selector="spec.nodeName=n1",
                        backoff=fast_backoff())
    events: list[tuple[str, str]] = []
    informer.add_handler(lambda o: events.append(("add", o["metadata"]["name"])),
                         lambda old, new: events.append(("update", new["metadata"]["name"])),
                         lambda o: events.append(("delete", o["metadata"]["name"])))
    async with informer:
        await informer.wait_synced(timeout=10)
        await client.patch(processsets, "p2", {"spec": {"nodeName": "n1"}}, namespace=ns)  # moves here
        await client.patch(processsets, "p1", {"spec": {"nodeName": "n3"}}, namespace=ns)  # moves away
        await eventually(lambda: len(events) == 3, what="node transitions")
    assert events == [("add", "p1"), ("add", "p2"), ("delete", "p1")]
    assert [object_key(o) for o in informer.list()] == [f"{ns}/p2"]


async def test_resync_is_not_an_update(client: Client, ns: str) -> None:
    await client.create(WIDGETS, widget("s1"), namespace=ns)
    await client.create(WIDGETS, widget("s2"), namespace=ns)
    informer = Informer(client, WIDGETS, namespace=ns, backoff=fast_backoff())
    rec = Recorder().attach(informer)
    resynced: list[str] = []
    informer.add_handler(on_resync=lambda o: resynced.append(o["metadata"]["name"]), resync_period=0.1)
    async with informer:
        await informer.wait_synced(timeout=10)
        await eventually(lambda: len(resynced) >= 4, what="two resyncs")
    assert sorted(set(resynced)) == ["s1", "s2"]
    assert [e for e in rec.log if e[0] != "add"] == []
    assert informer.stats.resyncs >= 2


@pytest.mark.parametrize("selectors", [{"label_selector": "app in (web"},
                                       {"field_selector": "spec.size=1"}])  # not a selectable field
async def test_a_selector_the_server_refuses_stops_the_informer(
    client: Client, ns: str, selectors: dict[str, str]
) -> None:
    informer = Informer(client, WIDGETS, namespace=ns, backoff=fast_backoff(), **selectors)  # type: ignore[arg-type]
    async with informer:
        with pytest.raises(BadRequest):
            await informer.wait_synced(timeout=10)
    assert not informer.has_synced and isinstance(informer.error, BadRequest)


async def test_wait_stopped_raises_the_error_that_stopped_it_and_its_cancellation_leaves_it_running(
    client: Client, ns: str
) -> None:
    refused = Informer(client, WIDGETS, namespace=ns, label_selector="app in (web", backoff=fast_backoff())
    async with refused:
        with pytest.raises(BadRequest):
            async with asyncio.timeout(10):
                await refused.wait_stopped()
    informer = Informer(client, WIDGETS, namespace=ns, backoff=fast_backoff())
    async with informer:
        await informer.wait_synced(timeout=10)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # an informer in good health never stops by itself
                await informer.wait_stopped()
        await client.create(WIDGETS, widget("later"), namespace=ns)
        await eventually(lambda: informer.get(f"{ns}/later") is not None, what="an event after the wait")


async def test_waits_for_a_kind_that_does_not_exist_yet(client: Client, ns: str) -> None:
    gadgets = Resource("example.com", "v1", "gadgets")
    informer = Informer(client, gadgets, namespace=ns, backoff=fast_backoff())
    async with informer:
        await eventually(lambda: informer.stats.watch_errors >= 2, what="retries")
        assert not informer.has_synced and "404" in informer.stats.last_error


# ---- faults ----------------------------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path, request: pytest.FixtureRequest, nats_server: NatsServer) -> Iterator[ServerProcess]:
    args: list[str] = getattr(request, "param", [])
    srv = ServerProcess(tmp_path / "data", [*args, *nats_args(nats_server)]).start()
    yield srv
    srv.stop()


@pytest.fixture
async def proxy(own_server: ServerProcess) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy.for_url(own_server.url).start()
    yield p
    await p.close()


async def test_resumes_after_server_restart_without_missing_or_repeating(
    own_server: ServerProcess, proxy: FaultProxy, transfer: str
) -> None:
    async with client_for(own_server) as direct, client_for(own_server, proxy.url) as via_proxy:
        ns = await prepare(direct)
        await direct.create(WIDGETS, widget("a"), namespace=ns)
        await direct.create(WIDGETS, widget("b"), namespace=ns)
        informer = Informer(via_proxy, WIDGETS, namespace=ns, idle_timeout=30, backoff=fast_backoff())
        rec = Recorder().attach(informer)
        async with informer:
            await informer.wait_synced(timeout=10)
            mark = len(rec.log)

            # 1. The server goes away under an open watch and comes back on the same port.
            await asyncio.to_thread(own_server.restart)
            await direct.create(WIDGETS, widget("c", 1), namespace=ns)
            await direct.patch(WIDGETS, "a", {"spec": {"size": 2}}, namespace=ns)
            await eventually(lambda: len(rec.log) >= mark + 2, what="events after the restart")

            # 2. The informer is cut off while changes happen and the server restarts again,
            #    so its resume reads the missed changes from the store's history.
            proxy.refuse()
            await direct.patch(WIDGETS, "c", {"spec": {"size": 3}}, namespace=ns)
            await direct.delete(WIDGETS, "b", namespace=ns)
            await direct.create(WIDGETS, widget("d", 4), namespace=ns)
            await asyncio.to_thread(own_server.restart)
            await direct.patch(WIDGETS, "d", {"spec": {"size": 5}}, namespace=ns)
            proxy.resume()
            await eventually(lambda: len(rec.log) >= mark + 6, timeout=15, what="events after the cut")
            await eventually(lambda: same_as_server(informer, direct, ns), what="cache equals the server")

        assert rec.since(mark) == [
            ("add", "c", 1), ("update", "a", 2),
            ("update", "c", 3), ("delete", "b", 1), ("add", "d", 4), ("update", "d", 5),
        ]
        assert informer.stats.lists == 1 and informer.stats.expired == 0
        # Resumed from its revision each time, never by listing again.
        if transfer == "command":  # the changes came from the stream, the API server's restarts aside
            assert informer.stats.commands >= 6
        else:
            assert (informer.stats.watches if transfer == "watch" else informer.stats.polls) >= 3


# These two are about the API connection, which the command transfer does not follow changes on
# (tests/transfer puts faults between an agent and NATS instead).
API_TRANSFERS = pytest.mark.parametrize("transfer", ["watch", "poll", "interrupt"], indirect=True)


@API_TRANSFERS
@pytest.mark.parametrize("own_server", [["--history-revisions", "5", "--history-seconds", "0",
                                         "--compact-interval", "0.2", "--watch-cache-window", "2"]],
                         indirect=True)
async def test_relists_after_410_and_delivers_the_true_differences(
    own_server: ServerProcess, proxy: FaultProxy
) -> None:
    async with client_for(own_server) as direct, client_for(own_server, proxy.url) as via_proxy:
        ns = await prepare(direct)
        elsewhere = await prepare(direct)
        for name in ("keep", "change", "drop", "recreate"):
            await direct.create(WIDGETS, widget(name), namespace=ns)
        informer = Informer(via_proxy, WIDGETS, namespace=ns, idle_timeout=30, backoff=fast_backoff())
        rec = Recorder().attach(informer)
        async with informer:
            await informer.wait_synced(timeout=10)
            mark = len(rec.log)
            seen_rv = informer.resource_version
            old_uid = informer.get(f"{ns}/recreate")["metadata"]["uid"]  # type: ignore[index]

            proxy.refuse()
            await direct.patch(WIDGETS, "change", {"spec": {"size": 2}}, namespace=ns)
            await direct.patch(WIDGETS, "drop", {"spec": {"size": 7}}, namespace=ns)  # never seen
            await direct.delete(WIDGETS, "drop", namespace=ns)
            await direct.delete(WIDGETS, "recreate", namespace=ns)
            await direct.create(WIDGETS, widget("recreate", 9), namespace=ns)
            await direct.create(WIDGETS, widget("new", 3), namespace=ns)
            await direct.create(WIDGETS, widget("brief"), namespace=ns)  # created and deleted while away
            await direct.delete(WIDGETS, "brief", namespace=ns)
            for i in range(8):  # writes elsewhere push the informer's revision out of the history
                await direct.create(WIDGETS, widget(f"x{i}"), namespace=elsewhere)

            async def compacted() -> bool:
                try:
                    async with direct.watch(WIDGETS, namespace=ns, resource_version=seen_rv):
                        return False
                except Exception as e:
                    return getattr(e, "code", 0) == 410

            await eventually(compacted, what="history compacted past the informer's revision")
            proxy.resume()
            await eventually(lambda: informer.stats.expired >= 1 and informer.stats.lists == 2, what="relist")
            await eventually(lambda: same_as_server(informer, direct, ns), what="cache equals the server")

        assert sorted(rec.since(mark)) == sorted([
            ("update", "change", 2),
            ("delete", "drop", 1),  # the last state the informer saw
            ("delete", "recreate", 1), ("add", "recreate", 9),  # a new uid under the same name
            ("add", "new", 3),
        ])
        recreated = [o for o in rec.deleted if o["metadata"]["name"] == "recreate"]
        assert recreated[0]["metadata"]["uid"] == old_uid
        assert informer.get(f"{ns}/recreate")["metadata"]["uid"] != old_uid  # type: ignore[index]


@API_TRANSFERS
async def test_notices_a_frozen_connection_and_reconnects(server: ServerProcess) -> None:
    idle_timeout = 1.0
    proxy = await FaultProxy.for_url(server.url).start()
    try:
        async with client_for(server) as direct, client_for(server, proxy.url) as via_proxy:
            ns = await prepare(direct)
            await direct.create(WIDGETS, widget("tick", 0), namespace=ns)
            informer = Informer(via_proxy, WIDGETS, namespace=ns, idle_timeout=idle_timeout,
                                backoff=fast_backoff())
            rec = Recorder().attach(informer)
            written = 0
            stop = asyncio.Event()

            async def ticker() -> None:  # a change every 0.2 s keeps a healthy stream busy
                nonlocal written
                while not stop.is_set():
                    written += 1
                    await direct.patch(WIDGETS, "tick", {"spec": {"size": written}}, namespace=ns)
                    await asyncio.sleep(0.2)

            async with informer:
                await informer.wait_synced(timeout=10)
                task = asyncio.create_task(ticker())
                try:
                    await eventually(lambda: len(rec.log) >= 4, what="ticks through the proxy")
                    assert informer.stats.idle_timeouts == 0
                    frozen_at = time.monotonic()
                    proxy.freeze()
                    await eventually(lambda: informer.stats.idle_timeouts >= 1, what="the idle timeout")
                    noticed = time.monotonic() - frozen_at
                    assert noticed < idle_timeout + 1.0, noticed
                    during = len(rec.log)
                    proxy.unfreeze()
                    await eventually(lambda: len(rec.log) > during + 3, what="ticks after unfreezing")
                finally:
                    stop.set()
                    await task
                await eventually(lambda: same_as_server(informer, direct, ns), what="cache equals the server")
            sizes = [size for _, _, size in rec.log]
            assert sizes == list(range(written + 1))  # every change exactly once, in order
            assert informer.stats.lists == 1
    finally:
        await proxy.close()


@API_TRANSFERS
async def test_a_server_outage_backs_off_and_is_logged_once(
    own_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """While the server is down the informer retries with growing delays, says so once, and says
    once that it works again: not a line per attempt."""
    async with client_for(own_server) as direct:
        ns = await prepare(direct)
        await direct.create(WIDGETS, widget("a"), namespace=ns)
    async with client_for(own_server) as client:
        informer = Informer(client, WIDGETS, namespace=ns, backoff=Backoff(initial=0.05, cap=0.4, jitter=0))
        async with informer:
            await informer.wait_synced(timeout=10)
            caplog.set_level(logging.DEBUG, logger="setpoint.agent.informer")
            await asyncio.to_thread(own_server.stop)
            await eventually(lambda: informer.stats.watch_errors >= 7, timeout=20, what="seven failed attempts")
            # The attempt counter rises: delays grow to the cap. (The first retry after a stream
            # that had worked for HEALTHY_FOR is made at once, without a backoff step.)
            assert informer.backoff.failures >= 6
            await asyncio.to_thread(own_server.start)
            async with client_for(own_server) as direct:
                await direct.create(WIDGETS, widget("b"), namespace=ns)
            await eventually(lambda: informer.get(f"{ns}/b") is not None, timeout=20, what="b after the outage")
        records = [r for r in caplog.records if r.name == "setpoint.agent.informer"]
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert any(r.levelno == logging.INFO and "works again" in r.getMessage() for r in records)
        assert informer.backoff.failures == 0  # reset by the recovery
