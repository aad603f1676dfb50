"""An AWS API on loopback (moto's server), and a proxy in front of it that loses the replies of
chosen calls: the request reaches the API and is carried out, the answer never comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_SESSION_TOKEN": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **CREDENTIALS})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LosingProxy:
    """A TCP proxy in a thread of its own; ``lose(b"Action=RunInstances", n)`` makes the next
    ``n`` connections that send that marker lose the reply (the request is forwarded and served)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._marker = b""
        self._left = 0
        self.lost = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def lose(self, marker: bytes, times: int) -> None:
        self._marker, self._left = marker, times

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        poisoned = asyncio.Event()
        seen = bytearray()

        async def up() -> None:
            while data := await cr.read(65536):
                seen.extend(data)
                del seen[:-4096]
                if self._left > 0 and self._marker and self._marker in seen:
                    self._left -= 1
                    poisoned.set()
                uw.write(data)
                await uw.drain()
            uw.close()

        async def down() -> None:
            while data := await ur.read(65536):
                if poisoned.is_set():
                    self.lost += 1
                    cw.transport.abort()  # the reply is lost: the client sees the connection cut
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
