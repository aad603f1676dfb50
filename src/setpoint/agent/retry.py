"""Retry policies: how long to keep trying, per driver and per error class.

The source material asks three questions of every retry: how many times, for how long, and when
to tell a human. A :class:`RetryPolicy` answers them for each error class a driver can raise:

- ``transient`` (a lost request, a timeout, a 5xx): retry with exponential backoff from ``base``
  doubling to ``cap``, at most ``attempts`` times;
- ``not_ready`` (the subsystem said "not now"): retry after the delay it asked for (its
  ``Retry-After``) or, without one, with the same kind of backoff;
- ``permanent``: never retried.

``deadline`` bounds the total time since the first failure of the object's current desired state
(its ``generation``), whatever the classes of the failures in between. When attempts or deadline
are spent the runtime stops: the object is marked failed (``Ready=False``, reason
``RetryBudgetExhausted`` or ``RetryDeadlineExceeded``), a Warning Event is recorded and an alert goes
to the alert sink. A new generation (the user changed the spec) starts afresh.

A driver declares its own default as a ``retry_policy`` attribute; a controller built on it passes
that (or an operator's override) to :class:`~setpoint.agent.controller.Controller`, which keeps one
:class:`RetryTracker` of per-object state.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from setpoint.agent.errors import ErrorClass
from setpoint.backoff import exponential

__all__ = ["Backoff", "Decision", "RetryPolicy", "RetryTracker"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retries of one error class: at most ``attempts`` (``None``: no limit), waiting ``base``
    seconds after the first failure, doubling up to ``cap``, each wait shortened by a random
    fraction below ``jitter``."""

    attempts: int | None = 15
    base: float = 0.05
    cap: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 0:
            raise ValueError(f"attempts must be >= 0 or None, not {self.attempts!r}")
        if not self.base > 0 or not math.isfinite(self.cap) or self.cap < self.base:
            raise ValueError(f"need 0 < base <= cap < inf, not base={self.base!r} cap={self.cap!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait after the ``failures``-th failure (1 for the first)."""
        return exponential(failures, self.base, self.cap, jitter=self.jitter, rng=rng)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per error class retry limits plus one total ``deadline`` in seconds (``None``: none)."""

    transient: Backoff = field(default_factory=lambda: Backoff(attempts=15, base=0.05, cap=30.0))
    not_ready: Backoff = field(default_factory=lambda: Backoff(attempts=None, base=1.0, cap=60.0))
    deadline: float | None = 3600.0

    def __post_init__(self) -> None:
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be positive or None, not {self.deadline!r}")

    def for_class(self, cls: ErrorClass) -> Backoff | None:
        """The backoff of ``cls``; ``None`` for Permanent (never retried)."""
        if cls is ErrorClass.TRANSIENT:
            return self.transient
        if cls is ErrorClass.NOT_READY:
            return self.not_ready
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """Retry after ``delay`` seconds, or (``give_up``) stop with ``reason`` and ``message``."""

    delay: float = 0.0
    give_up: bool = False
    reason: str = ""
    message: str = ""
    attempts: int = 0  # failures of this desired state so far, all classes


@dataclass(slots=True)
class _KeyState:
    generation: object
    first_failure: float
    failures: dict[ErrorClass, int] = field(default_factory=dict)
    uncertain: int = 0


class RetryTracker:
    """Per-object retry state under a policy: call :meth:`failed` for each failure and
    :meth:`forget` after a success (or when the object is gone)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._keys: dict[Hashable, _KeyState] = {}
        self.uncertain_outcomes = 0  # failures whose outcome was unknown (observed before acting again)

    def failed(self, key: Hashable, generation: object, policy: RetryPolicy, cls: ErrorClass, *,
               retry_after: float | None = None, uncertain: bool = False, message: str = "") -> Decision:
        now = self._clock()
        state = self._keys.get(key)
        if state is None or state.generation != generation:
            state = self._keys[key] = _KeyState(generation, now)
        count = state.failures[cls] = state.failures.get(cls, 0) + 1
        total = sum(state.failures.values())
        if uncertain:
            state.uncertain += 1
            self.uncertain_outcomes += 1
        backoff = policy.for_class(cls)
        if backoff is None:
            return Decision(give_up=True, reason="Permanent", message=message, attempts=total)
        if backoff.attempts is not None and count > backoff.attempts:
            return Decision(give_up=True, reason="RetryBudgetExhausted", attempts=total,
                            message=f"gave up after {count} {cls.value} failures; last error: {message}")
        elapsed = now - state.first_failure
        if policy.deadline is not None and elapsed >= policy.deadline:
            return Decision(give_up=True, reason="RetryDeadlineExceeded", attempts=total,
                            message=f"still failing {elapsed:.1f}s after the first failure "
                                    f"(deadline {policy.deadline:g}s); last error: {message}")
        if retry_after is not None and cls is ErrorClass.NOT_READY:
            delay = max(0.0, retry_after)  # the subsystem said when: honour it
        else:
            delay = backoff.delay(count, self._rng)
        if policy.deadline is not None:
            delay = min(delay, policy.deadline - elapsed)  # the last attempt falls on the deadline
        return Decision(delay=delay, attempts=total)

    def forget(self, key: Hashable) -> None:
        self._keys.pop(key, None)

    def attempts(self, key: Hashable) -> int:
        state = self._keys.get(key)
        return sum(state.failures.values()) if state else 0

    def __len__(self) -> int:
        return len(self._keys)
