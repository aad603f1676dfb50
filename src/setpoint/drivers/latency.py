"""Timeouts that follow a subsystem's measured latency.

A fixed timeout is a guess made once: far above a device's real latency, every lost request or
reply costs the whole timeout before anything is tried again (on loopback, 0.5 s for a device
that answers in 2 ms, which at 30 % loss made convergence 40x slower than without loss). The
timeout here is a multiple of a high percentile of the recent answers (not the slowest one: a
single stall would set it for the whole window), between a floor (no timeout shorter than that,
whatever was measured) and the configured timeout as the cap; until enough answers were seen it
is the cap. A timeout that fires early is no danger to correctness: the outcome is uncertain, so
the driver observes before it sends again, with the same operation id.

The multiple is 2 by default: what a client measures as latency is mostly its own event loop
getting round to the answer, already a high estimate of the network's; at 3 the southbound
benchmark converged 15-20 % slower at 30 % loss and no faster without loss
(docs/benchmarks.md, southbound). The floor is 30 ms for the same reason: on a fast network twice
the measured latency is often below it, and at 50 ms it cost that benchmark 8 % at 30 % loss.
"""

from __future__ import annotations

from collections import deque


class AdaptiveTimeout:
    def __init__(self, cap: float, *, floor: float = 0.03, factor: float = 2.0, percentile: float = 0.95,
                 window: int = 200, warmup: int = 8) -> None:
        if not 0 < floor <= cap or factor < 1 or window < 1 or warmup < 1 or not 0 < percentile <= 1:
            raise ValueError("need 0 < floor <= cap, factor >= 1, window >= 1, warmup >= 1, 0 < percentile <= 1")
        self.cap = cap
        self.floor = floor
        self.factor = factor
        self.percentile = percentile
        self.warmup = warmup
        self._seen: deque[float] = deque(maxlen=window)
        self._timeout = cap
        self._since = 0  # answers since the timeout was last worked out

    def observe(self, seconds: float) -> None:
        """An answer came after ``seconds``."""
        self._seen.append(seconds)
        self._since += 1
        n = len(self._seen)
        if n >= self.warmup and (self._since >= max(1, n // 10) or n == self.warmup):
            # Worked out again every tenth of a window: sorting 200 numbers per answer would cost
            # more than the answers do.
            ordered = sorted(self._seen)
            high = ordered[min(n - 1, int(self.percentile * n))]
            self._timeout = min(self.cap, max(self.floor, self.factor * high))
            self._since = 0

    @property
    def current(self) -> float:
        """The timeout for the next request."""
        return self._timeout
