"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol, with whole API responses
written in one piece.

Why: on the create path a fifth of the server's CPU went into the response, not the work:
Starlette turning the response into two ASGI messages, uvicorn checking each header of each
message, and two ``write(2)`` calls (status line and headers, then the body), each a trip
through the TCP stack that wakes the client. An API response whose body is already complete
(everything but watch streams) is written here as one buffer, straight from the
``Response``, without the ASGI messages. Requests are still parsed by uvicorn; streaming
responses, health, metrics and OpenAPI still go through ASGI.

uvicorn takes a protocol class for ``Config(http=...)``; this one overrides the single hook
where a parsed request becomes a task (``_start_asgi_task``). Should a uvicorn release drop
that hook, :func:`protocol_for` returns uvicorn's own protocol and everything still works,
only slower (``tests/api/test_protocol.py`` notices).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from setpoint.server.app import API_PREFIXES, Server
from setpoint.server.requests import APIRequest

_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # what may not appear in a header value


_NO_BODY_STATUS = frozenset({204, 304})

# After answering a request before its body was read (a 413, a 401...), the rest of the body is
# read and thrown away, up to this much, so that a client that writes its whole body before
# reading (urllib, urllib3, the official Python client) gets to read the answer instead of a
# connection reset; past it the connection is closed, so that no client can make the server
# read without end. Go's server and nginx's lingering close do the same.
DRAIN_LIMIT = 16 << 20

# A connection must deliver a request's headers within ServerOptions.header_timeout of opening
# (or of its previous response): one that sends nothing, or half a request, is closed instead of
# holding a file descriptor for ever (idle keep-alive connections are uvicorn's
# timeout_keep_alive). And one client address may hold at most max_connections_per_client open
# connections: past it new ones are closed at once, so that one client, which needs no token to
# open sockets, cannot exhaust the server's file descriptors. Open connections per address:
_per_client: dict[str, int] = {}


class APIProtocol(HttpToolsProtocol):
    """One connection. ``api`` is set on the subclass :func:`protocol_for` makes."""

    api: Server
    _drained = 0
    _close_when_read = False  # answered a "Connection: close" request before its body arrived
    _header_timer: asyncio.TimerHandle | None = None
    _counted: str | None = None
    _in_headers = False  # a request has begun and its headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        cap = self.api.options.max_connections_per_client
        if _per_client.get(host, 0) >= cap:
            self.logger.warning("closing a connection from %s: it holds %d already", host, cap)
            transport.close()
            return
        _per_client[host] = _per_client.get(host, 0) + 1
        self._counted = host
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted is not None:
            left = _per_client.get(self._counted, 1) - 1
            if left > 0:
                _per_client[self._counted] = left
            else:
                _per_client.pop(self._counted, None)
            self._counted = None
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.api.options.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Only a request whose headers did not arrive whole gets a timer: the usual request,
        # headers in one read, costs nothing here. (An idle connection after a response is
        # uvicorn's keep-alive timeout.)
        if self._in_headers and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            self._drained += len(body)
            if self._drained > DRAIN_LIMIT:
                self.transport.close()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._close_when_read and not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        self._drained = 0
        self._close_when_read = False
        self._in_headers = True
        super().on_message_begin()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # ``app`` is uvicorn's 503 responder when over the concurrency limit: leave that to it.
        if app is not self.app or not cycle.scope["path"].startswith(API_PREFIXES):
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._answer(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, cycle: RequestResponseCycle) -> None:
        """What uvicorn's ``run_asgi`` does for the API path, without the ASGI messages."""
        scope = cast(Scope, cycle.scope)
        receive, send = cast(Receive, cycle.receive), cast(Send, cycle.send)
        try:
            # Small bodies arrive with their headers: hand them over as they are.
            whole = None if cycle.more_body else bytes(cycle.body)
            response = await self.api.endpoint(APIRequest(scope, receive, send, whole))
            if isinstance(response, StreamingResponse) or response.background is not None:
                await response(scope, receive, send)
            else:
                await self._write_whole(cycle, response)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not cycle.response_started:
                await cycle.send_500_response()
            else:
                self.transport.close()
        else:
            if not cycle.response_complete and not cycle.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            cycle.on_response = lambda: None

    async def _write_whole(self, cycle: RequestResponseCycle, response: Response) -> None:
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()  # the client is not reading: wait, don't buffer without bound
        if cycle.disconnected:
            return
        status = response.status_code
        parts: list[bytes | memoryview] = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in response.raw_headers:
            if _BAD_VALUE.search(value):
                # Response splitting: a header value must never end the header block.
                raise RuntimeError(f"invalid value for HTTP header {name!r}")
            if name == b"connection" and b"close" in value.lower():
                cycle.keep_alive = False
                continue
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")
        if cycle.scope["method"] != "HEAD" and status not in _NO_BODY_STATUS:
            parts.append(response.body)
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            if cycle.more_body:
                # The client is still sending (urllib says "Connection: close" and writes its
                # whole body before it reads): closing now would reset the connection and the
                # client would never read this answer. Close once the body is in (drained, up to
                # DRAIN_LIMIT; the keep-alive timeout bounds a client that stops sending).
                self._close_when_read = True
            else:
                self.transport.close()
        cycle.on_response()


def protocol_for(server: Server) -> type[asyncio.Protocol] | str:
    """The ``http`` argument for ``uvicorn.Config`` that serves ``server``."""
    if not callable(getattr(HttpToolsProtocol, "_start_asgi_task", None)):
        return "httptools"
    return type("APIProtocol", (APIProtocol,), {"api": server})
