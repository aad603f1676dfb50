"""The agent's work queue: keys of objects that need reconciling, handed to worker tasks.

Informer events, periodic resyncs and retries all turn into ``add(key)``; workers loop on
``key = await queue.get()`` … reconcile … ``queue.done(key)``. Reconcile is level-triggered (it
reads the newest object for the key), so however many changes arrive for a key while it waits,
one reconcile covers them all: the queue coalesces them.

Three structures hold the state, as in client-go's ``util/workqueue``:

``queue``
    a deque of keys ready to be handed out, in the order of their first add (FIFO);
``dirty``
    the set of keys that need processing (queued, or added again while being processed);
``processing``
    the set of keys handed out by :meth:`WorkQueue.get` and not yet :meth:`WorkQueue.done` (kept
    as a dict of the time each was handed out, for the longest-running metric).

Invariants (between any two awaits; ``queue`` as a set):

1. ``queue == dirty - processing`` and ``queue`` holds each key at most once: a key is queued
   exactly when it needs processing and nobody is processing it.
2. Hence ``queue`` and ``processing`` are disjoint: a key is never handed to a second worker while
   one is processing it.
3. ``add(key)`` of a dirty key changes nothing (it is *coalesced*); ``add(key)`` of a key being
   processed marks it dirty only, and ``done(key)`` queues it again, once, however many adds came
   in meanwhile.
4. Every ``add(key)`` made before shutdown is followed by a ``get()`` that returns ``key`` after the
   add (the key is dirty until then), so no change is lost, only merged.
5. Memory is bounded by the number of distinct keys: ``queue``, ``dirty`` and ``processing`` hold
   each key at most once; delayed adds (below) hold each key at most once too, and their heap is
   compacted when superseded entries outnumber live ones. ``add`` never blocks.

Delayed adds (``add_after``, ``add_rate_limited``) wait in a heap ordered by due time, served by
one timer task that the queue owns (started on the first delayed add, cancelled by shutdown). A
key has at most one pending delayed add: a second ``add_after`` keeps the earlier due time, and an
immediate ``add`` cancels the pending one (the reconcile it triggers supersedes the retry).

Shutdown: :meth:`WorkQueue.shutdown` stops handing out keys at once (``get()`` raises
:class:`ShutDown`, queued and delayed keys are dropped, later adds are ignored);
:meth:`WorkQueue.shutdown_with_drain` also waits until every key being processed is done.

Time is read only through ``clock`` (monotonic seconds) and waited on only through ``sleep``, so
tests can substitute a fake clock and step it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Generic, TypeVar

from setpoint.agent.ratelimit import Clock, RateLimiter, default_rate_limiter

__all__ = ["ShutDown", "WorkQueue"]

K = TypeVar("K", bound=Hashable)

Sleep = Callable[[float], Awaitable[object]]
"""Waits the given number of ``clock`` seconds, like :func:`asyncio.sleep`."""

_COMPACT_SLACK = 64  # superseded heap entries tolerated before the heap is rebuilt


class ShutDown(Exception):
    """The work queue is shutting down: no more keys will be handed out."""


class WorkQueue(Generic[K]):
    """A keyed, coalescing, rate-limited work queue for reconcile workers (see the module doc).

    Metrics, readable at any time: :attr:`adds` (adds accepted, including delayed adds when they
    come due), :attr:`coalesced` (adds absorbed because the key was already dirty),
    :attr:`retries` (calls to :meth:`add_rate_limited`), :attr:`depth` (keys waiting to be handed
    out), :attr:`waiting` (delayed keys not yet due), :attr:`longest_running_seconds` and
    :attr:`coalescing_ratio`.
    """

    def __init__(
        self,
        *,
        name: str = "",
        rate_limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self.rate_limiter: RateLimiter = rate_limiter if rate_limiter is not None else default_rate_limiter(clock=clock)
        self._clock = clock
        self._sleep = sleep

        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: dict[K, float] = {}  # key -> clock() when it was handed out

        # Delayed adds: key -> (due, seq) of its one live heap entry; superseded entries stay in
        # the heap until popped or compacted away.
        self._waiting: dict[K, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._timer: asyncio.Task[None] | None = None
        self._timer_wakeup: asyncio.Future[None] | None = None

        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._drained = asyncio.Event()

        self.adds = 0
        self.coalesced = 0
        self.retries = 0

    # -- adding ------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Mark ``key`` as needing processing. Never blocks; ignored after shutdown."""
        if self._shutting_down:
            return
        if self._waiting.pop(key, None) is not None:
            self._maybe_compact()
        self.adds += 1
        if key in self._dirty:
            self.coalesced += 1
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake_getter()

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` once ``delay`` seconds have passed (at once if ``delay <= 0``). If ``key``
        already has a delayed add pending, the earlier of the two due times is kept. Must be
        called on the event loop; ignored after shutdown."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock() + delay
        current = self._waiting.get(key)
        if current is not None and current[0] <= due:
            return
        self._seq += 1
        self._waiting[key] = (due, self._seq)
        entry = (due, self._seq, key)
        heapq.heappush(self._heap, entry)
        if current is not None:
            self._maybe_compact()
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(
                self._run_timer(), name=f"workqueue-timer {self.name}".rstrip()
            )
        elif self._heap[0] is entry:
            self._wake_timer()

    def add_rate_limited(self, key: K) -> None:
        """Add ``key`` after the delay its rate limiter asks for (one more retry of ``key``)."""
        if self._shutting_down:
            return
        self.retries += 1
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: K) -> None:
        """Reset ``key``'s retry history in the rate limiter (call after a successful reconcile).
        A delayed add already pending for ``key`` is left alone."""
        self.rate_limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        """How many times ``key`` has been rate limited since it was last forgotten."""
        return self.rate_limiter.retries(key)

    # -- handing out -------------------------------------------------------------------------

    async def get(self) -> K:
        """The next key to process, waiting for one; the caller must call :meth:`done` with it.
        Raises :class:`ShutDown` once the queue is shutting down."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                try:
                    self._getters.remove(waiter)
                except ValueError:
                    pass
                if self._queue and not waiter.cancelled():
                    self._wake_getter()  # we were woken for a key we will not take: pass it on
                raise
        return self._take()

    def get_nowait(self) -> K:
        """The next key to process, or :class:`asyncio.QueueEmpty` if none is ready."""
        if not self._queue and not self._shutting_down:
            raise asyncio.QueueEmpty
        return self._take()

    def _take(self) -> K:
        if self._shutting_down:
            raise ShutDown(self.name)
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing[key] = self._clock()
        if self._queue:
            self._wake_getter()
        return key

    def done(self, key: K) -> None:
        """``key`` is processed. If it was added while it was being processed, it is queued again.
        A key that is not being processed is ignored."""
        if self._processing.pop(key, None) is None:
            return
        if self._shutting_down:
            if not self._processing:
                self._drained.set()
        elif key in self._dirty:
            self._queue.append(key)
            self._wake_getter()

    def _wake_getter(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- state and metrics -------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys ready to be handed out."""
        return len(self._queue)

    @property
    def depth(self) -> int:
        """Keys ready to be handed out (the same as ``len(queue)``)."""
        return len(self._queue)

    @property
    def waiting(self) -> int:
        """Keys with a delayed add that is not yet due."""
        return len(self._waiting)

    @property
    def processing(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def longest_running_seconds(self) -> float:
        """How long the key that has been processing longest has been at it (0 if none is)."""
        if not self._processing:
            return 0.0
        return max(0.0, self._clock() - min(self._processing.values()))

    @property
    def coalescing_ratio(self) -> float:
        """The share of adds absorbed by a key that was already dirty (0 before any add)."""
        return self.coalesced / self.adds if self.adds else 0.0

    # -- delayed adds ------------------------------------------------------------------------

    def _release_due(self) -> None:
        """Pop superseded heap entries and add every live one that is due."""
        now = self._clock()
        while self._heap:
            due, seq, key = self._heap[0]
            live = self._waiting.get(key) == (due, seq)
            if live and due > now:
                return
            heapq.heappop(self._heap)
            if live:
                del self._waiting[key]
                self.add(key)

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._waiting) + _COMPACT_SLACK:
            self._heap = [e for e in self._heap if self._waiting.get(e[2]) == (e[0], e[1])]
            heapq.heapify(self._heap)

    def _wake_timer(self) -> None:
        if self._timer_wakeup is not None and not self._timer_wakeup.done():
            self._timer_wakeup.set_result(None)

    async def _sleep_until(self, due: float) -> None:
        # The clock is read when the sleep starts, not when it is scheduled: no lag is added.
        await self._sleep(due - self._clock())

    async def _run_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._release_due()
            self._timer_wakeup = loop.create_future()
            if not self._heap:
                await self._timer_wakeup
                continue
            sleeper = asyncio.ensure_future(self._sleep_until(self._heap[0][0]))
            try:
                await asyncio.wait((sleeper, self._timer_wakeup), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop handing out keys: waiting and later ``get()`` calls raise :class:`ShutDown`;
        queued and delayed keys are dropped; the timer task is cancelled. Keys being processed
        may still be marked :meth:`done`. Idempotent."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self._queue.clear()
        self._dirty.clear()
        self._waiting.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
        if not self._processing:
            self._drained.set()
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def shutdown_with_drain(self) -> None:
        """:meth:`shutdown`, then wait until every key being processed is done and the timer task
        has ended."""
        self.shutdown()
        await self._drained.wait()
        await self._timer_stopped()

    async def _timer_stopped(self) -> None:
        if self._timer is not None:
            await asyncio.wait((self._timer,))

    async def __aenter__(self) -> WorkQueue[K]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down (without draining) and wait for the timer task to end."""
        self.shutdown()
        await self._timer_stopped()
