"""Large state: an informer back after its revision was compacted catches up by bucket digests,
fetching only what differs, and still sees what was deleted while it was away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from setpoint.agent.cache import object_key
from setpoint.agent.informer import Backoff, Informer
from setpoint.client import Client
from setpoint.testing.faultproxy import FaultProxy
from setpoint.transfer import WatchTransport
from setpoint.transfer import digest as digest_mod
from tests.agent.support import WIDGETS, eventually, prepare
from tests.conftest import widget
from tests.servers import ServerProcess

N = 2_000  # above the informer's digest threshold (1,000)


@pytest.fixture
def compacting_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data", ["--history-revisions", "5", "--history-seconds", "0",
                                            "--compact-interval", "0.2", "--watch-cache-window", "2"]).start()
    yield srv
    srv.stop()


def test_both_sides_compute_the_same_digests() -> None:
    items = [(f"ns/o{i}", str(i + 100)) for i in range(500)]
    n = digest_mod.bucket_count(len(items))
    assert n == 256
    a = digest_mod.digests(items, n)
    assert digest_mod.digests(list(reversed(items)), n) == a  # order does not matter
    changed = [*items[:-1], ("ns/o499", "9999")]
    assert digest_mod.differing(a, digest_mod.digests(changed, n)) == [digest_mod.bucket_of("ns/o499", n)]
    assert len(digest_mod.differing(a, digest_mod.digests(items[1:], n))) == 1  # a deletion shows too


async def test_catch_up_after_compaction_moves_only_what_differs(compacting_server: ServerProcess) -> None:
    srv = compacting_server
    async with Client(srv.client_config()) as direct:
        ns = await prepare(direct)
        sem = asyncio.Semaphore(32)

        async def make(i: int) -> None:
            async with sem:
                await direct.create(WIDGETS, widget(f"w{i}", i), namespace=ns)

        await asyncio.gather(*(make(i) for i in range(N)))
        host, port = srv.url.split("://", 1)[1].rsplit(":", 1)
        async with FaultProxy(host, int(port)) as proxy:
            scheme = srv.url.split("://", 1)[0]
            via = Client(srv.client_config(f"{scheme}://{proxy.address}"))
            async with via:
                informer = Informer(via, WIDGETS, namespace=ns, transport=WatchTransport(),
                                    backoff=Backoff(initial=0.05, cap=0.3))
                async with informer:
                    await informer.wait_synced(timeout=30)
                    full_list_bytes = proxy.stats.bytes_down
                assert len(informer.list()) == N

                # Away: 1% of the objects change (10 updated, 5 deleted, 5 created); history is
                # compacted past the informer's revision.
                for i in range(0, N, 200):
                    await direct.patch(WIDGETS, f"w{i}", {"spec": {"size": 10_000 + i}}, namespace=ns)
                for i in range(1, 6):
                    await direct.delete(WIDGETS, f"w{i}", namespace=ns)
                    await direct.create(WIDGETS, widget(f"new{i}", i), namespace=ns)
                stale_rv = informer.resource_version
                assert stale_rv is not None

                async def compacted() -> bool:
                    async with httpx.AsyncClient(base_url=srv.url, headers=srv.headers, verify=srv.verify) as h:
                        r = await h.get(f"/apis/example.com/v1/namespaces/{ns}/widgets",
                                        params={"watch": "1", "resourceVersion": stale_rv, "timeoutSeconds": "1"})
                    return r.status_code == 410 or b'"code":410' in r.content

                await eventually(compacted, timeout=20, what="the informer's revision compacted")
                before = proxy.stats.bytes_down
                async with informer:
                    await eventually(lambda: informer.stats.digest_syncs >= 1, timeout=30, what="a digest catch-up")

                    async def same() -> bool:
                        truth = {object_key(o): o["metadata"]["resourceVersion"]
                                 for o in (await direct.list(WIDGETS, namespace=ns)).items}
                        return truth == dict(informer.cached_versions())

                    await eventually(same, timeout=30, what="the cache equals the server")
                    moved = proxy.stats.bytes_down - before
        names = {o["metadata"]["name"] for o in informer.list()}
        assert {f"w{i}" for i in range(1, 6)}.isdisjoint(names) and {f"new{i}" for i in range(1, 6)} <= names
        assert informer.stats.lists == 1  # the first list only: the catch-up was by digests
        print(f"digest catch-up moved {moved:,} bytes; the full list {full_list_bytes:,}")
        assert moved < 0.05 * full_list_bytes, (moved, full_list_bytes)
        assert informer.stats.digest_buckets_fetched < 50


async def test_a_bad_bucket_count_is_a_400(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, verify=server.verify) as c:
        r = await c.get("/api/v1/namespaces", params={"digest": "1000"})
        assert r.status_code == 400 and "power of two" in r.json()["message"]
