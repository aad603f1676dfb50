"""The connection protocol, byte by byte over raw sockets: keep-alive, pipelining, HEAD,
``Connection: close``, ``Expect: 100-continue`` and header safety, for API responses that
are written whole (``setpoint.server.protocol``)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from setpoint.server.protocol import APIProtocol
from tests.api.conftest_helpers import wpath
from tests.conftest import widget
from tests.servers import ServerProcess


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return values[0] if values else None


class Conn:
    """A keep-alive connection that reads replies framed by Content-Length."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if server.ca is not None:  # the same bytes inside TLS, as clients send them
            self.sock = ssl.create_default_context(cafile=str(server.ca)).wrap_socket(
                self.sock, server_hostname="127.0.0.1")
        self.buf = b""
        self.token = server.token

    def request(self, method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
        head = (f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\n{extra}")
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            raise ConnectionError("closed by the server")
        self.buf += data

    def read_head(self) -> tuple[int, list[tuple[str, str]]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        return status, headers

    def read(self, *, head_only: bool = False) -> Reply:
        status, headers = self.read_head()
        length = int(dict(headers).get("content-length", "0"))
        if head_only:
            return Reply(status, headers, b"")
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(status, headers, body)

    def closed_by_server(self) -> bool:
        try:
            self._fill()
        except ConnectionError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[Conn]:
    c = Conn(server)
    yield c
    c.close()


def test_installed_uvicorn_offers_the_hook_the_protocol_overrides() -> None:
    # Without it the server falls back to uvicorn's protocol: correct, but every response
    # costs two writes again. This fails first when a uvicorn upgrade removes the hook.
    assert callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))


def test_pipelined_requests_are_answered_in_order(conn: Conn, namespace: str) -> None:
    create = json.dumps(widget("piped", size=4)).encode()
    conn.sock.sendall(
        conn.request("GET", f"/api/v1/namespaces/{namespace}")
        + conn.request("POST", wpath(namespace), create)
        + conn.request("GET", wpath(namespace, "piped"))
        + conn.request("GET", wpath(namespace, "absent"))
    )
    replies = [conn.read() for _ in range(4)]
    assert [r.status for r in replies] == [200, 201, 200, 404]
    assert json.loads(replies[0].body)["metadata"]["name"] == namespace
    created, got = json.loads(replies[1].body), json.loads(replies[2].body)
    assert created["spec"] == {"size": 4, "color": "blue"}
    assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert json.loads(replies[3].body)["reason"] == "NotFound"
    for r in replies:
        assert r.header("content-type") == "application/json"
        assert r.header("date") is not None
        assert r.header("connection") is None  # kept alive


def test_head_sends_the_headers_of_get_and_no_body(conn: Conn, namespace: str) -> None:
    conn.sock.sendall(conn.request("HEAD", f"/api/v1/namespaces/{namespace}"))
    head = conn.read(head_only=True)
    assert head.status == 200 and int(head.header("content-length") or 0) > 0
    # No body followed: the next reply on the connection parses from its first byte.
    conn.sock.sendall(conn.request("GET", f"/api/v1/namespaces/{namespace}"))
    got = conn.read()
    assert got.status == 200 and len(got.body) == int(head.header("content-length") or -1)


def test_connection_close_is_honoured(conn: Conn, namespace: str) -> None:
    conn.sock.sendall(conn.request("GET", f"/api/v1/namespaces/{namespace}", extra="Connection: close\r\n"))
    r = conn.read()
    assert r.status == 200 and r.header("connection") == "close"
    assert conn.closed_by_server()


def test_http_1_0_gets_its_answer_and_the_connection_closed(conn: Conn, namespace: str) -> None:
    raw = conn.request("GET", f"/api/v1/namespaces/{namespace}").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    conn.sock.sendall(raw)
    r = conn.read()
    assert r.status == 200 and json.loads(r.body)["metadata"]["name"] == namespace
    assert conn.closed_by_server()


def test_expect_100_continue(conn: Conn, namespace: str) -> None:
    body = json.dumps(widget("expecting")).encode()
    conn.sock.sendall(conn.request("POST", wpath(namespace), b"", extra="Expect: 100-continue\r\n")
                      .replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
    status, _ = conn.read_head()
    assert status == 100  # asked for the body before answering
    conn.sock.sendall(body)
    r = conn.read()
    assert r.status == 201, r.body
    assert json.loads(r.body)["metadata"]["name"] == "expecting"


def test_an_error_before_the_body_is_read_still_frames_the_connection(conn: Conn, namespace: str) -> None:
    # Unknown token: 401 without reading the body; the body is consumed or the connection
    # closed, never parsed as the next request.
    body = json.dumps(widget("unauth")).encode()
    raw = conn.request("POST", wpath(namespace), body).replace(conn.token.encode(), b"wrong")
    conn.sock.sendall(raw + conn.request("GET", f"/api/v1/namespaces/{namespace}"))
    first = conn.read()
    assert first.status == 401 and json.loads(first.body)["reason"] == "Unauthorized"
    try:
        second = conn.read()
    except ConnectionError:
        return  # closing is a correct answer too
    assert second.status == 200


def test_field_names_with_control_characters_cannot_split_the_response(conn: Conn, namespace: str) -> None:
    obj = widget("warned")
    obj["spec"]["bad\r\nX-Injected: 1"] = 1
    obj["spec"]["euro€"] = 2
    conn.sock.sendall(conn.request("POST", wpath(namespace) + "?fieldValidation=Warn",
                                   json.dumps(obj).encode()))
    r = conn.read()
    assert r.status == 201, r.body
    assert r.header("x-injected") is None
    warnings = [v for k, v in r.headers if k == "warning"]
    assert any('spec.bad\\x0d\\x0aX-Injected: 1' in w for w in warnings), warnings
    assert any("spec.euro\\u20ac" in w for w in warnings), warnings
    assert "bad\r\nX-Injected: 1" not in json.loads(r.body)["spec"]  # pruned, as unknown fields are
    # The connection is still good.
    conn.sock.sendall(conn.request("GET", wpath(namespace, "warned")))
    assert conn.read().status == 200


async def test_keep_alive_closes_an_idle_connection_and_spares_a_busy_one() -> None:
    # One timer per idle spell, not one per request (protocol.py): a connection answered
    # request after request for several timeouts in a row stays open, and so does one waiting
    # for a slow answer; once it falls idle it is closed a timeout later, not sooner.
    async def app(scope: dict, receive: object, send: Any) -> None:
        if scope["path"] == "/slow":  # a request that takes longer than the keep-alive timeout
            await asyncio.sleep(2 * timeout)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    timeout = 0.3
    config = uvicorn.Config(app, lifespan="off", timeout_keep_alive=timeout, log_level="warning")
    config.load()
    options = SimpleNamespace(max_connections_per_client=8, header_timeout=10.0)
    proto = type("P", (APIProtocol,), {"api": SimpleNamespace(options=options)})
    loop = asyncio.get_running_loop()
    state = ServerState()
    server = await loop.create_server(
        lambda: proto(config=config, server_state=state, app_state={}, _loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 6 * timeout:
            writer.write(b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % (b"slow" if answered == 1 else b"healthz"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
            answered += 1
            last_answer = time.monotonic()
            await asyncio.sleep(timeout / 3)  # the client's think time: busy, never idle that long
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by the server
        idle = time.monotonic() - last_answer
        assert answered >= 8
        assert timeout * 0.9 <= idle < timeout + 2, idle
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
