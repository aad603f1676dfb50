"""The etcd backend: the conformance suite against a real etcd, plus what only etcd has (its
revision numbering, compaction found by probing, several members)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from setpoint.store import Compacted, open_backend
from setpoint.store.etcd import EtcdBackend
from tests.backends.services import EtcdCluster

from .conformance import BackendConformance, aclose, assert_contiguous, collect


class EtcdHarness:
    """One etcd per store name: setpoint's revisions are etcd's, so every store needs an etcd of
    its own to start at revision 0. An etcd none of whose backends is open any more is stopped
    when the next one starts (its data stays; opening the name again restarts it)."""

    watch_buffer = 512

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clusters: dict[str, EtcdCluster] = {}
        self.backends: dict[str, list[EtcdBackend]] = {}

    async def open(self, name: str = "main") -> EtcdBackend:
        for other, backends in self.backends.items():
            if other != name and all(b._life.state == "closed" for b in backends):
                self.clusters[other].stop()
        cluster = self.clusters.get(name)
        if cluster is None:
            cluster = self.clusters[name] = EtcdCluster(self.directory / name)
        if any(m.proc is None for m in cluster.members):
            await asyncio.to_thread(cluster.start)
        backend = EtcdBackend(cluster.endpoints, watch_buffer=self.watch_buffer)
        await backend.start()
        self.backends.setdefault(name, []).append(backend)
        return backend

    def stop(self) -> None:
        for cluster in self.clusters.values():
            cluster.stop()


@pytest.fixture
def etcd_harness(tmp_path: Path) -> Iterator[EtcdHarness]:
    h = EtcdHarness(tmp_path)
    try:
        yield h
    finally:
        h.stop()


class TestEtcdConformance(BackendConformance):
    @pytest.fixture
    def harness(self, etcd_harness: EtcdHarness) -> EtcdHarness:
        return etcd_harness


def test_open_backend_urls(tmp_path: Path) -> None:
    b = open_backend("etcd://10.0.0.1:2379,10.0.0.2:2379", tmp_path)
    assert isinstance(b, EtcdBackend)
    assert b.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    tls = open_backend("etcds://etcd.example:2379", tmp_path)
    assert isinstance(tls, EtcdBackend) and tls.endpoints == ["https://etcd.example:2379"]


async def test_revisions_are_etcds_minus_one(etcd_harness: EtcdHarness) -> None:
    b = await etcd_harness.open()
    try:
        assert await b.current_revision() == 0  # an empty etcd is at its revision 1
        kv = await b.create("/a", b"x")
        assert kv.mod_revision == 1
    finally:
        await b.close()


async def test_compaction_found_by_a_new_client(etcd_harness: EtcdHarness) -> None:
    """A server that starts later (or another server) learns the compacted revision from etcd."""
    a = await etcd_harness.open("shared")
    for i in range(40):
        await a.create(f"/k/{i}", b"x")
    await a.compact(27)
    b = await etcd_harness.open("shared")
    try:
        assert await b.compacted_revision() == 27
        with pytest.raises(Compacted) as err:
            await b.get("/k/1", 27)
        assert err.value.compacted == 27
        assert (await b.get("/k/27", 28)) is not None
        # Compacted further through a: b finds out on its next read of the past.
        await a.compact(35)
        with pytest.raises(Compacted) as err:
            await b.get("/k/1", 30)
        assert err.value.compacted == 35
        with pytest.raises(Compacted):
            await anext(b.watch("/k/", 30))
    finally:
        await a.close()
        await b.close()


async def test_two_clients_one_revision_sequence(etcd_harness: EtcdHarness) -> None:
    a = await etcd_harness.open("two")
    b = await etcd_harness.open("two")
    try:
        base = await a.current_revision()
        wa, wb = a.watch("/", base), b.watch("/", base)
        try:
            acks = await asyncio.gather(*(c.create(f"/two/{i}", b"x") for i in range(100) for c in (a, b)),
                                        return_exceptions=True)
            assert sum(not isinstance(r, Exception) for r in acks) == 100
            for stream in (wa, wb):
                assert_contiguous(await collect(stream, base + 100), base, base + 100)
        finally:
            await aclose(wa)
            await aclose(wb)
    finally:
        await a.close()
        await b.close()


async def test_quiet_watch_is_renewed_without_losing_its_place(etcd_harness: EtcdHarness) -> None:
    """A watch stream silent for watch_idle seconds is replaced by a new one from the last
    revision received (a dead connection could otherwise hang it for good)."""
    from .conformance import wait_until

    await etcd_harness.open("idle")
    cluster = etcd_harness.clusters["idle"]
    b = EtcdBackend(cluster.endpoints, watch_idle=0.2)
    await b.start()
    try:
        first = await b.create("/i/a", b"1")
        stream = b.watch("/i/", 0)
        assert [e.kv for e in await anext(stream)] == [first]
        pending = asyncio.ensure_future(anext(stream))

        async def renewed() -> bool:
            return b.watch_streams_opened >= 3

        await wait_until(renewed, "the quiet stream to be renewed twice")
        second = await b.create("/i/b", b"2")
        assert [e.kv for e in await asyncio.wait_for(pending, 10)] == [second]
        await aclose(stream)
    finally:
        await b.close()
