"""What every backend does the same way, written once: write ops and their outcomes, the life
cycle, settling callers' futures, and bounding what is pending.

Each backend keeps only its I/O (SQL through a writer thread, SQL over asyncpg, etcd's gateway);
the rules callers can observe (which states refuse calls and with what error, how a batch's
outcomes reach the callers that queued it) live here, so the backends cannot drift apart on them.
The conformance suite in ``tests/store/conformance.py`` holds every backend to the same answers.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from setpoint.store.backend import KeyExists, KeyNotFound, KeyValue, RevisionMismatch, StoreError, Unavailable


class Op(enum.IntEnum):
    """A write op's kind. The numbers are stored in no table, but PostgreSQL's ``write_batch``
    takes them as its ``kinds`` argument, so they are fixed."""

    CREATE = 0
    UPDATE = 1
    DELETE = 2


class Outcome(enum.IntEnum):
    """What a write op came to, as PostgreSQL's ``write_batch`` reports it per op."""

    PUT = 0
    DELETED = 1
    EXISTS = 2
    NOT_FOUND = 3
    MISMATCH = 4


def refusal(outcome: int, key: str, expected: int, actual: int) -> StoreError:
    """The error of an op its checks refused (``outcome`` EXISTS, NOT_FOUND or MISMATCH)."""
    if outcome == Outcome.EXISTS:
        return KeyExists(key)
    if outcome == Outcome.NOT_FOUND:
        return KeyNotFound(key)
    return RevisionMismatch(key, expected, actual)


class WriteOp:
    """One caller's write, queued for the next group commit; ``future`` gets its outcome."""

    __slots__ = ("expected", "future", "key", "kind", "value")

    def __init__(self, kind: Op, key: str, value: bytes, expected: int, future: asyncio.Future[KeyValue]) -> None:
        self.kind = kind
        self.key = key
        self.value = value
        self.expected = expected
        self.future = future


def settle(ops: Sequence[WriteOp], outcomes: Sequence[KeyValue | StoreError]) -> None:
    """Hand each op its outcome; an op whose caller went away (cancelled) is skipped."""
    for op, outcome in zip(ops, outcomes, strict=True):
        fut = op.future
        if not fut.done():
            if isinstance(outcome, KeyValue):
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)


class Lifecycle:
    """new → open (→ failed) → closing → closed, and the one error a refused call gets.

    ``failed`` is a backend whose own machinery stopped without being asked to (SQLite's writer
    thread died): it refuses calls like a closed one, but still has resources to release.
    """

    __slots__ = ("_closing", "state", "where")

    def __init__(self, where: str) -> None:
        self.where = where  # names the store in every error, e.g. "sqlite store /var/lib/x.db"
        self.state = "new"
        self._closing: asyncio.Future[None] | None = None

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def starting(self, name: str) -> None:
        """A backend starts once."""
        if self.state != "new":
            raise RuntimeError(f"{name} cannot start when {self.state}")

    def ensure_open(self) -> None:
        if self.state != "open":
            why = {"new": "not started", "failed": "down: its writer stopped"}.get(self.state, "closed")
            raise Unavailable(f"{self.where} is {why}")

    def closed_error(self) -> Unavailable:
        return Unavailable(f"{self.where} is closed")

    async def close(self, finish: Callable[[], Awaitable[None]]) -> None:
        """Run ``finish`` once, however many callers close at once, and wait for it; closing a
        backend that never started only marks it closed."""
        if self.state == "new":
            self.state = "closed"
        if self.state in ("open", "failed"):
            self.state = "closing"
            self._closing = asyncio.ensure_future(self._finish(finish))
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _finish(self, finish: Callable[[], Awaitable[None]]) -> None:
        try:
            await finish()
        finally:
            self.state = "closed"


class Slots:
    """A bound on pending work (a backend's queued writes, its reads in flight), taken and given
    back on the event loop's thread.

    An ``asyncio.Semaphore`` whose take can also be tried with a plain call (:meth:`try_take`):
    the store service relays every write it receives without a coroutine of its own, and trying
    an asyncio semaphore without awaiting it relied on how its ``acquire`` happens to be written.
    Waiters are served in order, and a free slot is not taken past one that is waited for.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("at least one slot is needed")
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    def try_take(self) -> bool:
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.cancelled():
                self.give()  # handed the slot just as it was cancelled: pass it on
            raise  # (a cancelled waiter is skipped by give)

    def give(self) -> None:
        """Give one slot back: to the first waiter, or to the free ones."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to it directly
                return
        self._free += 1
