"""Exponential backoff with jitter, capped: the one implementation every retry loop uses
(reconnecting informers, the work queue's per-item limiter, driver retry policies, the CLI).

:func:`exponential` is the formula; :class:`Backoff` counts failures in a row for one loop; the
work queue's per-key limiter (``agent.ratelimit.ExponentialBackoff``) and the drivers' per-class
policies (``agent.retry.Backoff``) keep their own counts and call the same formula."""

from __future__ import annotations

import logging
import random

# Past this many doublings every wait is at the cap anyway; the bound keeps ``factor ** n`` finite.
_MAX_EXPONENT = 64


def exponential(failures: int, initial: float, cap: float, factor: float = 2.0, jitter: float = 0.0,
                rng: random.Random | None = None) -> float:
    """The wait after the ``failures``-th failure in a row (1 for the first): ``initial``, times
    ``factor`` per further failure, at most ``cap``, shortened by a random fraction below
    ``jitter`` (so ``cap`` stays a true maximum and clients that failed together spread out)."""
    n = min(max(failures - 1, 0), _MAX_EXPONENT)
    d = min(cap, initial * factor ** n)
    if jitter:
        d *= 1.0 - jitter * (rng or random).random()
    return d


class Backoff:
    """``initial``, times ``factor`` per failure, at most ``cap``; each delay is drawn uniformly
    from ``[(1 - jitter) * d, d]`` so that many clients that lost the same server do not come back
    in lockstep. :meth:`reset` after a success."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, factor: float = 2.0, jitter: float = 0.5,
                 *, rng: random.Random | None = None) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failure in a row (1 for the first), jittered."""
        return exponential(failures, self.initial, self.cap, self.factor, self.jitter, self._rng)

    def next(self) -> float:
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """Says once that something started failing and once that it recovered, instead of a line per
    retry: an agent cut off from its server for an hour logs two lines, not thousands, and
    the count of attempts in between is in the second one."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0

    def failed(self, error: object, delay: float | None = None) -> None:
        self.failures += 1
        retry = f"; retrying in {delay:.2f}s, backing off" if delay is not None else "; retrying"
        if self.failures == 1:
            self.log.warning("%s failed: %s%s", self.what, error, retry)
        else:
            self.log.debug("%s failed again (attempt %d): %s%s", self.what, self.failures, error, retry)

    def recovered(self) -> None:
        if self.failures:
            self.log.info("%s works again after %d failed attempts", self.what, self.failures)
            self.failures = 0
