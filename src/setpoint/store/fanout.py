"""Live fan-out of committed events to watchers, shared by every backend.

A backend publishes each committed batch once, on the event loop, in revision order; every
watcher gets its own bounded buffer, so one slow consumer is cut off (WatchOverflow) instead of
holding memory or slowing the writer and the other watchers down.

:func:`watch_stream` is the part of ``Backend.watch`` that does not depend on storage: subscribe
first, replay history up to the revision the subscription started at, then go live, skipping
anything already delivered. Subscribing before reading history is what closes the gap between
"read the log" and "start listening" without holding any lock across the two.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable

from setpoint.store.backend import Event, StoreError, WatchOverflow

HistoryPage = Callable[[str, int, int, int], Awaitable[list[Event]]]
"""``(prefix, after, until, limit)`` → events under prefix with after < revision <= until, in
order, at most ``limit`` of them; raises Compacted when ``after`` is no longer available."""


class Subscription:
    """One watcher's live buffer. Filled by :meth:`WatchHub.publish`, drained by :meth:`get`."""

    __slots__ = ("_batches", "_count", "_error", "_hub", "_limit", "_wake", "prefix", "start_revision")

    def __init__(self, hub: WatchHub, prefix: str, limit: int, start_revision: int) -> None:
        self.prefix = prefix
        self.start_revision = start_revision  # live events are those above this revision
        self._hub = hub
        self._limit = limit
        self._batches: deque[list[Event]] = deque()
        self._count = 0
        self._error: StoreError | None = None
        self._wake = asyncio.Event()

    def _push(self, events: list[Event]) -> bool:
        if self._count + len(events) > self._limit:
            self._fail(
                WatchOverflow(
                    f"watcher on {self.prefix!r} fell more than {self._limit} events behind;"
                    " resume from the last revision it received"
                )
            )
            return False
        self._batches.append(events)
        self._count += len(events)
        self._wake.set()
        return True

    def _fail(self, error: StoreError) -> None:
        if self._error is None:
            self._error = error
            self._batches.clear()
            self._count = 0
            self._wake.set()

    async def get(self) -> list[Event]:
        """Everything buffered so far (waits for at least one event); raises the error that ended
        the subscription, at once, even if events are still buffered."""
        while not self._batches and self._error is None:
            self._wake.clear()
            await self._wake.wait()
        if self._error is not None:
            raise copy.copy(self._error)  # one error object may end many subscriptions
        if len(self._batches) == 1:
            events = self._batches.popleft()
        else:
            events = [e for batch in self._batches for e in batch]
            self._batches.clear()
        self._count = 0
        return events

    def close(self) -> None:
        self._hub._watchers.discard(self)


class WatchHub:
    """The set of live subscriptions of one backend. Loop-thread only."""

    def __init__(self, buffer_limit: int, revision: int = 0) -> None:
        if buffer_limit < 1:
            raise ValueError("buffer_limit must be at least 1")
        self.buffer_limit = buffer_limit
        self.revision = revision  # newest revision published (or the store's revision at start)
        self._watchers: set[Subscription] = set()
        self._closed: StoreError | None = None

    def __len__(self) -> int:
        return len(self._watchers)

    def subscribe(self, prefix: str) -> Subscription:
        sub = Subscription(self, prefix, self.buffer_limit, self.revision)
        if self._closed is not None:
            sub._fail(self._closed)
        else:
            self._watchers.add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        """Hand one committed batch (sorted by revision) to every matching watcher."""
        if not events:
            return
        self.revision = events[-1].revision
        dropped: list[Subscription] = []
        for sub in self._watchers:
            prefix = sub.prefix
            matched = events if not prefix else [e for e in events if e.kv.key.startswith(prefix)]
            if matched and not sub._push(matched):
                dropped.append(sub)
        for sub in dropped:
            self._watchers.discard(sub)

    def close(self, error: StoreError) -> None:
        """End every subscription with ``error``; later subscriptions fail at once."""
        self._closed = error
        for sub in self._watchers:
            sub._fail(error)
        self._watchers.clear()


async def watch_stream(
    hub: WatchHub,
    prefix: str,
    after_revision: int,
    history: HistoryPage,
    page_size: int,
    *,
    check: Callable[[int], None] | None = None,
) -> AsyncGenerator[list[Event], None]:
    """Events under ``prefix`` after ``after_revision``: history first, then live, no gaps or
    duplicates. ``check(after_revision)`` runs at the first iteration, to raise the backend's
    Compacted / FutureRevision / Unavailable before anything is subscribed."""
    if check is not None:
        check(after_revision)
    sub = hub.subscribe(prefix)
    try:
        last = after_revision
        while last < sub.start_revision:
            page = await history(prefix, last, sub.start_revision, page_size)
            if page:
                last = page[-1].revision
                yield page
            if len(page) < page_size:
                break
        # Live events at or below the subscription's start revision cannot arrive (the hub had
        # already published them), but after_revision may be above it; filter by ``last``.
        while True:
            events = await sub.get()
            if events[0].revision <= last:
                events = [e for e in events if e.revision > last]
                if not events:
                    continue
            last = events[-1].revision
            yield events
    finally:
        sub.close()
