"""A proxy that loses replies: the request reaches the server and is carried out, the answer never
comes back (the client sees its connection cut). The failure that makes creates repeat: tests and
benchmarks of exactly-once southbound work put it in front of a real API.

It runs its own event loop in a thread, so that a test or a benchmark can use it beside
synchronous clients and subprocesses. Replies are lost on cue (``lose(marker, times)``: the next
``times`` requests containing ``marker``) or at random (``loss``: that fraction of all replies).
It counts the requests it saw, by the AWS ``Action=`` they name when they name one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import threading
from collections import Counter

_ACTION = re.compile(rb"Action=([A-Za-z]+)")
_THROTTLED_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded"
                   b"</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>setpoint-proxy"
                   b"</RequestID></Response>")
_THROTTLED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(_THROTTLED_BODY)).encode() + b"\r\n\r\n" + _THROTTLED_BODY)


class ReplyLossProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", loss: float = 0.0,
                 seed: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.loss = loss
        self.lost = 0
        self.requests: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._marker = b""
        self._left = 0
        self._from = b""
        self._cut = False
        self._throttle_marker = b""
        self._throttle_left = 0
        self.throttled = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reply-loss-proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def lose(self, marker: bytes, times: int) -> None:
        """Lose the replies to the next ``times`` requests that contain ``marker``."""
        self._marker, self._left = marker, times

    def throttle(self, marker: bytes, times: int) -> None:
        """Answer the next ``times`` requests that contain ``marker`` with EC2's throttling error
        (503 RequestLimitExceeded) instead of passing them on: the API refused, nothing was done."""
        self._throttle_marker, self._throttle_left = marker, times

    def lose_from(self, marker: bytes) -> None:
        """Lose every reply from the first request that contains ``marker`` on (that one's
        included) until :meth:`heal`: the client acted, then lost its network."""
        self._from, self._cut = marker, False

    def heal(self) -> None:
        """Stop losing replies (cues, cuts and the random loss alike)."""
        self._from, self._cut, self._left, self.loss = b"", False, 0, 0.0
        self._throttle_left = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def _doomed(self, seen: bytes) -> bool:
        for action in _ACTION.findall(seen[-8192:]):
            self.requests[action.decode()] += 1
        if self._from and self._from in seen:
            self._cut = True
        if self._cut:
            return True
        if self._left > 0 and self._marker and self._marker in seen:
            self._left -= 1
            return True
        return self.loss > 0 and self._rng.random() < self.loss

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            cw.close()
            return
        doomed = asyncio.Event()

        async def up() -> None:
            while data := await cr.read(65536):
                if self._throttle_left > 0 and self._throttle_marker in data:
                    self._throttle_left -= 1
                    self.throttled += 1
                    cw.write(_THROTTLED)
                    await cw.drain()
                    cw.close()  # Connection: close: the request never reached the API
                    uw.close()
                    return
                if not doomed.is_set() and self._doomed(data):
                    doomed.set()
                uw.write(data)
                await uw.drain()
            uw.close()

        async def down() -> None:
            while data := await ur.read(65536):
                if doomed.is_set():
                    self.lost += 1
                    cw.transport.abort()
                    return
                cw.write(data)
                await cw.drain()
            cw.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(up(), down())
        cw.close()
        uw.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
