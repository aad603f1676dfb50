"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol, with whole API responses
written in one piece.

Why: on the create path a fifth of the server's CPU went into the response, not the work:
Starlette turning the response into two ASGI messages, uvicorn checking each header of each
message, and two ``write(2)`` calls (status line and headers, then the body), each a trip
through the TCP stack that wakes the client. An API response whose body is already complete
(everything but watch streams) is written here as one buffer, straight from the
``Response``, without the ASGI messages. Requests are still parsed by uvicorn; streaming
responses, health, metrics and OpenAPI still go through ASGI.

uvicorn takes a protocol class for ``Config(http=...)``; this one overrides the hook where a
parsed request becomes a task (``_start_asgi_task``). Should a uvicorn release drop that hook,
:func:`protocol_for` returns uvicorn's own protocol and everything still works, only slower
(``tests/api/test_protocol.py`` notices).

The parser's callbacks are uvicorn's (0.55) with this protocol's additions in the same frame
rather than around a ``super()`` call, and the keep-alive timer is armed once per idle spell
instead of once per request: on the create path these were ~2 µs of ~80.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from typing import Any, cast

import httptools
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
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
        self._busy()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    # ---- keep-alive: an idle connection is closed after timeout_keep_alive ---------------------
    # uvicorn arms a timer when a response is complete and cancels it when data arrives: a timer
    # per request. Here the time the connection fell idle is noted instead, and one timer, armed
    # when none is, looks at it when it fires: closes the connection if it has been idle that
    # long, waits for the rest of the time if it fell idle later, and lets go if it is busy (the
    # next response arms another).

    _idle_since: float | None = None

    def _busy(self) -> None:
        self._idle_since = None

    _unset_keepalive_if_required = _busy  # what uvicorn calls where it would cancel the timer

    def _idle(self) -> None:
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_check)

    def _keep_alive_check(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None or self.transport.is_closing():
            return
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_check)
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timer above."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle()

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

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        # Only a request whose headers did not arrive whole gets a timer: the usual request,
        # headers in one read, costs nothing here. (An idle connection after a response is the
        # keep-alive timeout's.)
        if self._in_headers and self._header_timer is None and not self.transport.is_closing():
            self._arm_header_timer()

    def on_message_begin(self) -> None:
        self._drained = 0
        self._close_when_read = False
        self._in_headers = True
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_timer is not None:
            self._disarm_header_timer()
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        scope["path"] = root + path if root else path
        scope["raw_path"] = root.encode("ascii") + raw_path if root else raw_path
        scope["query_string"] = parsed_url.query or b""
        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing = self.cycle
        self.cycle = cycle = RequestResponseCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the one before is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_body(self, body: bytes) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle = self.cycle
        if cycle.response_complete:
            self._drained += len(body)
            if self._drained > DRAIN_LIMIT:
                self.transport.close()
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle = self.cycle
        if not cycle.response_complete:
            cycle.more_body = False
            cycle.message_event.set()
        if self._close_when_read and not self.transport.is_closing():
            self.transport.close()

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
