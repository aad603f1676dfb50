"""The store service and its client: the whole storage contract through a Unix socket, and what
a lost connection does to calls and watches in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from setpoint.store import Backend, KeyExists, Unavailable
from setpoint.store.remote import RemoteBackend
from setpoint.store.service import StoreService
from setpoint.store.sqlite import SQLiteBackend

from .conformance import DEADLINE, BackendConformance


class _Served(RemoteBackend):
    """A client that also owns the service and the SQLite store it was opened over."""

    def __init__(self, path: Path, service: StoreService, store: SQLiteBackend, watch_buffer: int) -> None:
        super().__init__(path, watch_buffer=watch_buffer)
        self.service = service
        self.store = store

    async def close(self) -> None:
        await super().close()
        await self.service.close()
        await self.store.close()


class RemoteHarness:
    watch_buffer = 512

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def open(self, name: str = "main") -> Backend:
        store = SQLiteBackend(self.directory / f"{name}.db", watch_page=64)
        await store.start()
        service = StoreService(store, self.directory / f"{name}.sock")
        await service.start()
        backend = _Served(service.path, service, store, self.watch_buffer)
        await backend.start()
        return backend


class TestRemoteConformance(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> RemoteHarness:
        return RemoteHarness(tmp_path)


async def test_a_lost_connection_fails_calls_and_watches_and_says_so(tmp_path: Path) -> None:
    store = SQLiteBackend(tmp_path / "s.db")
    await store.start()
    service = StoreService(store, tmp_path / "s.sock")
    await service.start()
    client = RemoteBackend(service.path)
    await client.start()
    try:
        await client.create("/a/1", b"x")
        with pytest.raises(KeyExists):
            await client.create("/a/1", b"y")
        stream = client.watch("/a/", await client.current_revision())
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        await service.close()  # the supervisor went away
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(Unavailable):
                await pending
            assert client.lost is not None
            await client.lost
        with pytest.raises(Unavailable):
            await client.get("/a/1")
        await stream.aclose()
    finally:
        await client.close()
        await store.close()


async def test_the_socket_is_the_owners_alone(tmp_path: Path) -> None:
    store = SQLiteBackend(tmp_path / "s.db")
    await store.start()
    service = StoreService(store, tmp_path / "s.sock")
    await service.start()
    try:
        assert service.path.stat().st_mode & 0o077 == 0
    finally:
        await service.close()
        await store.close()
    assert not service.path.exists()


async def test_start_without_a_service_is_unavailable(tmp_path: Path) -> None:
    client = RemoteBackend(tmp_path / "none.sock")
    with pytest.raises(Unavailable, match="cannot connect"):
        await client.start()


async def test_calls_past_the_pending_limit_wait_their_turn(tmp_path: Path) -> None:
    store = SQLiteBackend(tmp_path / "s.db")
    await store.start()
    service = StoreService(store, tmp_path / "s.sock")
    await service.start()
    client = RemoteBackend(service.path, max_pending=2)
    await client.start()
    most = 0
    send = client._send

    def counting_send(message: list[object]) -> None:
        nonlocal most
        most = max(most, client.in_flight)
        send(message)

    client._send = counting_send  # type: ignore[method-assign]
    try:
        kvs = await asyncio.gather(*(client.create(f"/p/{i}", b"x") for i in range(50)))
        revisions = sorted(kv.mod_revision for kv in kvs)
        assert revisions == list(range(revisions[0], revisions[0] + 50))
        assert client.in_flight == 0 and most == 2
        assert [kv.key for kv in (await client.list("/p/")).items] == sorted(f"/p/{i}" for i in range(50))
    finally:
        await client.close()
        await service.close()
        await store.close()
