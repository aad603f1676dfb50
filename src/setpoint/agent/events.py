"""Events: the "what happened to this object" trail that ``kubectl describe`` shows.

Repeats of the same event for the same object are folded into one Event whose ``count`` grows,
as Kubernetes' event recorder does, so a flapping object cannot flood the store. Recording is
best-effort and never fails a reconcile: events are written by one owned background task from
a bounded queue, and dropped (with a counter) when the queue is full.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict

from setpoint.agent.conditions import now_micro, now_rfc3339
from setpoint.client import Client, ClientError, NotFound, Resource
from setpoint.tasks import cancel_and_wait
from setpoint.types import Object

log = logging.getLogger(__name__)

EVENTS = Resource("", "v1", "events", namespaced=True, kind="Event")


class EventRecorder:
    def __init__(self, client: Client, component: str, *, host: str = "", queue_size: int = 1000,
                 remember: int = 4096) -> None:
        self.client = client
        self.component = component
        self.host = host
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Object, str, str, str]] = asyncio.Queue(queue_size)
        self._seen: OrderedDict[tuple[str, str, str, str], tuple[str, str, int]] = OrderedDict()
        self._remember = remember
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"events-{self.component}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def event(self, obj: Object, type_: str, reason: str, message: str) -> None:
        """Record an event about ``obj`` (``type_`` is "Normal" or "Warning"); never blocks."""
        try:
            self._queue.put_nowait((obj, type_, reason, message[:1024]))
        except asyncio.QueueFull:
            self.dropped += 1

    def normal(self, obj: Object, reason: str, message: str) -> None:
        self.event(obj, "Normal", reason, message)

    def warning(self, obj: Object, reason: str, message: str) -> None:
        self.event(obj, "Warning", reason, message)

    async def _run(self) -> None:
        while True:
            obj, type_, reason, message = await self._queue.get()
            try:
                await self._write(obj, type_, reason, message)
            except ClientError as e:
                log.warning("event %s for %s not recorded: %s", reason, _ref(obj), e)

    async def _write(self, obj: Object, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        uid = str(meta.get("uid", ""))
        key = (uid, type_, reason, message)
        ts = now_rfc3339()
        seen = self._seen.get(key)
        if seen is not None:
            ev_namespace, ev_name, count = seen
            try:
                await self.client.patch(EVENTS, ev_name, {"count": count + 1, "lastTimestamp": ts},
                                        namespace=ev_namespace, patch_type="merge")
                self._seen[key] = (ev_namespace, ev_name, count + 1)
                self._seen.move_to_end(key)
                return
            except NotFound:
                self._seen.pop(key, None)
        name = f"{meta.get('name', 'object')}.{secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""),
                "name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "uid": uid,
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": ts, "lastTimestamp": ts, "eventTime": now_micro(),
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component, "reportingInstance": self.host,
        }
        await self.client.create(EVENTS, body, namespace=namespace)
        self._seen[key] = (namespace, name, 1)
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)


def _ref(obj: Object) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '')} {meta.get('namespace', '')}/{meta.get('name', '')}"
