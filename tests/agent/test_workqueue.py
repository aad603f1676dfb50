"""The work queue: coalescing, one worker per key, delayed and rate-limited adds, shutdown.

Timing is driven by :class:`FakeClock` (the queue's ``clock`` and ``sleep``); where the event loop
must run, tests wait for a condition with a deadline (:func:`eventually`), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import random
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from setpoint.agent.ratelimit import ExponentialBackoff
from setpoint.agent.workqueue import ShutDown, WorkQueue


class FakeClock:
    """Monotonic seconds that move only when told to; ``sleep`` wakes when they reach its end."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + delay, self._seq, fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            fut = heapq.heappop(self._sleepers)[2]
            if not fut.done():
                fut.set_result(None)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, _, fut in self._sleepers if not fut.done())


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the event loop run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0)


async def idle() -> None:
    """A few turns of the event loop, for checking that something did *not* happen."""
    for _ in range(10):
        await asyncio.sleep(0)


def nothing_due(q: WorkQueue[Any], clock: FakeClock) -> bool:
    return all(due > clock.now for due, _ in q._waiting.values())


def check_invariants(q: WorkQueue[Any]) -> None:
    queued = list(q._queue)
    assert len(queued) == len(set(queued)), "a key is queued twice"
    assert set(queued) == q._dirty - set(q._processing)
    assert not set(queued) & set(q._processing)
    for key, (due, seq) in q._waiting.items():
        assert (due, seq, key) in q._heap
    assert len(q._heap) <= 2 * len(q._waiting) + 65


def fake_queue(clock: FakeClock, **kwargs: Any) -> WorkQueue[Any]:
    return WorkQueue(clock=clock, sleep=clock.sleep, **kwargs)


# -- adding and handing out ------------------------------------------------------------------


async def test_adds_coalesce_in_order_of_first_add() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in "abacbba":
        q.add(key)
    assert len(q) == q.depth == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]
    assert (q.adds, q.coalesced) == (7, 4)
    assert q.coalescing_ratio == pytest.approx(4 / 7)
    check_invariants(q)


async def test_key_in_process_is_not_handed_out_and_requeues_once_after_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    q.add("a")
    q.add("a")
    assert len(q) == 0
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    check_invariants(q)
    q.done("a")
    assert len(q) == 1
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0
    assert (q.adds, q.coalesced) == (4, 2)
    q.done("a")  # not processing: ignored
    q.done("never")
    assert len(q) == 0
    check_invariants(q)


async def test_requeued_key_goes_to_the_back() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    q.add("b")
    q.done("a")
    assert [q.get_nowait(), q.get_nowait()] == ["b", "a"]


async def test_get_waits_for_an_add() -> None:
    q: WorkQueue[str] = WorkQueue()
    getter = asyncio.create_task(q.get())
    await idle()
    assert not getter.done()
    q.add("a")
    assert await asyncio.wait_for(getter, 2) == "a"


async def test_getter_cancelled_after_wakeup_passes_the_key_on() -> None:
    q: WorkQueue[str] = WorkQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await eventually(lambda: len(q._getters) == 2)
    q.add("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 2) == "a"
    assert first.cancelled()
    assert not q._getters


async def test_longest_running_seconds() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    assert q.longest_running_seconds == 0.0
    q.add("a")
    q.add("b")
    q.get_nowait()
    clock.advance(3)
    q.get_nowait()
    clock.advance(2)
    assert q.longest_running_seconds == 5.0
    assert q.processing == 2
    q.done("a")
    assert q.longest_running_seconds == 2.0


# -- delayed adds ----------------------------------------------------------------------------


async def test_add_after_releases_in_due_order() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    q.add_after("a", 10)
    q.add_after("b", 5)
    assert (len(q), q.waiting) == (0, 2)
    clock.advance(4.5)
    await idle()
    assert len(q) == 0
    clock.advance(0.5)
    await eventually(lambda: len(q) == 1)
    assert q.get_nowait() == "b"
    assert q.waiting == 1
    clock.advance(5)
    await eventually(lambda: len(q) == 1)
    assert q.get_nowait() == "a"
    assert q.waiting == 0
    assert q.adds == 2
    check_invariants(q)


async def test_add_after_earlier_time_wins() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    q.add_after("a", 10)
    q.add_after("a", 3)  # earlier: replaces
    q.add_after("a", 7)  # later: ignored
    assert q.waiting == 1
    clock.advance(3)
    await eventually(lambda: len(q) == 1)
    assert q.get_nowait() == "a"
    q.done("a")
    await eventually(lambda: not q._heap)  # the superseded entry is discarded, not kept for t=10
    clock.advance(10)
    await idle()
    assert len(q) == 0
    assert q.adds == 1


async def test_immediate_add_supersedes_pending_delay() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    q.add_after("a", 5)
    q.add("a")
    assert q.waiting == 0
    assert q.get_nowait() == "a"
    q.done("a")
    clock.advance(5)
    await idle()
    assert len(q) == 0
    assert q.adds == 1


async def test_add_after_without_delay_is_immediate() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 0)
    q.add_after("b", -1)
    assert [q.get_nowait(), q.get_nowait()] == ["a", "b"]
    assert q._timer is None


async def test_new_earliest_delay_wakes_the_sleeping_timer() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    q.add_after("late", 100)
    await eventually(lambda: clock.sleeping == 1)  # the timer sleeps until t+100
    q.add_after("soon", 1)
    clock.advance(1)
    await eventually(lambda: len(q) == 1)
    assert q.get_nowait() == "soon"
    assert q.waiting == 1


async def test_delayed_key_in_process_is_marked_dirty_not_queued() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    q.add("a")
    assert q.get_nowait() == "a"
    q.add_after("a", 1)
    clock.advance(1)
    await eventually(lambda: q.waiting == 0)
    assert len(q) == 0 and "a" in q._dirty
    q.done("a")
    assert q.get_nowait() == "a"


async def test_one_timer_task_serves_all_delayed_keys() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    before = asyncio.all_tasks()
    for i in range(1000):
        q.add_after(i, 1 + i % 50)
    await eventually(lambda: clock.sleeping == 1)
    new = asyncio.all_tasks() - before
    assert sum(1 for t in new if t.get_name().startswith("workqueue-timer")) == 1
    assert len(new) <= 2  # the timer and its one current sleep
    clock.advance(50)
    await eventually(lambda: len(q) == 1000)
    assert list(q._queue) == sorted(range(1000), key=lambda i: (i % 50, i))


async def test_superseded_delays_do_not_grow_the_heap() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    for i in range(20_000):
        key = i % 10
        if i % 3 == 0:
            q.add(key)
            q.get_nowait() if len(q) else None
            q.done(key)
        q.add_after(key, 1000 - i * 0.01)  # always earlier than the last: a new heap entry
        assert len(q._heap) <= 2 * len(q._waiting) + 65
    check_invariants(q)
    await q.shutdown_with_drain()


async def test_add_after_with_the_real_clock() -> None:
    async with WorkQueue[str]() as q:
        q.add_after("later", 30)
        await asyncio.sleep(0)  # let the timer start its 30 s sleep
        q.add_after("soon", 0.01)
        assert await asyncio.wait_for(q.get(), 2) == "soon"
        timer = q._timer
    assert timer is not None and timer.done()


# -- rate limiting ---------------------------------------------------------------------------


async def test_add_rate_limited_backs_off_and_forget_resets() -> None:
    clock = FakeClock()
    q = fake_queue(clock, rate_limiter=ExponentialBackoff(1.0, 8.0, jitter=0))
    q.add_rate_limited("a")
    assert (q.num_requeues("a"), q.retries, q.waiting) == (1, 1, 1)
    clock.advance(1)
    await eventually(lambda: len(q) == 1)
    assert q.get_nowait() == "a"
    q.done("a")
    q.add_rate_limited("a")  # second failure: 2 s
    clock.advance(1.5)
    await idle()
    assert len(q) == 0
    clock.advance(0.5)
    await eventually(lambda: len(q) == 1)
    assert q.num_requeues("a") == 2
    q.forget("a")
    assert q.num_requeues("a") == 0
    assert q.retries == 2


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_stops_everything() -> None:
    clock = FakeClock()
    q = fake_queue(clock)
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await eventually(lambda: len(q._getters) == 3)
    q.add("a")
    assert await asyncio.wait_for(getters[0], 2) == "a"  # being processed
    q.add("b")
    assert await asyncio.wait_for(getters[1], 2) == "b"
    q.add_after("delayed", 5)
    await eventually(lambda: clock.sleeping == 1)
    timer = q._timer
    assert timer is not None

    q.shutdown()
    assert q.shutting_down
    with pytest.raises(ShutDown):
        await asyncio.wait_for(getters[2], 2)  # was waiting
    with pytest.raises(ShutDown):
        await q.get()
    with pytest.raises(ShutDown):
        q.get_nowait()
    assert q.waiting == 0
    clock.advance(5)
    await idle()
    assert len(q) == 0
    await eventually(timer.done)
    assert timer.cancelled()

    adds = q.adds
    q.add("new")
    q.add_after("new", 1)
    q.add_rate_limited("new")
    q.add("a")  # while "a" is processing: not requeued after done
    q.done("a")
    assert (len(q), q.waiting, q.adds) == (0, 0, adds)
    q.shutdown()  # idempotent
    q.done("b")
    assert q.processing == 0


async def test_shutdown_drops_queued_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.shutdown()
    assert len(q) == 0
    with pytest.raises(ShutDown):
        q.get_nowait()
    check_invariants(q)


async def test_shutdown_with_drain_waits_for_keys_in_process() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("c")
    assert q.get_nowait() == "a"
    assert q.get_nowait() == "b"
    q.add_after("d", 30)
    drain = asyncio.create_task(q.shutdown_with_drain())
    await idle()
    assert not drain.done()
    assert q.shutting_down
    with pytest.raises(ShutDown):
        await q.get()  # "c" is not handed out any more
    q.done("a")
    await idle()
    assert not drain.done()
    q.done("b")
    await asyncio.wait_for(drain, 2)
    assert q._timer is not None and q._timer.done()


async def test_shutdown_with_drain_when_idle_returns_at_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    await asyncio.wait_for(q.shutdown_with_drain(), 2)
    await asyncio.wait_for(q.shutdown_with_drain(), 2)


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
async def test_workers_never_share_a_key_and_no_add_is_lost(seed: int) -> None:
    rng = random.Random(seed)
    q: WorkQueue[int] = WorkQueue(rate_limiter=ExponentialBackoff(0.0005, 0.002, jitter=0.5))
    active: set[int] = set()
    add_version: Counter[int] = Counter()  # bumped by every add request (immediate, delayed, retry)
    seen_version: dict[int, int] = {}  # add_version of the key when a worker last took it
    processed = 0

    async def worker() -> None:
        nonlocal processed
        while True:
            try:
                key = await q.get()
            except ShutDown:
                return
            assert key not in active, f"key {key} handed to two workers"
            active.add(key)
            seen_version[key] = add_version[key]
            check_invariants(q)
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            assert key in active
            active.discard(key)
            if rng.random() < 0.15:
                add_version[key] += 1
                q.add_rate_limited(key)
            else:
                q.forget(key)
            q.done(key)
            processed += 1

    async def producer() -> None:
        for _ in range(3000):
            key = rng.randrange(40)
            add_version[key] += 1
            if rng.random() < 0.8:
                q.add(key)
            else:
                q.add_after(key, rng.choice([0.0, 0.0005, 0.001, 0.002]))
            if rng.random() < 0.3:
                await asyncio.sleep(0)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    await producer()
    await eventually(lambda: not (q._queue or q._dirty or q._processing or q._waiting), timeout=5)
    check_invariants(q)
    # the last time each key was taken came after its last add request
    assert seen_version == dict(add_version)
    assert processed == q.adds - q.coalesced
    assert q.coalesced > 0 and 0 < q.coalescing_ratio < 1
    await asyncio.wait_for(q.shutdown_with_drain(), 2)
    await asyncio.wait_for(asyncio.gather(*workers), 2)


# -- a model-based check ---------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])


class WorkQueueModel(RuleBasedStateMachine):
    """The queue against a model written from its contract: lists, sets and a dict of due times."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.q: WorkQueue[str] = fake_queue(self.clock, rate_limiter=ExponentialBackoff(1.0, 8.0, jitter=0))
        self.queue: list[str] = []
        self.dirty: set[str] = set()
        self.processing: set[str] = set()
        self.waiting: dict[str, tuple[float, int]] = {}
        self.seq = 0
        self.failures: Counter[str] = Counter()
        self.adds = 0
        self.coalesced = 0

    def run(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            await eventually(lambda: nothing_due(self.q, self.clock), timeout=0.5)
            return result

        return self.loop.run_until_complete(call())

    def model_add(self, key: str) -> None:
        self.waiting.pop(key, None)
        self.adds += 1
        if key in self.dirty:
            self.coalesced += 1
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.queue.append(key)

    def model_add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.model_add(key)
            return
        due = self.clock.now + delay
        if key in self.waiting and self.waiting[key][0] <= due:
            return
        self.seq += 1
        self.waiting[key] = (due, self.seq)

    @rule(key=KEYS)
    def add(self, key: str) -> None:
        self.run(lambda: self.q.add(key))
        self.model_add(key)

    @rule(key=KEYS, delay=st.integers(0, 8))
    def add_after(self, key: str, delay: int) -> None:
        self.run(lambda: self.q.add_after(key, delay))
        self.model_add_after(key, delay)

    @rule(key=KEYS)
    def add_rate_limited(self, key: str) -> None:
        self.run(lambda: self.q.add_rate_limited(key))
        self.model_add_after(key, min(8.0, 2.0 ** self.failures[key]))
        self.failures[key] += 1

    @rule(key=KEYS)
    def forget(self, key: str) -> None:
        self.q.forget(key)
        self.failures.pop(key, None)

    @rule(seconds=st.integers(0, 6))
    def advance(self, seconds: int) -> None:
        self.run(lambda: self.clock.advance(seconds))
        due = sorted((when, seq, key) for key, (when, seq) in self.waiting.items() if when <= self.clock.now)
        for _, _, key in due:
            del self.waiting[key]
            self.model_add(key)

    @rule()
    def get(self) -> None:
        if not self.queue:
            with pytest.raises(asyncio.QueueEmpty):
                self.q.get_nowait()
            return
        key = self.queue.pop(0)
        self.dirty.discard(key)
        self.processing.add(key)
        assert self.run(lambda: asyncio.wait_for(self.q.get(), 2)) == key

    @precondition(lambda self: bool(self.processing))
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.processing)))
        self.run(lambda: self.q.done(key))
        self.processing.discard(key)
        if key in self.dirty:
            self.queue.append(key)

    @invariant()
    def matches_model(self) -> None:
        q = self.q
        assert list(q._queue) == self.queue
        assert q._dirty == self.dirty
        assert set(q._processing) == self.processing
        assert {k: due for k, (due, _) in q._waiting.items()} == {k: due for k, (due, _) in self.waiting.items()}
        assert (q.adds, q.coalesced) == (self.adds, self.coalesced)
        assert q.num_requeues("a") == self.failures["a"]
        check_invariants(q)

    def teardown(self) -> None:
        async def finish() -> None:
            self.q.shutdown()
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(finish())
        self.loop.close()


WorkQueueModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWorkQueueModel = WorkQueueModel.TestCase


def test_keys_are_any_hashable() -> None:
    q: WorkQueue[Hashable] = WorkQueue()
    for key in [("ns", "name"), 3, "x", frozenset({1})]:
        q.add(key)
    assert len(q) == 4
