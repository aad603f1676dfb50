"""Deleting a namespace deletes what is in it, then the namespace itself.

A deleted namespace is marked Terminating (it carries the ``kubernetes`` finalizer in its spec);
this loop deletes every object in it, honouring their own finalizers, and removes the namespace
once it is empty. It is level-triggered: woken by namespace events and by a slow timer, it looks
at every Terminating namespace, so a restart in the middle simply continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from setpoint.server.errors import APIError
from setpoint.server.objects import decode_stored, for_storage
from setpoint.store import KeyNotFound, RevisionMismatch, StoreError
from setpoint.tasks import cancel_and_wait

if TYPE_CHECKING:
    from setpoint.server.handlers import ResourceHandlers
    from setpoint.server.watchcache import CachedObject

log = logging.getLogger(__name__)

NAMESPACES = "/registry/core/namespaces/"


class NamespaceFinalizer:
    def __init__(self, handlers: ResourceHandlers, interval: float = 5.0) -> None:
        self.handlers = handlers
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._terminating: set[str] = set()
        handlers.cache.add_hook(NAMESPACES, self._on_event)
        handlers.cache.add_event_hook(self._on_any_event)

    def _on_event(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        name = obj["metadata"].get("name", "")
        if etype != "DELETED" and obj["metadata"].get("deletionTimestamp"):
            self._terminating.add(name)
            self._wake.set()
        else:
            self._terminating.discard(name)

    def _on_any_event(self, etype: str, key: str, cached: CachedObject) -> None:
        # The last object of a terminating namespace going away lets the namespace go now,
        # not at the next timer tick.
        if etype == "DELETED" and self._terminating and cached.obj["metadata"].get("namespace") in self._terminating:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="namespace-finalizer")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):  # not wait_for: see setpoint.tasks
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sweep()
            except (StoreError, APIError) as e:
                log.warning("namespace cleanup will be retried: %s", e)

    async def sweep(self) -> None:
        cache = self.handlers.cache
        for co in cache.list(NAMESPACES, NAMESPACES):
            if co.obj["metadata"].get("deletionTimestamp"):
                await self._finalize(co.obj["metadata"]["name"])

    async def _finalize(self, namespace: str) -> None:
        h = self.handlers
        remaining = 0
        for rtype in h.registry.all():
            if not rtype.namespaced:
                continue
            for co in h.cache.list(rtype.key_prefix, rtype.list_prefix(namespace)):
                remaining += 1
                if co.obj["metadata"].get("deletionTimestamp"):
                    continue  # waiting on its own finalizers
                with contextlib.suppress(APIError):
                    await h.delete_object(rtype, namespace, co.obj["metadata"]["name"], {})
        if remaining:
            return
        key = NAMESPACES + namespace
        kv = await h.backend.get(key)
        if kv is None:
            return
        obj = decode_stored(kv)
        spec = obj.get("spec") or {}
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != "kubernetes"]
        obj["spec"] = spec
        try:
            if obj["metadata"].get("finalizers") or spec["finalizers"]:
                await h.backend.update(key, for_storage(obj), kv.mod_revision)
            else:
                await h.backend.delete(key, kv.mod_revision)
        except (RevisionMismatch, KeyNotFound):
            self._wake.set()  # changed under us: look again
