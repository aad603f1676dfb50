"""A kept-alive connection the server closes just as the client sends on it (the server's idle
timeout and the client's reuse crossing): a read is sent again, a write is not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from setpoint.client import Client, ClientConfig, ConnectionFailed
from tests.agent.support import WIDGETS


class ClosesSecondRequest:
    """Answers the first request of each connection (keeping it alive), and closes the connection,
    unanswered, when a second request arrives on it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                self.requests.append(line)
                if n == 1:
                    return  # closed without an answer
                body = json.dumps({"apiVersion": "example.com/v1", "kind": "Widget",
                                   "metadata": {"name": "w", "namespace": "ns", "resourceVersion": "1"}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def stale() -> AsyncIterator[tuple[ClosesSecondRequest, Client]]:
    s = ClosesSecondRequest()
    s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    port = s.server.sockets[0].getsockname()[1]
    async with Client(ClientConfig(f"http://127.0.0.1:{port}")) as client:
        yield s, client
    s.server.close()
    await s.server.wait_closed()


async def test_a_read_on_a_connection_closed_under_it_is_sent_again(
        stale: tuple[ClosesSecondRequest, Client]) -> None:
    server, client = stale
    for _ in range(3):  # each second use of a connection finds it closed
        obj = await client.get(WIDGETS, "w", namespace="ns")
        assert obj["metadata"]["name"] == "w"
    gets = [r for r in server.requests if r.startswith("GET ")]
    assert len(gets) > 3, "no connection was reused: the test proved nothing"


async def test_a_write_on_a_connection_closed_under_it_is_not_sent_again(
        stale: tuple[ClosesSecondRequest, Client]) -> None:
    server, client = stale
    await client.get(WIDGETS, "w", namespace="ns")  # leaves a kept-alive connection
    with pytest.raises(ConnectionFailed):
        await client.patch(WIDGETS, "w", {"spec": {"size": 1}}, namespace="ns")
    assert [r.split()[0] for r in server.requests] == ["GET", "PATCH"]


@pytest.mark.parametrize("obj", [b"null", b"[1]"])
async def test_a_watch_event_whose_object_is_not_an_object_is_a_connection_failure(obj: bytes) -> None:
    """Read raw (the informer's way) as iterated: a broken stream to resume, not a crash later."""
    line = b'{"type":"ADDED","object":' + obj + b"}\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(line)).encode() + b"\r\n\r\n" + line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Client(ClientConfig(f"http://127.0.0.1:{port}")) as client:
            for read in ("raw", "iterate"):
                stream = client.watch(WIDGETS, namespace="ns")
                with pytest.raises(ConnectionFailed):
                    if read == "raw":
                        async for _ in stream.raw():
                            pass
                    else:
                        async for _ in stream:
                            pass
    finally:
        server.close()
        await server.wait_closed()
