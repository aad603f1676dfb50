"""An alert sink that posts each alert as JSON to a webhook (a chat bridge, a pager, a ticket system).

``alert()`` never blocks and never fails: the alert goes into a bounded queue, and one background
task on the running event loop posts them in order. When the queue is full the oldest alert is
dropped (counted in ``dropped``): a flood of alerts must not grow memory without bound. A post that
fails is tried ``attempts`` times with doubling waits, then counted in ``failed`` and logged.

The body, ``Content-Type: application/json``::

    {"controller": "homes", "kind": "Home", "namespace": "default", "name": "cottage",
     "uid": "…", "reason": "RetryBudgetExhausted", "message": "…", "errorClass": "Transient",
     "attempts": 16, "at": "2026-11-24T10:00:00Z", "object": "Home default/cottage"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import msgspec

from setpoint.agent.alerts import Alert
from setpoint.backoff import exponential
from setpoint.tasks import cancel_and_wait

log = logging.getLogger("setpoint.alerts")

__all__ = ["WebhookAlertSink", "alert_payload"]


def alert_payload(alert: Alert) -> dict[str, object]:
    return {"controller": alert.controller, "kind": alert.kind, "namespace": alert.namespace,
            "name": alert.name, "uid": alert.uid, "reason": alert.reason, "message": alert.message,
            "errorClass": alert.error_class, "attempts": alert.attempts, "at": alert.at,
            "object": alert.object_ref}


class WebhookAlertSink:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0,
                 queue_size: int = 1000, attempts: int = 3, backoff: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if queue_size < 1 or attempts < 1:
            raise ValueError("queue_size and attempts must be at least 1")
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._headers = {"Content-Type": "application/json", "User-Agent": "setpoint-alerts", **(headers or {})}
        self._timeout = timeout
        self._transport = transport
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def alert(self, alert: Alert) -> None:
        """Queue ``alert`` for posting; call on the event loop. Never blocks."""
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self._queue.task_done()
                self.dropped += 1
        self._queue.put_nowait(alert)
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-alerts")

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was posted (or given up on); False at the deadline."""
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see setpoint.tasks
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def aclose(self, timeout: float = 5.0) -> None:
        """Post what is queued (up to ``timeout`` seconds), then stop."""
        await self.drain(timeout)
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout, headers=self._headers,
                                     transport=self._transport) as http:
            while True:
                if self._queue.empty():
                    self._idle.set()
                alert = await self._queue.get()
                try:
                    await self._post(http, alert)
                finally:
                    self._queue.task_done()

    async def _post(self, http: httpx.AsyncClient, alert: Alert) -> None:
        body = msgspec.json.encode(alert_payload(alert))
        error = ""
        for attempt in range(1, self.attempts + 1):
            started = time.monotonic()
            try:
                resp = await http.post(self.url, content=body)
                if resp.status_code < 300:
                    self.sent += 1
                    return
                error = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    break  # the receiver refuses this alert: resending it cannot help
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                wait = exponential(attempt, self.backoff, cap=300.0)
                await asyncio.sleep(max(0.0, wait - (time.monotonic() - started)))
        self.failed += 1
        log.error("webhook %s: alert for %s (%s) not delivered: %s", self.url, alert.object_ref,
                  alert.reason, error)
