"""Rate limiters for retries: small values that say how long a key should wait before it runs again.

A reconcile that fails asks the work queue to add its key back "rate limited"; the queue asks its
limiter :meth:`RateLimiter.when` and holds the key that long. Two kinds of limit are combined:

- :class:`ExponentialBackoff` is per key: each failure of a key doubles its wait (base, 2·base,
  4·base, … up to ``cap``), so one broken object backs off without slowing the others down. Its
  jitter shortens every wait by a random fraction up to ``jitter`` so that many keys that failed
  together (a driver restart, a lost connection) do not all come back in the same instant.
- :class:`TokenBucket` is global: at most ``burst`` retries at once and ``rate`` per second after
  that, however many keys fail, so a storm of failures cannot overwhelm the subsystem behind the
  driver.

:class:`MaxOf` combines limiters by taking the longest wait; :func:`default_rate_limiter` is the
usual combination (5 ms doubling to 1000 s per key, and 10 retries per second with a burst of 100).

A key's failures are remembered until :meth:`RateLimiter.forget` is called for it — call it when
the key reconciles successfully, or the next failure starts from the long wait it had reached.
Time is read only through the ``clock`` callables (monotonic seconds), so tests can drive them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from setpoint.backoff import exponential

Clock = Callable[[], float]
"""A callable returning monotonic seconds, like :func:`time.monotonic`."""

__all__ = [
    "Clock",
    "ExponentialBackoff",
    "MaxOf",
    "RateLimiter",
    "TokenBucket",
    "default_rate_limiter",
]


class RateLimiter(Protocol):
    """How long a key waits before its next attempt."""

    def when(self, key: Hashable) -> float:
        """Record one more attempt for ``key`` and return how many seconds it should wait (>= 0)."""
        ...

    def forget(self, key: Hashable) -> None:
        """Stop tracking ``key``: its next failure waits as if it were the first."""
        ...

    def retries(self, key: Hashable) -> int:
        """How many times ``key`` has been rate limited since it was last forgotten."""
        ...


class ExponentialBackoff:
    """Per-key exponential backoff: ``base * 2**n`` seconds after the n-th failure (n from 0), at
    most ``cap``, each wait shortened by a random fraction in ``[0, jitter)``.

    With ``jitter=0.1`` a wait of ``d`` becomes a value in ``(0.9·d, d]``: the cap stays a true
    maximum and successive waits of one key still grow (``0.9·2d > d``).
    """

    __slots__ = ("_failures", "_max_exponent", "_rng", "base", "cap", "jitter")

    def __init__(
        self,
        base: float = 0.005,
        cap: float = 1000.0,
        jitter: float = 0.1,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not base > 0:
            raise ValueError(f"base must be positive, not {base!r}")
        if not cap >= base or not math.isfinite(cap):
            raise ValueError(f"cap ({cap!r}) must be finite and at least base ({base!r})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {jitter!r}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._failures: dict[Hashable, int] = {}
        # The first exponent whose wait reaches the cap; beyond it 2**n is never computed (no overflow).
        self._max_exponent = max(0, math.ceil(math.log2(cap / base)))

    def when(self, key: Hashable) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        if n >= self._max_exponent:  # at the cap: no power to compute
            return exponential(1, self.cap, self.cap, jitter=self.jitter, rng=self._rng)
        return exponential(n + 1, self.base, self.cap, jitter=self.jitter, rng=self._rng)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def retries(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def __len__(self) -> int:
        """How many keys are being tracked (each until it is forgotten)."""
        return len(self._failures)


class TokenBucket:
    """A global token bucket: ``burst`` tokens, refilled at ``rate`` per second.

    :meth:`when` always reserves a token, borrowing from the future when the bucket is empty, and
    returns how long to wait until that token exists: with the bucket empty, successive calls
    return ``1/rate``, ``2/rate``, … so the retries that follow are spaced ``1/rate`` apart.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float = 10.0, burst: int = 100, *, clock: Clock = time.monotonic) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be positive and finite, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # negative when tokens have been reserved ahead of time
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:  # a clock that steps back refills nothing
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now

    def when(self, key: Hashable) -> float:
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def forget(self, key: Hashable) -> None:
        """Tokens are not per key: nothing to forget."""

    def retries(self, key: Hashable) -> int:
        return 0

    @property
    def tokens(self) -> float:
        """Tokens available now (negative: that many are reserved by waits still running)."""
        self._refill()
        return self._tokens


class MaxOf:
    """The longest wait any of ``limiters`` asks for. Every part sees every call, so each keeps
    counting (the bucket reserves a token even when the backoff is longer)."""

    __slots__ = ("limiters",)

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOf needs at least one limiter")
        self.limiters: tuple[RateLimiter, ...] = limiters

    def when(self, key: Hashable) -> float:
        return max([limiter.when(key) for limiter in self.limiters])

    def forget(self, key: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def retries(self, key: Hashable) -> int:
        return max(limiter.retries(key) for limiter in self.limiters)


def default_rate_limiter(*, clock: Clock = time.monotonic, rng: random.Random | None = None) -> MaxOf:
    """Per key 5 ms doubling to 1000 s (10 % jitter), and at most 10 retries per second with a
    burst of 100 across all keys."""
    return MaxOf(ExponentialBackoff(0.005, 1000.0, 0.1, rng=rng), TokenBucket(10.0, 100, clock=clock))
