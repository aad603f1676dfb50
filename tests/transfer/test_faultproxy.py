"""The fault proxy itself, against a real NATS server and a real TCP echo service: the faults it
claims to inject are the faults a client sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from setpoint.testing.faultproxy import FaultProxy, NatsFaults
from setpoint.transfer.natsserver import NatsServer


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


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
    async with echo_server() as port, FaultProxy("127.0.0.1", port) as proxy:
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
    async with echo_server() as port, FaultProxy("127.0.0.1", port) as proxy:
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
    async with echo_server() as port, FaultProxy("127.0.0.1", port) as proxy:
        proxy.partition(0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"z")
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"z"
        assert loop.time() - t0 >= 0.45  # nothing got through while partitioned
        assert not proxy.stalled
        w.close()


def test_nats_server_restart_keeps_its_port(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "n") as server:
        port = server.port
        assert port > 0
        server.restart()
        assert server.port == port and server.proc is not None and server.proc.poll() is None
    assert server.proc is None
