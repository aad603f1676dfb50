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


class _Store:
    """A store, its service and a client of it, for one test."""

    def __init__(self, tmp_path: Path, max_pending: int = 1) -> None:
        self.tmp_path = tmp_path
        self.max_pending = max_pending

    async def __aenter__(self) -> RemoteBackend:
        self.store = SQLiteBackend(self.tmp_path / "s.db")
        await self.store.start()
        self.service = StoreService(self.store, self.tmp_path / "s.sock")
        await self.service.start()
        self.client = RemoteBackend(self.service.path, max_pending=self.max_pending)
        await self.client.start()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.service.close()
        await self.store.close()


async def test_a_lost_connection_fails_calls_and_watches_and_says_so(tmp_path: Path) -> None:
    owner = _Store(tmp_path, max_pending=64)
    async with owner as client:
        service = owner.service
        await client.create("/a/1", b"x")
        with pytest.raises(KeyExists):
            await client.create("/a/1", b"y")
        stream = client.watch("/a/", await client.current_revision())
        pending = asyncio.ensure_future(anext(stream))
        await service.close()  # the supervisor went away
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(Unavailable):
                await pending
            assert client.lost is not None
            await client.lost
        with pytest.raises(Unavailable):
            await client.get("/a/1")
        await stream.aclose()


async def test_the_socket_is_the_owners_alone(tmp_path: Path) -> None:
    owner = _Store(tmp_path)
    async with owner:
        assert owner.service.path.stat().st_mode & 0o077 == 0
    assert not owner.service.path.exists()


async def test_start_without_a_service_is_unavailable(tmp_path: Path) -> None:
    client = RemoteBackend(tmp_path / "none.sock")
    with pytest.raises(Unavailable, match="cannot connect"):
        await client.start()


async def test_calls_past_the_pending_limit_wait_their_turn(tmp_path: Path) -> None:
    async with _Store(tmp_path, max_pending=2) as client:
        await _fifty_creates_two_at_a_time(client)


async def _fifty_creates_two_at_a_time(client: RemoteBackend) -> None:
    most = 0
    send = client._send

    def counting_send(message: list[object]) -> None:
        nonlocal most
        most = max(most, client.in_flight)
        send(message)

    client._send = counting_send  # type: ignore[method-assign]
    kvs = await asyncio.gather(*(client.create(f"/p/{i}", b"x") for i in range(50)))
    revisions = sorted(kv.mod_revision for kv in kvs)
    assert revisions == list(range(revisions[0], revisions[0] + 50))
    assert client.in_flight == 0 and most == 2
    assert [kv.key for kv in (await client.list("/p/")).items] == sorted(f"/p/{i}" for i in range(50))


async def test_long_listings_come_in_pages_at_one_revision(tmp_path: Path) -> None:
    from setpoint.store._wire import LIST_PAGE

    async with _Store(tmp_path) as client:
        total = 2 * LIST_PAGE + 10
        for i in range(0, total, 50):
            await asyncio.gather(*(client.create(f"/l/{j:05d}", b"v") for j in range(i, min(i + 50, total))))
        at = await client.current_revision()
        await client.create("/l/later", b"v")  # after ``at``: not in a listing at ``at``
        whole = await client.list("/l/", revision=at)
        assert [kv.key for kv in whole.items] == [f"/l/{j:05d}" for j in range(total)]
        assert whole.revision == at and not whole.more
        cut = await client.list("/l/", limit=LIST_PAGE + 5)
        assert len(cut.items) == LIST_PAGE + 5 and cut.more
        exact = await client.list("/l/", limit=total + 1)
        assert len(exact.items) == total + 1 and not exact.more


async def test_a_cancelled_caller_waiting_for_a_slot_leaves_the_others_waiting(tmp_path: Path) -> None:
    async with _Store(tmp_path) as client:
        # Loop turns, not time: each ``sleep(0)`` lets the tasks just made run up to their first
        # wait, before any reply can arrive (replies need the socket, a later turn).
        first = asyncio.ensure_future(client.create("/c/1", b"x"))
        await asyncio.sleep(0)
        assert client.in_flight == 1  # it took the only slot
        waiting = [asyncio.ensure_future(client.create(f"/c/{i}", b"x")) for i in (2, 3)]
        await asyncio.sleep(0)
        assert client.in_flight == 1 and client._room is not None  # both wait for the slot
        waiting[0].cancel()
        async with asyncio.timeout(DEADLINE):
            assert (await first).key == "/c/1"
            assert (await waiting[1]).key == "/c/3"
        assert waiting[0].cancelled()


async def test_close_answers_the_calls_in_flight_and_is_not_a_lost_connection(tmp_path: Path) -> None:
    async with _Store(tmp_path) as client:
        pending = asyncio.ensure_future(client.create("/f/1", b"x"))
        await asyncio.sleep(0)  # one loop turn (not time): the create is queued, its reply not back
        assert client.in_flight == 1
        await client.close()
        assert (await pending).key == "/f/1"
        assert client.lost is not None and not client.lost.done()


async def test_a_watch_that_cannot_be_sent_fails_instead_of_waiting(tmp_path: Path) -> None:
    async with _Store(tmp_path) as client:
        stream = client.watch("/w/\ud800", 0)
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(ValueError):
                await anext(stream)
        await client.create("/w/ok", b"x")  # the connection is fine


async def test_a_reply_too_big_for_a_frame_is_an_error_for_that_call_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from setpoint.store import _wire

    owner = _Store(tmp_path)
    async with owner as client:
        await client.create("/b/small", b"x")
        monkeypatch.setattr(_wire, "MAX_FRAME", 2048)
        await owner.store.create("/b/big", b"x" * 4096)  # past the client: only the reply is big
        with pytest.raises(ValueError, match="over the limit"):
            await client.get("/b/big")
        assert (await client.get("/b/small")).value == b"x"  # type: ignore[union-attr]  # the connection carries on


async def test_bad_requests_get_an_error_and_bad_frames_lose_only_their_connection(tmp_path: Path) -> None:
    from setpoint.store import _wire

    owner = _Store(tmp_path)
    async with owner as client:
        reader, writer = await asyncio.open_unix_connection(str(owner.service.path))
        try:
            # A create without its value, an operation that does not exist, and writes whose
            # arguments have the wrong types (an integer would have become that many zero bytes).
            writer.write(_wire.frame([[1, "create", "/k"], [2, "frobnicate"], [3, "create", "/n", 5],
                                      [4, "create", "/s", "text"], [5, "update", "/k", b"v", "1"]]))
            frames = _wire.Reader()
            replies: dict[int, list[object]] = {}
            async with asyncio.timeout(DEADLINE):
                while len(replies) < 5:
                    for messages in frames.feed(await reader.read(65536)):
                        replies.update((m[0], m) for m in messages)
            assert replies[1][1] == _wire.ERROR and replies[1][2] == "ValueError" and "create" in str(replies[1][3])
            assert replies[2][1] == _wire.ERROR and "frobnicate" in str(replies[2][3])
            for rid in (3, 4, 5):
                assert replies[rid][1] == _wire.ERROR and "bad request" in str(replies[rid][3]), replies[rid]
            # A length no client sends: that connection is dropped, the store serves the others.
            writer.write(b"\xff\xff\xff\xff")
            async with asyncio.timeout(DEADLINE):
                assert await reader.read() == b""
        finally:
            writer.close()
        assert [await client.get(k) for k in ("/k", "/n", "/s")] == [None, None, None]
        assert (await client.create("/k", b"v")).key == "/k"
