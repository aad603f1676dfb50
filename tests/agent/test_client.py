"""The API client against a real server: configuration, CRUD, typed errors, paging, watch."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from setpoint.client import (
    AlreadyExists,
    BadRequest,
    Client,
    ClientConfig,
    ConfigError,
    Conflict,
    ConnectionFailed,
    Expired,
    Gone,
    IdleTimeout,
    Invalid,
    NotFound,
    Resource,
    Unauthorized,
    WatchEvent,
)
from tests.agent.support import NAMESPACES, WIDGETS, client_for, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with Client(ClientConfig.from_kubeconfig(server.data_dir / "kubeconfig.yaml")) as c:
        yield c


@pytest.fixture
async def ns(client: Client) -> str:
    return await prepare(client)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- configuration ----------------------------------------------------------------------------------


def test_kubeconfig_written_by_serve(server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = server.data_dir / "kubeconfig.yaml"
    cfg = ClientConfig.from_kubeconfig(path)
    assert cfg.servers == (server.url,) and cfg.token == server.token and cfg.namespace == "default"
    assert server.token not in repr(cfg)
    # $KUBECONFIG: a list of files, the first to name an entry wins.
    other = tmp_path / "other.yaml"
    other.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: other\n"
        "clusters: [{name: far, cluster: {server: 'https://far.example:6443', certificate-authority: ca.pem}}]\n"
        "users: [{name: u, user: {token: t0k3n}}]\n"
        "contexts: [{name: other, context: {cluster: far, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing.yaml'}:{path}:{other}")
    cfg = ClientConfig.from_kubeconfig()
    assert cfg.servers == (server.url,)
    far = ClientConfig.from_kubeconfig(context="other")
    assert far.servers == ("https://far.example:6443",) and far.token == "t0k3n"
    assert far.ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError):
        ClientConfig.from_kubeconfig(context="nope")


async def test_fails_over_to_the_next_server_url(server: ServerProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with Client(server.client_config([dead, server.url])) as c:
        ns = await c.get(NAMESPACES, "default")
        assert ns["metadata"]["name"] == "default"
        assert c.server == server.url
    async with Client(server.client_config([dead], timeout=5)) as c:
        with pytest.raises(ConnectionFailed):
            await c.get(NAMESPACES, "default")


# ---- CRUD and errors ---------------------------------------------------------------------------------


async def test_crud_round_trip(client: Client, ns: str) -> None:
    created = await client.create(WIDGETS, widget("w1", 3, labels={"app": "web"}), namespace=ns)
    meta = created["metadata"]
    assert meta["namespace"] == ns and meta["uid"] and created["spec"] == {"size": 3, "color": "blue"}

    got = await client.get(WIDGETS, "w1", namespace=ns)
    assert got == created
    assert (await client.get(WIDGETS, "w1", namespace=ns, resource_version="0"))["metadata"]["uid"] == meta["uid"]

    got["spec"]["size"] = 4
    updated = await client.update(WIDGETS, got)
    assert updated["spec"]["size"] == 4 and updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    updated["status"] = {"ready": True, "observed": 2}
    with_status = await client.update_status(WIDGETS, updated)
    assert with_status["status"] == {"ready": True, "observed": 2}
    assert with_status["metadata"]["generation"] == 2  # status is not desired state

    merged = await client.patch(WIDGETS, "w1", {"spec": {"color": "red"}}, namespace=ns)
    assert merged["spec"] == {"size": 4, "color": "red"}
    patched = await client.patch(WIDGETS, "w1", [{"op": "replace", "path": "/spec/size", "value": 9}],
                                 namespace=ns, patch_type="json")
    assert patched["spec"]["size"] == 9
    status_patched = await client.patch(WIDGETS, "w1", {"status": {"ready": False}}, namespace=ns,
                                        subresource="status")
    assert status_patched["status"]["ready"] is False

    listed = await client.list(WIDGETS, namespace=ns, label_selector={"app": "web"})
    assert [o["metadata"]["name"] for o in listed.items] == ["w1"]
    assert listed.kind == "WidgetList"
    assert int(listed.resource_version) >= int(status_patched["metadata"]["resourceVersion"])

    deleted = await client.delete(WIDGETS, "w1", namespace=ns, uid=meta["uid"], propagation_policy="Background")
    assert deleted["metadata"]["name"] == "w1"
    with pytest.raises(NotFound):
        await client.get(WIDGETS, "w1", namespace=ns)


async def test_typed_errors(client: Client, ns: str, server: ServerProcess) -> None:
    with pytest.raises(NotFound) as nf:
        await client.get(WIDGETS, "missing", namespace=ns)
    assert nf.value.code == 404 and nf.value.reason == "NotFound" and nf.value.details.name == "missing"

    first = await client.create(WIDGETS, widget("dup"), namespace=ns)
    with pytest.raises(AlreadyExists) as ae:
        await client.create(WIDGETS, widget("dup"), namespace=ns)
    assert ae.value.code == 409 and not isinstance(ae.value, Conflict)

    await client.patch(WIDGETS, "dup", {"spec": {"size": 2}}, namespace=ns)
    with pytest.raises(Conflict) as cf:
        await client.update(WIDGETS, first)  # carries the old resourceVersion
    assert cf.value.code == 409 and cf.value.reason == "Conflict"
    with pytest.raises(Conflict):
        await client.delete(WIDGETS, "dup", namespace=ns, resource_version=first["metadata"]["resourceVersion"])

    with pytest.raises(Invalid) as inv:
        await client.create(WIDGETS, widget("bad", -1), namespace=ns)
    assert inv.value.code == 422
    assert [c.field for c in inv.value.causes] == ["spec.size"]

    with pytest.raises(BadRequest):
        await client.list(WIDGETS, namespace=ns, label_selector="app in (web")
    with pytest.raises(NotFound):
        await client.list(Resource("example.com", "v1", "gadgets"), namespace=ns)

    async with Client(ClientConfig(server.url, token="wrong", ca_file=server.ca)) as stranger:
        with pytest.raises(Unauthorized):
            await stranger.get(NAMESPACES, "default")


async def test_idempotent_create(client: Client, ns: str) -> None:
    body = {"metadata": {"generateName": "job-"}, "spec": {"size": 1}}
    a = await client.create(WIDGETS, body, namespace=ns, idempotency_key="op-1")
    b = await client.create(WIDGETS, body, namespace=ns, idempotency_key="op-1")
    assert a["metadata"]["uid"] == b["metadata"]["uid"]
    assert len((await client.list(WIDGETS, namespace=ns)).items) == 1


async def test_requests_in_flight_are_spread_over_the_request_pools(server: ServerProcess) -> None:
    """httpcore's cost per request grows with the connections of its pool, so a client spreads
    its requests over several pools: with 32 in flight each carries its share, and all answer."""
    from setpoint.client.client import REQUEST_POOLS
    from setpoint.testing.faultproxy import FaultProxy

    proxy = await FaultProxy.for_url(server.url).start()
    try:
        async with Client(server.client_config(proxy.url, timeout=30)) as c:
            proxy.stall()  # every request stays in flight until resume
            n = 4 * REQUEST_POOLS
            gets = [asyncio.create_task(c.get(NAMESPACES, "default")) for _ in range(n)]
            await eventually(lambda: sum(p.in_flight for p in c._pools) == n, what=f"{n} requests sent")
            assert [p.in_flight for p in c._pools] == [4] * REQUEST_POOLS
            proxy.resume()
            answers = await asyncio.wait_for(asyncio.gather(*gets), 30)
            assert [a["metadata"]["name"] for a in answers] == ["default"] * n
            assert [p.in_flight for p in c._pools] == [0] * REQUEST_POOLS
    finally:
        await proxy.close()


async def test_paging(client: Client, ns: str) -> None:
    for i in range(7):
        await client.create(WIDGETS, widget(f"p{i}"), namespace=ns)
    first = await client.list(WIDGETS, namespace=ns, limit=3)
    assert [o["metadata"]["name"] for o in first.items] == ["p0", "p1", "p2"] and first.continue_token
    await client.create(WIDGETS, widget("p7"), namespace=ns)  # after the snapshot: not in the pages
    pages = [p async for p in client.iter_pages(WIDGETS, namespace=ns, limit=3)]
    assert [len(p.items) for p in pages] == [3, 3, 2]
    assert len({p.resource_version for p in pages}) == 1
    names = [o["metadata"]["name"] async for o in client.iter_list(WIDGETS, namespace=ns, limit=3)]
    assert names == [f"p{i}" for i in range(8)]
    second = await client.list(WIDGETS, namespace=ns, limit=3, continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in second.items] == ["p3", "p4", "p5"]
    whole = await client.list_all(WIDGETS, namespace=ns, limit=3)
    assert len(whole.items) == 8 and whole.continue_token == ""


async def test_discovery(client: Client) -> None:
    await prepare(client)
    widgets = await client.resource_for("example.com/v1", "Widget")
    assert widgets == WIDGETS
    assert await client.resource_for("v1", "Namespace") == NAMESPACES
    with pytest.raises(NotFound):
        await client.resource_for("example.com/v1", "Gadget")


# ---- watch ---------------------------------------------------------------------------------------


async def test_watch_events_and_bookmarks(client: Client, ns: str) -> None:
    start = (await client.list(WIDGETS, namespace=ns)).resource_version
    events: list[WatchEvent] = []
    async with client.watch(WIDGETS, namespace=ns, resource_version=start, allow_bookmarks=True,
                            idle_timeout=20) as stream:
        created = await client.create(WIDGETS, widget("ww"), namespace=ns)
        await client.patch(WIDGETS, "ww", {"spec": {"size": 5}}, namespace=ns)
        await client.delete(WIDGETS, "ww", namespace=ns)
        # A write elsewhere moves the revision on; the idle watcher learns it from a bookmark.
        await prepare(client)
        async for event in stream:
            events.append(event)
            if event.type == "BOOKMARK":
                break
    assert [(e.type, e.name) for e in events[:3]] == [("ADDED", "ww"), ("MODIFIED", "ww"), ("DELETED", "ww")]
    assert events[0].object["metadata"]["uid"] == created["metadata"]["uid"]
    assert events[1].object["spec"]["size"] == 5
    revs = [int(e.resource_version) for e in events]
    assert revs == sorted(revs) and revs[0] > int(start)
    bookmark = events[-1]
    assert bookmark.type == "BOOKMARK" and bookmark.object["kind"] == "Widget"
    assert int(bookmark.resource_version) > revs[2]


async def test_watch_from_the_beginning_and_by_name(client: Client, ns: str) -> None:
    await client.create(WIDGETS, widget("a"), namespace=ns)
    await client.create(WIDGETS, widget("b"), namespace=ns)
    async with client.watch(WIDGETS, namespace=ns, timeout_seconds=1, allow_bookmarks=False) as stream:
        seen = [(e.type, e.name) async for e in stream]  # ends when the server's timeout does
    assert seen == [("ADDED", "a"), ("ADDED", "b")]
    async with client.watch(WIDGETS, namespace=ns, name="b", resource_version="0") as stream:
        first = await anext(aiter(stream))
    assert (first.type, first.name) == ("ADDED", "b")


async def test_watch_idle_timeout_raises(client: Client, ns: str) -> None:
    rv = (await client.list(WIDGETS, namespace=ns)).resource_version
    with pytest.raises(IdleTimeout):
        async with client.watch(WIDGETS, namespace=ns, resource_version=rv, allow_bookmarks=False,
                                idle_timeout=0.3) as stream:
            async for _ in stream:
                pass


async def test_watch_and_paging_after_compaction_raise_expired(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, ["--history-revisions", "5", "--history-seconds", "0",
                                   "--compact-interval", "0.2", "--watch-cache-window", "2"]).start()
    try:
        async with client_for(srv) as c:
            ns = await prepare(c)
            for i in range(4):
                await c.create(WIDGETS, widget(f"e{i}"), namespace=ns)
            page = await c.list(WIDGETS, namespace=ns, limit=2)
            old = page.resource_version
            for i in range(10):
                await c.create(WIDGETS, widget(f"f{i}"), namespace=ns)

            async def compacted() -> bool:
                try:
                    await c.list(WIDGETS, namespace=ns, resource_version=old, resource_version_match="Exact")
                except Expired:
                    return True
                return False

            await eventually(compacted, timeout=10, what="compaction")
            with pytest.raises(Expired) as exp:
                async with c.watch(WIDGETS, namespace=ns, resource_version=old):
                    pass
            assert exp.value.code == 410 and isinstance(exp.value, Gone)
            with pytest.raises(Expired):
                await c.list(WIDGETS, namespace=ns, limit=2, continue_token=page.continue_token)
            whole = await c.list_all(WIDGETS, namespace=ns, limit=100)
            assert len(whole.items) == 14
    finally:
        srv.stop()



# ---- server behaviour the client depends on ------------------------------------------------------


async def test_watch_timeout_seconds_is_honoured_with_bookmarks(client: Client, ns: str) -> None:
    rv = (await client.list(WIDGETS, namespace=ns)).resource_version
    started = time.monotonic()
    async with client.watch(WIDGETS, namespace=ns, resource_version=rv, allow_bookmarks=True,
                            timeout_seconds=1, idle_timeout=10) as stream:
        async for _ in stream:
            pass
    assert time.monotonic() - started < 2.5


async def test_shutdown_ends_open_watches_promptly_and_cleanly(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path).start()
    try:
        async with client_for(srv) as c:
            rv = (await c.list(NAMESPACES)).resource_version
            async with c.watch(NAMESPACES, resource_version=rv, idle_timeout=30) as stream:
                stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
                started = time.monotonic()
                try:
                    async for _ in stream:
                        pass
                    clean = True
                except ConnectionFailed:
                    clean = False
                took = time.monotonic() - started
                await stopping
            assert clean and took < 1.5, (clean, took)
    finally:
        srv.stop()
