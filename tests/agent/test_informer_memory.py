"""What an informer keeps, and in what form: managedFields dropped unless asked for, objects kept
as the server sent them until read (lists and watch events), indexes built on first read, and
the client's raw list and watch that feed it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from setpoint.agent.cache import Indexer, share_strings
from setpoint.agent.informer import Backoff, Informer
from setpoint.client import Client, ClientConfig, Expired, RawObjectList
from tests.agent.support import WIDGETS, client_for, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess

Obj = dict[str, Any]


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, cap=0.3)


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with client_for(server) as c:
        yield c


@pytest.fixture
async def ns(client: Client) -> str:
    return await prepare(client)


async def create_managed(client: Client, ns: str, name: str, size: int = 1, **labels: str) -> Obj:
    """A widget written with a fieldManager, so the server records managedFields on it."""
    body = widget(name, size, labels=labels or None)
    return await client._json("POST", WIDGETS.path(ns), body=body, params={"fieldManager": "tester"})


class Seen:
    def __init__(self, informer: Informer) -> None:
        self.adds: list[Obj] = []
        self.updates: list[tuple[Obj, Obj]] = []
        self.deletes: list[Obj] = []
        informer.add_handler(on_add=self.adds.append, on_update=lambda o, n: self.updates.append((o, n)),
                             on_delete=self.deletes.append)


# ---- managedFields, on every transport --------------------------------------------------------------


@pytest.mark.usefixtures("transfer")
async def test_managed_fields_are_dropped_unless_kept_and_a_transform_still_applies(client: Client, ns: str) -> None:
    created = await create_managed(client, ns, "a")
    assert created["metadata"].get("managedFields"), "the server should record managedFields"

    seen_by_transform: list[Obj] = []

    def mark(obj: Obj) -> Obj:
        seen_by_transform.append(obj)
        obj["metadata"].setdefault("annotations", {})["marked"] = "yes"
        return obj

    plain = Informer(client, WIDGETS, namespace=ns, backoff=fast_backoff())
    kept = Informer(client, WIDGETS, namespace=ns, keep_managed_fields=True, backoff=fast_backoff())
    marked = Informer(client, WIDGETS, namespace=ns, transform=mark, backoff=fast_backoff())
    plain_seen, kept_seen = Seen(plain), Seen(kept)
    async with plain, kept, marked:
        for inf in (plain, kept, marked):
            await inf.wait_synced(timeout=10)
        key = f"{ns}/a"
        assert "managedFields" not in plain_seen.adds[0]["metadata"]
        assert "managedFields" not in plain.get(key)["metadata"]  # type: ignore[index]
        assert kept_seen.adds[0]["metadata"]["managedFields"] == created["metadata"]["managedFields"]
        assert kept.get(key)["metadata"]["managedFields"]  # type: ignore[index]
        assert marked.get(key)["metadata"]["annotations"] == {"marked": "yes"}  # type: ignore[index]
        assert all("managedFields" not in o["metadata"] for o in seen_by_transform)

        # A live change (the watch's path, not the list's): the same rules.
        await client._json("PATCH", WIDGETS.path(ns, "a"), body={"spec": {"size": 2}},
                           content_type="application/merge-patch+json", params={"fieldManager": "tester"})
        await eventually(lambda: len(plain_seen.updates) == 1 and len(kept_seen.updates) == 1,
                         what="the update in both informers")
        await eventually(lambda: (marked.get(key) or {}).get("spec", {}).get("size") == 2, what="marked's update")
        old, new = plain_seen.updates[0]
        assert (old["spec"]["size"], new["spec"]["size"]) == (1, 2)
        assert "managedFields" not in new["metadata"] and "managedFields" not in plain.get(key)["metadata"]  # type: ignore[index]
        assert kept_seen.updates[0][1]["metadata"]["managedFields"]
        assert marked.get(key)["metadata"]["annotations"] == {"marked": "yes"}  # type: ignore[index]
        assert all("managedFields" not in o["metadata"] for o in seen_by_transform)


# ---- objects kept as the server sent them (the watch transport) ---------------------------------------


async def test_objects_stay_as_sent_until_read_and_handlers_get_them_decoded(client: Client, ns: str) -> None:
    for i in range(5):
        await create_managed(client, ns, f"w{i}", i, team="a" if i % 2 else "b")
    informer = Informer(client, WIDGETS, namespace=ns, page_size=2, backoff=fast_backoff())
    seen = Seen(informer)
    async with informer:
        await informer.wait_synced(timeout=10)
        cache = informer.cache
        assert all(isinstance(cache.entry(f"{ns}/w{i}"), bytes) for i in range(5))
        assert sorted((o["metadata"]["name"], o["spec"]["size"]) for o in seen.adds) == [
            (f"w{i}", i) for i in range(5)]
        assert all("managedFields" not in o["metadata"] for o in seen.adds)

        # The indexes are built from objects still held as JSON, without keeping them decoded.
        assert [o["metadata"]["name"] for o in informer.cache.by_label("team", "a")] == ["w1", "w3"]
        assert isinstance(cache.entry(f"{ns}/w0"), bytes)  # not read through the index
        assert isinstance(cache.entry(f"{ns}/w1"), dict)  # read: kept decoded

        # A read decodes once and keeps the result.
        first = informer.get(f"{ns}/w2")
        assert first is not None and first["spec"]["size"] == 2 and "managedFields" not in first["metadata"]
        assert informer.get(f"{ns}/w2") is first and cache.entry(f"{ns}/w2") is first

        # Changes: to an object nobody read (stays JSON), to one that was read (stays decoded),
        # an object's label moving it between index values, a delete of an unread object.
        await client.patch(WIDGETS, "w0", {"spec": {"size": 10}}, namespace=ns)
        await client.patch(WIDGETS, "w2", {"spec": {"size": 12}}, namespace=ns)
        await client.patch(WIDGETS, "w3", {"metadata": {"labels": {"team": "b"}}}, namespace=ns)
        await client.delete(WIDGETS, "w4", namespace=ns)
        await eventually(lambda: len(seen.updates) == 3 and len(seen.deletes) == 1, what="the changes")
        sizes = {n["metadata"]["name"]: (o["spec"]["size"], n["spec"]["size"]) for o, n in seen.updates}
        assert sizes == {"w0": (0, 10), "w2": (2, 12), "w3": (3, 3)}
        assert seen.deletes[0]["metadata"]["name"] == "w4" and seen.deletes[0]["spec"]["size"] == 4
        assert isinstance(cache.entry(f"{ns}/w0"), bytes)
        assert isinstance(cache.entry(f"{ns}/w2"), dict) and cache.entry(f"{ns}/w2") is not first
        assert informer.get(f"{ns}/w0")["spec"]["size"] == 10  # type: ignore[index]
        assert f"{ns}/w4" not in cache
        assert [o["metadata"]["name"] for o in cache.by_label("team", "a")] == ["w1"]
        assert [o["metadata"]["name"] for o in cache.by_label("team", "b")] == ["w0", "w2", "w3"]
        assert len(informer.by_index("namespace", ns)) == 4

        objs = informer.list()
        assert sorted((o["metadata"]["name"], o["spec"]["size"]) for o in objs) == [
            ("w0", 10), ("w1", 1), ("w2", 12), ("w3", 3)]
        assert all(isinstance(cache.entry(k), dict) for k in cache.keys())
        # Strings every object repeats are one string once decoded and kept.
        assert objs[0]["apiVersion"] is objs[1]["apiVersion"] and objs[0]["kind"] is objs[3]["kind"]
        assert objs[0]["metadata"]["namespace"] is objs[2]["metadata"]["namespace"]

        late = Seen(informer)  # a handler added after sync is told about every object
        assert sorted(o["metadata"]["name"] for o in late.adds) == ["w0", "w1", "w2", "w3"]
        assert informer.cached_versions() == sorted(
            (k, str(informer.get(k)["metadata"]["resourceVersion"])) for k in cache.keys())  # type: ignore[index]


async def test_a_transform_that_fails_on_a_read_raises_to_the_reader(client: Client, ns: str) -> None:
    await client.create(WIDGETS, widget("bad"), namespace=ns)

    def fails(obj: Obj) -> Obj:
        raise RuntimeError("transform bug")

    informer = Informer(client, WIDGETS, namespace=ns, transform=fails, backoff=fast_backoff())
    async with informer:
        await informer.wait_synced(timeout=10)  # no handler, so nothing was decoded yet
        with pytest.raises(RuntimeError, match="transform bug"):
            informer.get(f"{ns}/bad")
        assert informer.error is None and informer.has_synced


# ---- the cache on its own ------------------------------------------------------------------------------


def raw(name: str, size: int, ns: str = "n", **labels: str) -> bytes:
    return msgspec.json.encode({"apiVersion": "example.com/v1", "kind": "Widget",
                                "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"u-{name}",
                                             "resourceVersion": str(size)},
                                "spec": {"size": size}})


def test_indexes_are_built_on_first_read_and_kept_current(caplog: pytest.LogCaptureFixture) -> None:
    decoded: list[bytes] = []

    def decode(b: bytes) -> Obj:
        decoded.append(b)
        return msgspec.json.decode(b)  # type: ignore[no-any-return]

    cache = Indexer(decode=decode)
    cache.add_indexer("size", lambda o: [str(o["spec"]["size"])])
    cache.add_indexer("broken", lambda o: [o["spec"]["missing"]])
    for i in range(4):
        cache.put_entry(f"n/w{i}", raw(f"w{i}", i, app="x" if i < 2 else "y"))
    assert decoded == []  # nothing decoded, no index built: filing objects costs a dict entry
    assert cache.index_keys("size", "2") == ["n/w2"]
    assert len(decoded) == 4 and all(isinstance(cache.entry(f"n/w{i}"), bytes) for i in range(4))

    cache.put_entry("n/w2", raw("w2", 7, app="x"))  # a built index follows a change...
    cache.put(msgspec.json.decode(raw("w4", 7)))  # ...and a decoded object
    assert cache.index_keys("size", "7") == ["n/w2", "n/w4"] and cache.index_keys("size", "2") == []
    assert cache.index_keys("label", "app=x") == ["n/w0", "n/w1", "n/w2"]  # built now, from all five
    removed = cache.remove("n/w0")
    assert removed is not None and removed["metadata"]["name"] == "w0"
    assert cache.index_keys("label", "app=x") == ["n/w1", "n/w2"]
    assert cache.index_values("size") == ["1", "3", "7"]

    with caplog.at_level(logging.ERROR, logger="setpoint.agent.cache"):
        assert cache.by_index("broken", "anything") == []  # a failing index function: unindexed, logged
    assert "index function 'broken' failed" in caplog.text
    with pytest.raises(KeyError):
        cache.by_index("nope", "x")

    peeked = cache.peek("n/w1")
    assert peeked is not None and isinstance(cache.entry("n/w1"), bytes)  # decoded for the caller only
    got = cache.get("n/w1")
    assert got == peeked and got is not peeked and cache.get("n/w1") is got


def test_share_strings_makes_repeated_strings_one() -> None:
    a = share_strings(msgspec.json.decode(raw("a", 1, app="web")))
    b = share_strings(msgspec.json.decode(raw("b", 2, app="web")))
    assert a["apiVersion"] is b["apiVersion"] and a["kind"] is b["kind"]
    assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
    assert a["metadata"]["labels"]["app"] is b["metadata"]["labels"]["app"]
    assert share_strings({"metadata": "odd", "kind": 3}) == {"metadata": "odd", "kind": 3}


# ---- the client's raw list and watch ----------------------------------------------------------------------


async def test_raw_list_and_watch(client: Client, ns: str) -> None:
    for i in range(5):
        await client.create(WIDGETS, widget(f"r{i}", i), namespace=ns)
    page = await client.list_raw(WIDGETS, namespace=ns, limit=2)
    assert len(page.items) == 2 and page.continue_token and page.resource_version
    everything = await client.list_all_raw(WIDGETS, namespace=ns, limit=2)
    assert isinstance(everything, RawObjectList)
    assert everything.names == [(ns, f"r{i}") for i in range(5)]
    assert [msgspec.json.decode(b)["spec"]["size"] for b in everything.items] == list(range(5))
    assert everything.resource_version

    await client.patch(WIDGETS, "r1", {"spec": {"size": 11}}, namespace=ns)
    async with client.watch(WIDGETS, namespace=ns, resource_version=everything.resource_version,
                            idle_timeout=5) as stream:
        async for event in stream.raw():
            assert event.type == "MODIFIED"
            assert msgspec.json.decode(event.object)["spec"]["size"] == 11
            break


class Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def test_raw_list_falls_back_to_one_request_and_raw_watch_raises_errors() -> None:
    """Against a scripted server: a paginated list whose snapshot expires midway is read again in
    one request; an ERROR event in a stream raises its typed error."""
    item = {"metadata": {"name": "x", "namespace": "n"}, "spec": {}}
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        params = request.url.params
        if params.get("watch"):
            lines = [{"type": "ADDED", "object": item},
                     {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                  "code": 410, "reason": "Expired", "message": "too old"}}]
            return httpx.Response(200, stream=Chunks([msgspec.json.encode(x) + b"\n" for x in lines]))
        if params.get("continue"):
            return httpx.Response(410, json={"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                             "reason": "Expired", "message": "the continue token expired"})
        if params.get("limit"):
            return httpx.Response(200, json={"metadata": {"resourceVersion": "5", "continue": "t"}, "items": [item]})
        return httpx.Response(200, json={"metadata": {"resourceVersion": "9"}, "items": [item, item]})

    async with Client(ClientConfig("http://scripted"), transport=httpx.MockTransport(answer)) as c:
        listing = await c.list_all_raw(WIDGETS, namespace="n", limit=1)
        assert listing.resource_version == "9" and listing.names == [("n", "x"), ("n", "x")]
        assert [r.url.params.get("continue") for r in requests] == [None, "t", None]
        types = []
        with pytest.raises(Expired):
            async with c.watch(WIDGETS, namespace="n", resource_version="5") as stream:
                async for event in stream.raw():
                    types.append(event.type)
        assert types == ["ADDED"]
