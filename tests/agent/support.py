"""Helpers for the client and informer tests: waiting on conditions, a faulty TCP proxy, fixtures' bits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from setpoint.client import AlreadyExists, Client, Resource
from tests.conftest import WIDGET_CRD
from tests.servers import ServerProcess

T = TypeVar("T")

WIDGETS = Resource("example.com", "v1", "widgets", namespaced=True, kind="Widget")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False,
                kind="CustomResourceDefinition")


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def client_for(server: ServerProcess, url: str | None = None, **kw: Any) -> Client:
    return Client(server.client_config(url, **kw))


async def prepare(client: Client, namespace: str | None = None) -> str:
    """Make sure the Widget kind exists; create a fresh namespace and return its name."""
    with contextlib.suppress(AlreadyExists):
        await client.create(CRDS, WIDGET_CRD)
    namespace = namespace or f"t-{uuid.uuid4().hex[:10]}"
    with contextlib.suppress(AlreadyExists):
        await client.create(NAMESPACES, {"metadata": {"name": namespace}})
    return namespace


class _Link:
    """One proxied connection: two pumps, and the four stream ends they move bytes between."""

    def __init__(self, proxy: TcpProxy, down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 up: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.down = down
        self.up = up
        self.tasks = [asyncio.create_task(self._pump(down[0], up[1])),
                      asyncio.create_task(self._pump(up[0], down[1]))]
        self.proxy = proxy

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if self not in self.proxy.frozen_links:
                self.close()

    def freeze(self) -> None:
        """Stop moving bytes, keep both sockets open: a connection that went silent."""
        for t in self.tasks:
            t.cancel()

    def close(self) -> None:
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        for _, w in (self.down, self.up):
            w.close()
        self.proxy.links.discard(self)


class TcpProxy:
    """A TCP proxy on loopback that can misbehave on demand.

    ``freeze()``: every open connection stops forwarding forever without being closed (the
    kind of dead connection a NAT or a broken middlebox leaves behind), and new connections are
    accepted but never forwarded, until ``unfreeze()``. ``cut()``: every connection is closed
    and new ones are closed on accept, until ``resume()``.
    """

    def __init__(self, upstream_url: str) -> None:
        self.scheme, hostport = upstream_url.split("://", 1)
        host, _, port = hostport.rpartition(":")
        self.upstream = (host, int(port))
        self.mode = "open"
        self.links: set[_Link] = set()
        self.frozen_links: set[_Link] = set()
        self.held: list[asyncio.StreamWriter] = []
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{self.scheme}://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "cut":
            writer.close()
            return
        if self.mode == "frozen":
            self.held.append(writer)  # accepted, never answered
            return
        try:
            up = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self.links.add(_Link(self, (reader, writer), up))

    def freeze(self) -> None:
        self.mode = "frozen"
        for link in list(self.links):
            self.frozen_links.add(link)
            link.freeze()

    def unfreeze(self) -> None:
        self.mode = "open"

    def cut(self) -> None:
        self.mode = "cut"
        for link in list(self.links) + list(self.frozen_links):
            link.close()
        self.frozen_links.clear()
        for w in self.held:
            w.close()
        self.held.clear()

    def resume(self) -> None:
        self.mode = "open"

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
