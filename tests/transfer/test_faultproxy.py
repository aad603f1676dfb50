"""The fault proxy itself, against a real NATS server and a real TCP echo service: the faults it
claims to inject are the faults a client sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

from setpoint.testing.faultproxy import FaultProxy, NatsFaults
from setpoint.transfer.natsserver import NatsServer
from tests.agent.support import eventually


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@dataclass
class Echo:
    """What the echo server behind the proxy saw, to tell what crossed the proxy and what did not."""

    port: int = 0
    connections: int = 0
    ended: int = 0  # connections that ended (closed or reset by the proxy's side)
    received: bytearray = field(default_factory=bytearray)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    echo = Echo()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        echo.connections += 1
        try:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    echo.received += data
                    w.write(data)
                    await w.drain()
        finally:
            echo.ended += 1
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    echo.port = server.sockets[0].getsockname()[1]
    try:
        yield echo
    finally:
        server.close()


async def _through(proxy: FaultProxy, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection through ``proxy`` that has carried ``first`` there and back."""
    r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
    w.write(first)
    assert await asyncio.wait_for(r.readexactly(len(first)), 5) == first
    return r, w


async def _ended(r: asyncio.StreamReader) -> bool:
    """The connection was closed or reset under the client (a deadline, not a wait: 5 s)."""
    try:
        return await asyncio.wait_for(r.read(100), 5) == b""
    except ConnectionError:
        return True


async def _silent(r: asyncio.StreamReader) -> bool:
    """Neither bytes nor an end arrive. An absence can only be watched for a while: 0.3 s, long
    against a loopback round trip, which the callers have just made on another connection."""
    try:
        await asyncio.wait_for(r.read(100), 0.3)
    except TimeoutError:
        return True
    return False


async def _received(nats_url: str, publisher_url: str, n: int, quiet: float = 1.0) -> list[int]:
    """Subscribe through ``nats_url``, publish 0..n-1 directly, return what arrived in order.
    Ends when the last published number arrived or nothing more came for ``quiet`` seconds
    after a flush round trip proved everything was sent."""
    sub_conn = await nats.connect(nats_url, allow_reconnect=False)
    pub_conn = await nats.connect(publisher_url, allow_reconnect=False)
    got: list[int] = []
    arrived = asyncio.Event()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        got.append(int(msg.data))
        arrived.set()

    try:
        await sub_conn.subscribe("t.frames", cb=on_msg)
        await sub_conn.flush()
        for i in range(n):
            await pub_conn.publish("t.frames", str(i).encode())
        await pub_conn.flush()
        while True:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), quiet)
            except TimeoutError:
                return got
    finally:
        await sub_conn.close()
        await pub_conn.close()


async def test_nats_frames_pass_untouched_without_faults(nats_server: NatsServer) -> None:
    async with FaultProxy("127.0.0.1", nats_server.port, nats=NatsFaults()) as proxy:
        got = await _received(f"nats://{proxy.address}", nats_server.url, 200, quiet=0.5)
    assert got == list(range(200))
    assert proxy.stats.frames == 200 and proxy.stats.dropped == 0


async def test_nats_frames_dropped_duplicated_reordered(nats_server: NatsServer) -> None:
    faults = NatsFaults(drop=0.2, duplicate=0.1, reorder=0.1, seed=7)
    async with FaultProxy("127.0.0.1", nats_server.port, nats=faults) as proxy:
        got = await _received(f"nats://{proxy.address}", nats_server.url, 500, quiet=0.5)
    s = proxy.stats
    assert s.frames == 500
    assert 50 < s.dropped < 150 and s.duplicated > 10 and s.reordered > 10
    # Every frame that was not dropped arrived, the duplicated ones twice, and the stream is
    # still well-formed (the client decoded every payload as the number it was).
    assert len(got) == 500 - s.dropped + s.duplicated
    assert len(set(got)) == 500 - s.dropped
    assert got != sorted(got)  # some arrived out of order


async def test_stall_holds_bytes_and_resume_delivers_them() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"one")
        assert await asyncio.wait_for(r.readexactly(3), 5) == b"one"
        proxy.stall()
        w.write(b"two")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(3), 0.3)
        proxy.resume()
        assert await asyncio.wait_for(r.readexactly(3), 5) == b"two"
        w.close()


async def test_cut_closes_open_connections_and_accepts_new_ones() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"x")
        await asyncio.wait_for(r.readexactly(1), 5)
        assert proxy.cut() == 1
        assert await asyncio.wait_for(r.read(10), 5) == b""  # the client sees the connection end
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w2.write(b"y")
        assert await asyncio.wait_for(r2.readexactly(1), 5) == b"y"
        w2.close()
        w.close()


async def test_partition_heals_by_itself() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.partition(0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"z")
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"z"
        assert loop.time() - t0 >= 0.45  # nothing got through while partitioned
        assert not proxy.stalled
        w.close()


async def test_refuse_closes_every_connection_and_each_new_one_until_resume() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        r, _ = await _through(proxy, b"a")
        assert proxy.refuse() == 1
        assert await _ended(r)
        await eventually(lambda: echo.ended == 1, what="the server to see the connection end")
        for _ in range(3):  # accepted, and closed at once, however often the client tries
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
            w2.write(b"b")
            assert await _ended(r2)
            w2.close()
        assert proxy.stats.refused == 3 and proxy.stats.connections == 4
        assert echo.connections == 1 and bytes(echo.received) == b"a"
        proxy.resume()
        await _through(proxy, b"c")
        assert echo.connections == 2


async def test_refuse_closes_what_a_partition_holds_and_outlasts_the_partition() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.partition(1.0)
        r, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        await eventually(lambda: proxy.stats.connections == 1, what="the proxy to accept")
        assert proxy.refuse() == 1  # held at the partition's gate, and closed all the same
        assert await _ended(r)
        await eventually(lambda: not proxy.stalled, what="the partition to heal")
        r2, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _ended(r2)  # healing the partition did not end the refusal
        assert echo.connections == 0
        proxy.resume()
        await _through(proxy, b"a")


async def test_freeze_kills_open_connections_for_good_and_new_ones_until_unfreeze() -> None:
    async with echo_server() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
        a_r, a_w = await _through(proxy, b"1")
        _, b_w = await _through(proxy, b"2")
        proxy.freeze()
        proxy.resume()  # ends stalls and refusals, not a freeze
        a_w.write(b"x")
        b_w.close()  # b's end must not cross either
        held_r, held_w = await asyncio.open_connection("127.0.0.1", proxy.port)
        held_w.write(b"y")
        await eventually(lambda: proxy.stats.connections == 3, what="the proxy to accept during the freeze")
        proxy.unfreeze()
        c_r, c_w = await _through(proxy, b"3")  # new connections are forwarded again
        a_w.write(b"z")
        held_w.write(b"w")
        c_w.write(b"4")
        assert await asyncio.wait_for(c_r.readexactly(1), 5) == b"4"
        # Nothing crossed the frozen connections or the one held during the freeze, either way,
        # and none of them was closed; the server heard of none of it.
        assert await _silent(a_r) and await _silent(held_r)
        assert sorted(echo.received) == sorted(b"1234")
        assert echo.connections == 3 and echo.ended == 0  # a, b and c; b's end is lost
        assert proxy.cut() == 4  # cut still closes them: a, b, the held one, and c
        assert await _ended(a_r) and await _ended(held_r) and await _ended(c_r)
        await eventually(lambda: echo.ended == 3, what="the server to see a, b and c end")


async def test_for_url_keeps_the_scheme_and_its_url_reaches_the_same_server() -> None:
    async with echo_server() as echo, FaultProxy.for_url(f"https://127.0.0.1:{echo.port}") as proxy:
        assert (proxy.target_host, proxy.target_port) == ("127.0.0.1", echo.port)
        assert proxy.url == f"https://127.0.0.1:{proxy.port}"
        host, port = proxy.url.removeprefix("https://").rsplit(":", 1)
        r, w = await asyncio.open_connection(host, int(port))
        w.write(b"a")
        assert await asyncio.wait_for(r.readexactly(1), 5) == b"a"
        w.close()
    assert FaultProxy.for_url("nats://[::1]:4222").target_host == "::1"
    with pytest.raises(ValueError):
        FaultProxy.for_url("https://example.com")


def test_nats_server_restart_keeps_its_port(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "n") as server:
        port = server.port
        assert port > 0
        server.restart()
        assert server.port == port and server.proc is not None and server.proc.poll() is None
    assert server.proc is None
