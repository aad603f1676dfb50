"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, cheap enough to load a server.

httpx spends ~1 ms of CPU per request; this client prebuilds request bytes, parses only the status
line, Content-Length and chunked framing, and timestamps every response and stream line with
``time.monotonic_ns()`` (CLOCK_MONOTONIC is one clock for every process on the machine, so
timestamps taken in different processes compare directly).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

CRLF2 = b"\r\n\r\n"


def build_request(method: str, path: str, host: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


def _content_length(head: bytes) -> int | None:
    """Content-Length from a response head, or None when the body is chunked."""
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        return int(head[i + 17:j if j >= 0 else len(head)].strip())
    if b"\r\ntransfer-encoding: chunked" in lower:
        return None
    return 0


class Response:
    __slots__ = ("body", "head", "status", "t_ns")

    def __init__(self, status: int, head: bytes, body: bytes, t_ns: int) -> None:
        self.status = status
        self.head = head
        self.body = body
        self.t_ns = t_ns


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.head: bytes | None = None
        self.length: int | None = 0
        self.parts: list[bytes] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def request(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        self.buf += data
        while self.waiter is not None and self._parse(t):
            pass

    def _parse(self, t: int) -> bool:
        """Advance the parse of the current response; True when one completed."""
        buf = self.buf
        if self.head is None:
            end = buf.find(CRLF2)
            if end < 0:
                return False
            self.head = bytes(buf[:end])
            self.length = _content_length(self.head)
            del buf[:end + 4]
            self.parts = []
        if self.length is not None:
            if len(buf) < self.length:
                return False
            payload = bytes(buf[:self.length])
            del buf[:self.length]
        else:
            pos = 0
            done = False
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if len(buf) < eol + 2 + size + 2:
                    break
                if size == 0:
                    pos = eol + 4
                    done = True
                    break
                self.parts.append(bytes(buf[eol + 2:eol + 2 + size]))
                pos = eol + 2 + size + 2
            del buf[:pos]
            if not done:
                return False
            payload = b"".join(self.parts)
        head, self.head = self.head, None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(int(head[9:12]), head, payload, t))
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamReader(asyncio.Protocol):
    """A long-lived streaming response (watch): calls ``on_line(line, t_ns)`` for each full line."""

    def __init__(self, on_line: Callable[[bytes, int], None]) -> None:
        self.on_line = on_line
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.body = bytearray()  # de-chunked bytes not yet split into lines
        self.head: bytes | None = None
        self.chunked = False
        self.status = 0
        self.headers_received: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers_received.done():
            self.headers_received.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        t = time.monotonic_ns()
        if self.head is None:
            self.buf += data
            end = self.buf.find(CRLF2)
            if end < 0:
                return
            self.head = bytes(self.buf[:end])
            self.status = int(self.head[9:12])
            self.chunked = _content_length(self.head) is None
            data = bytes(self.buf[end + 4:])
            self.buf.clear()
            if not self.headers_received.done():
                self.headers_received.set_result(self.status)
        if self.chunked:
            self.buf += data
            buf = self.buf
            pos = 0
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if len(buf) < eol + 2 + size + 2:
                    break
                self.body += buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
            if pos:
                del buf[:pos]
        else:
            self.body += data
        body = self.body
        last = body.rfind(b"\n")
        if last < 0:
            return
        lines = bytes(body[:last]).split(b"\n")
        del body[:last + 1]
        on_line = self.on_line
        for line in lines:
            if line:
                on_line(line, t)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(host: str, port: int, request: bytes,
                      on_line: Callable[[bytes, int], None]) -> StreamReader:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: StreamReader(on_line), host, port)
    assert proto.transport is not None
    proto.transport.write(request)
    return proto


async def fetch(host: str, port: int, request: bytes) -> Response:
    """One request on a fresh connection (used for big list responses)."""
    conn = await Connection.open(host, port)
    try:
        return await conn.request(request)
    finally:
        conn.close()
