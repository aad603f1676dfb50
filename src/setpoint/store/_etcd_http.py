"""A small HTTP/1.1 keep-alive client for etcd's JSON gateway: POST a body, read a JSON answer.

httpx costs about a millisecond of CPU per request, which made it the bottleneck of the etcd
backend (a server spends far less than that on a write of its own). The gateway needs little
of HTTP: POST with a Content-Length, answers with a Content-Length (or chunked, which is read
too), keep-alive. This client does exactly that over asyncio streams, with a bounded pool of
connections per endpoint.

A request that fails before it could be sent (connect refused, DNS) raises
:class:`ConnectFailed`: nothing reached the server, so it may be sent elsewhere. Any other
failure raises :class:`RequestFailed`: the server may or may not have acted on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from urllib.parse import urlsplit


class HTTPError(Exception):
    pass


class ConnectFailed(HTTPError):
    """The request was not sent."""


class RequestFailed(HTTPError):
    """The request may have been sent; its outcome is unknown."""


class _Endpoint:
    def __init__(self, url: str, max_connections: int, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = parts.netloc.encode()
        self.ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self.slots = asyncio.Semaphore(max_connections)


class Client:
    def __init__(self, timeout: float, max_connections: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self._max = max_connections
        self._ssl = ssl_context
        self._endpoints: dict[str, _Endpoint] = {}
        self._closed = False

    def _endpoint(self, url: str) -> _Endpoint:
        ep = self._endpoints.get(url)
        if ep is None:
            ep = self._endpoints[url] = _Endpoint(url, self._max, self._ssl)
        return ep

    async def post(self, url: str, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``url + path``; returns (status, response body)."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        ep = self._endpoint(url)
        request = (
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + ep.authority
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body
        )
        async with ep.slots:
            try:
                async with asyncio.timeout(self.timeout):
                    conn = ep.idle.popleft() if ep.idle else None
                    if conn is None:
                        try:
                            conn = await asyncio.open_connection(ep.host, ep.port, ssl=ep.ssl)
                        except (OSError, ssl.SSLError) as exc:
                            raise ConnectFailed(f"cannot connect to {url}: {exc}") from exc
                    reader, writer = conn
                    try:
                        writer.write(request)
                        status, keep, answer = await _read_response(reader)
                    except BaseException:
                        writer.close()
                        raise
            except TimeoutError as exc:
                raise RequestFailed(f"{url}{path}: no answer within {self.timeout}s") from exc
            except (OSError, asyncio.IncompleteReadError, ValueError, ssl.SSLError) as exc:
                raise RequestFailed(f"{url}{path}: {type(exc).__name__}: {exc}") from exc
            if keep and not self._closed:
                ep.idle.append(conn)
            else:
                writer.close()
            return status, answer

    async def aclose(self) -> None:
        self._closed = True
        for ep in self._endpoints.values():
            while ep.idle:
                _, writer = ep.idle.popleft()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP response: {lines[0][:100]!r}")
    status = int(parts[1])
    length = -1
    chunked = False
    keep = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = value.strip().lower() == b"keep-alive" or (keep and value.strip().lower() != b"close")
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from the gateway
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, keep, bytes(body)
    if length < 0:
        return status, False, await reader.read()
    return status, keep, await reader.readexactly(length)
