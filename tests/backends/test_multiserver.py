"""Several ``setpoint serve`` processes over one PostgreSQL or etcd store, and the faults that
scale-out is for: an API server killed under a watching client, PostgreSQL restarted during a
write burst, the etcd leader stopped during writes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from setpoint.agent.informer import Backoff, Informer
from setpoint.client import Client, ClientConfig, ClientError
from setpoint.store import KeyValue, StoreError
from setpoint.store.etcd import EtcdBackend
from tests.agent.support import WIDGETS, eventually
from tests.backends.conftest import Servers, store_url, widget
from tests.backends.services import EtcdCluster, PostgresServer

pytestmark = pytest.mark.timeout(180)

BACKENDS = ["postgresql", "etcd"]


def client(servers: Servers, urls: list[str] | None = None) -> Client:
    return Client(ClientConfig(urls or servers.urls, token=servers.token, ca_file=servers.ca, timeout=10))


async def collect_watch(c: Client, ns: str, rv: str, want: int, seen: list[tuple[str, int]]) -> None:
    """Record (name, revision) of ADDED events from a watch until ``want`` arrived."""
    async with c.watch(WIDGETS, namespace=ns, resource_version=rv, idle_timeout=30) as events:
        async for ev in events:
            if ev.type == "ADDED":
                seen.append((ev.name, int(ev.resource_version)))
                if len(seen) >= want:
                    return


@pytest.fixture(params=BACKENDS)
def shared_store(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        return store_url("postgresql", pg, None)
    etcd: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return store_url("etcd", None, etcd)


@pytest.fixture
def servers(tmp_path: Path, shared_store: str) -> Any:
    s = Servers(tmp_path / "data", shared_store).start()
    try:
        yield s
    finally:
        s.stop()


async def test_writes_through_any_server_reach_watchers_on_all(servers: Servers) -> None:
    """Writes through A and through B, watchers on A and on B: each watcher sees every write,
    in revision order, none missing and none twice."""
    ns = f"ms-{int(time.time() * 1000) % 10**8}"
    servers.ensure_namespace(ns)
    a, b = (client(servers, [u]) for u in servers.urls)
    try:
        rv = (await a.list(WIDGETS, namespace=ns)).resource_version
        total = 200
        seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
        watchers = [asyncio.create_task(collect_watch(c, ns, rv, total, seen[k])) for k, c in (("a", a), ("b", b))]
        acks = await asyncio.gather(
            *((a if i % 2 else b).create(WIDGETS, widget(f"w{i}"), namespace=ns) for i in range(total))
        )
        async with asyncio.timeout(60):
            await asyncio.gather(*watchers)
        acked = sorted((o["metadata"]["name"], int(o["metadata"]["resourceVersion"])) for o in acks)
        for events in seen.values():
            revs = [r for _, r in events]
            assert revs == sorted(revs) and len(set(revs)) == len(revs), "out of order or repeated"
            assert sorted(events) == acked
    finally:
        await a.aclose()
        await b.aclose()


async def test_killed_server_watchers_resume_on_another(servers: Servers) -> None:
    """An informer watching through A, told about A and B: A is killed; it reconnects to B and
    resumes from its last resourceVersion, without missing or repeating an event (and without
    relisting)."""
    ns = f"kill-{int(time.time() * 1000) % 10**8}"
    servers.ensure_namespace(ns)
    writer = client(servers, [servers.urls[1]])
    watcher = client(servers, servers.urls)  # A first
    informer = Informer(watcher, WIDGETS, namespace=ns, backoff=Backoff(initial=0.05, cap=0.2), idle_timeout=5)
    log: list[tuple[str, str, str]] = []
    informer.add_handler(
        on_add=lambda o: log.append(("add", o["metadata"]["name"], o["metadata"]["resourceVersion"])),
        on_update=lambda old, new: log.append(("update", new["metadata"]["name"], new["metadata"]["resourceVersion"])),
        on_delete=lambda o: log.append(("delete", o["metadata"]["name"], o["metadata"]["resourceVersion"])),
    )
    try:
        async with informer:
            await informer.wait_synced(timeout=30)
            names = [f"k{i}" for i in range(150)]
            done = asyncio.Event()

            async def write() -> None:
                for i, name in enumerate(names):
                    await writer.create(WIDGETS, widget(name, i), namespace=ns)
                    if i % 3 == 0:
                        await writer.patch(WIDGETS, name, {"spec": {"size": 1000 + i}}, namespace=ns)
                    if i == 50:
                        done.set()
                done.set()

            task = asyncio.create_task(write())
            await asyncio.wait_for(done.wait(), 60)
            await eventually(lambda: len(log) > 20, 30, "events through server A")
            servers.procs[0].kill(signal.SIGKILL)
            await asyncio.wait_for(task, 120)
            final = {o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                     for o in (await writer.list(WIDGETS, namespace=ns)).items}
            await eventually(lambda: {o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                                      for o in informer.list()} == final, 60, "the informer to catch up via B")
        assert watcher.server == servers.urls[1]
        assert informer.stats.lists == 1, "the informer relisted instead of resuming"
        revs = [int(rv) for _, _, rv in log]
        assert revs == sorted(revs) and len(set(revs)) == len(revs), "an event was repeated or reordered"
        assert [n for kind, n, _ in log if kind == "add"] == names  # each once, in order
        updates = [n for kind, n, _ in log if kind == "update"]
        assert updates == [n for i, n in enumerate(names) if i % 3 == 0]
    finally:
        await writer.aclose()
        await watcher.aclose()


async def test_postgres_restart_during_a_write_burst(tmp_path: Path) -> None:
    """PostgreSQL restarts (an immediate stop: crash recovery at start) under writes through two
    servers: clients get 503s meanwhile, and every acknowledged write is there afterwards."""
    pg = PostgresServer().init().start()
    servers = Servers(tmp_path / "data", pg.dsn() + "?schema=burst").start()
    try:
        ns = "burst"
        servers.ensure_namespace(ns)
        acked: dict[str, int] = {}
        statuses: dict[int, int] = {}
        stop = asyncio.Event()
        token = servers.token

        async def writer(n: int, url: str) -> None:
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                         verify=servers.procs[0].verify) as c:
                i = 0
                while not stop.is_set():
                    name = f"w{n}-{i}"
                    try:
                        r = await c.post(f"/apis/example.com/v1/namespaces/{ns}/widgets", json=widget(name))
                    except httpx.TransportError:
                        statuses[0] = statuses.get(0, 0) + 1
                        await asyncio.sleep(0.01)
                        continue
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 201:
                        acked[name] = int(r.json()["metadata"]["resourceVersion"])
                        i += 1
                    elif r.status_code == 503:
                        assert r.headers.get("retry-after"), "a 503 without Retry-After"
                        await asyncio.sleep(0.01)
                    elif r.status_code == 409:  # an unacknowledged create that did commit
                        i += 1
                    else:
                        raise AssertionError(f"unexpected {r.status_code}: {r.text}")

        tasks = [asyncio.create_task(writer(n, servers.urls[n % 2])) for n in range(8)]
        await eventually(lambda: len(acked) > 200, 30, "writes before the restart")
        before = len(acked)
        await asyncio.to_thread(pg.restart, "immediate")
        await eventually(lambda: len(acked) > before + 200, 60, "writes after the restart")
        stop.set()
        await asyncio.gather(*tasks)
        assert statuses.get(503, 0) > 0, f"no retryable error seen: {statuses}"
        async with httpx.AsyncClient(base_url=servers.urls[1], headers={"Authorization": f"Bearer {token}"},
                                     verify=servers.procs[0].verify,
                                     timeout=30) as c:
            r = await c.get(f"/apis/example.com/v1/namespaces/{ns}/widgets")
            stored = {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"]) for o in r.json()["items"]}
        missing = {k: v for k, v in acked.items() if stored.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged writes lost: {list(missing.items())[:5]}"
    finally:
        servers.stop()
        pg.remove()


async def test_etcd_leader_stopped_during_writes(tmp_path: Path) -> None:
    """A three-member etcd on loopback: the leader is killed during writes; no acknowledged write
    is lost, and the revisions the writers were given are exactly the store's history."""
    cluster = EtcdCluster(tmp_path / "etcd3", size=3).start()
    try:
        backend = EtcdBackend(cluster.endpoints, request_timeout=5)
        await backend.start()
        acked: dict[str, KeyValue] = {}
        errors: list[str] = []
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"/leader/{n}/{i}"
                try:
                    acked[key] = await backend.create(key, b"v" * 100)
                except StoreError as e:
                    errors.append(type(e).__name__)
                    await asyncio.sleep(0.01)
                i += 1

        base = await backend.current_revision()
        tasks = [asyncio.create_task(writer(n)) for n in range(16)]
        await eventually(lambda: len(acked) > 300, 30, "writes before the leader goes")
        leader = await asyncio.to_thread(cluster.leader)
        assert leader is not None
        before = len(acked)
        await asyncio.to_thread(cluster.stop_member, leader, signal.SIGKILL)
        await eventually(lambda: len(acked) > before + 300, 60, "writes under the new leader")
        stop.set()
        await asyncio.gather(*tasks)
        await backend.close()

        survivors = [m.url for m in cluster.members if m is not leader]
        check = EtcdBackend(survivors)
        await check.start()
        try:
            stored = {kv.key: kv for kv in (await check.list("/leader/")).items}
            lost = [k for k, kv in acked.items() if stored.get(k) != kv]
            assert not lost, f"{len(lost)} acknowledged writes lost"
            current = await check.current_revision()
            stream = check.watch("/", base)
            events = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while not events or events[-1].revision < current:
                        events.extend(await anext(stream))
            await stream.aclose()
            assert [e.revision for e in events] == list(range(base + 1, current + 1))
        finally:
            await check.close()
    finally:
        cluster.stop()


async def test_etcd_leader_stopped_under_two_servers(tmp_path: Path) -> None:
    """Two servers over a three-member etcd whose leader is also the member their watch streams
    are on; it is killed during writes through both servers. Every acknowledged write is stored,
    and a watcher through a server sees every stored object once, in revision order."""
    cluster = EtcdCluster(tmp_path / "etcd3", size=3).start()
    await asyncio.to_thread(cluster.make_leader, cluster.members[0])  # the first endpoint listed
    servers = Servers(tmp_path / "data", cluster.url).start()
    try:
        ns = "leader"
        servers.ensure_namespace(ns)
        token = servers.token
        acked: dict[str, int] = {}
        stop = asyncio.Event()
        watcher = client(servers, [servers.urls[1]])
        rv = (await watcher.list(WIDGETS, namespace=ns)).resource_version
        seen: list[tuple[str, int]] = []

        async def watch() -> None:  # until cancelled; resumes after its last event
            while True:
                after = str(seen[-1][1]) if seen else rv
                try:
                    async with watcher.watch(WIDGETS, namespace=ns, resource_version=after, idle_timeout=10) as ev:
                        async for e in ev:
                            if e.type == "ADDED":
                                seen.append((e.name, int(e.resource_version)))
                except ClientError:
                    await asyncio.sleep(0.05)  # back off before watching again

        async def writer(n: int, url: str) -> None:
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                         verify=servers.procs[0].verify) as c:
                i = 0
                while not stop.is_set():
                    name = f"w{n}-{i}"
                    try:
                        r = await c.post(f"/apis/example.com/v1/namespaces/{ns}/widgets", json=widget(name))
                    except httpx.TransportError:
                        continue
                    if r.status_code == 201:
                        acked[name] = int(r.json()["metadata"]["resourceVersion"])
                    elif r.status_code not in (409, 503, 504):
                        raise AssertionError(f"unexpected {r.status_code}: {r.text}")
                    i += 1

        watching = asyncio.create_task(watch())
        tasks = [asyncio.create_task(writer(n, servers.urls[n % 2])) for n in range(8)]
        await eventually(lambda: len(acked) > 200, 30, "writes before the leader goes")
        before = len(acked)
        await asyncio.to_thread(cluster.stop_member, cluster.members[0], signal.SIGKILL)
        await eventually(lambda: len(acked) > before + 200, 60, "writes after the leader went")
        stop.set()
        await asyncio.gather(*tasks)
        async with httpx.AsyncClient(base_url=servers.urls[1], headers={"Authorization": f"Bearer {token}"},
                                     verify=servers.procs[0].verify,
                                     timeout=30) as c:
            r = await c.get(f"/apis/example.com/v1/namespaces/{ns}/widgets")
            stored = {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"]) for o in r.json()["items"]}
        lost = [k for k, v in acked.items() if stored.get(k) != v]
        assert not lost, f"{len(lost)} acknowledged writes lost"
        await eventually(lambda: len(seen) >= len(stored), 60, "the watcher to see every stored object")
        watching.cancel()
        revs = [r for _, r in seen]
        assert revs == sorted(revs) and len(set(revs)) == len(revs), "an event was repeated or reordered"
        assert dict(seen) == stored
        await watcher.aclose()
    finally:
        servers.stop()
        cluster.stop()


async def test_compacted_history_is_410_on_every_server(tmp_path: Path, shared_store: str) -> None:
    """Servers compacting a short history: a watch or read from a compacted revision gets 410
    Gone through either server, and a list from the present works."""
    servers = Servers(tmp_path / "data", shared_store, args=["--history-revisions", "20", "--history-seconds", "0",
                                                             "--compact-interval", "0.2"]).start()
    try:
        ns = "compacted"
        servers.ensure_namespace(ns)
        a, b = (client(servers, [u]) for u in servers.urls)
        try:
            first = await a.create(WIDGETS, widget("first"), namespace=ns)
            old = first["metadata"]["resourceVersion"]
            for i in range(60):
                await (a if i % 2 else b).create(WIDGETS, widget(f"w{i}"), namespace=ns)
            path = f"/apis/example.com/v1/namespaces/{ns}/widgets"
            token = servers.token
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                         verify=servers.procs[0].verify) as h:

                async def gone_everywhere() -> bool:
                    for url in servers.urls:
                        r = await h.get(url + path, params={"resourceVersion": old, "resourceVersionMatch": "Exact"})
                        if r.status_code != 410:
                            return False
                    return True

                await eventually(gone_everywhere, 30, "the first revision to be compacted on every server")
                for url in servers.urls:
                    async with h.stream("GET", url + path, params={"watch": "1", "resourceVersion": old}) as r:
                        if r.status_code == 200:  # the error comes as the stream's one event
                            line = await anext(r.aiter_lines())
                            assert '"code":410' in line, line
                        else:
                            assert r.status_code == 410
            assert len((await b.list(WIDGETS, namespace=ns)).items) == 61
        finally:
            await a.aclose()
            await b.aclose()
    finally:
        servers.stop()
