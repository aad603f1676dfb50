"""Helpers for the client and informer tests: waiting on conditions, fixtures' bits (for a faulty
network, see setpoint.testing.faultproxy)."""

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
