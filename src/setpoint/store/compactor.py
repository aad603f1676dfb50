"""Periodic compaction for any backend.

History is what lets a disconnected watcher resume without relisting, so it is kept by two
limits: a number of revisions and a time span. The compactor forgets history older than the
newer of the two cut-off points, so neither limit lets history grow without bound: a burst of
writes is capped by ``keep_revisions``, a quiet store still forgets what is older than
``keep_seconds``. Either limit can be turned off with 0 (both off: never compact).

The newest revision is never compacted: a list "now" reports it, and the following pages of a
paginated list are read at it, so it must stay readable even when nothing is written for a while.

The time limit needs to know which revision was current ``keep_seconds`` ago; the store does not
record times, so the compactor samples (monotonic time, revision) at every tick and keeps only
the samples it may still need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from setpoint.store.backend import Backend, StoreError
from setpoint.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# A safety bound on the samples kept; at one per tick this is far more than any sane
# keep_seconds / interval. Losing the oldest samples only makes the time limit keep more history.
MAX_SAMPLES = 10_000


class Compactor:
    def __init__(
        self,
        backend: Backend,
        *,
        keep_revisions: int,
        keep_seconds: float,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if keep_revisions < 0 or keep_seconds < 0:
            raise ValueError("keep_revisions and keep_seconds must not be negative (0 disables a limit)")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.backend = backend
        self.keep_revisions = keep_revisions
        self.keep_seconds = keep_seconds
        self.interval = interval
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Compact every ``interval`` seconds until :meth:`stop`. Needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="setpoint-compactor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self.compact_once()
            except StoreError as exc:  # the store is down or closing: try again next tick
                log.warning("compaction failed: %s", exc)
            await asyncio.sleep(self.interval)

    def target(self, now: float, current: int) -> int:
        """The revision to compact to, given a new sample (now, current); 0 means nothing to do."""
        self._samples.append((now, current))
        candidates: list[int] = []
        if self.keep_revisions:
            candidates.append(current - self.keep_revisions)
        if self.keep_seconds:
            cutoff = now - self.keep_seconds
            # Drop samples older than the newest one at or before the cut-off: it supersedes them.
            while len(self._samples) >= 2 and self._samples[1][0] <= cutoff:
                self._samples.popleft()
            oldest_time, oldest_rev = self._samples[0]
            if oldest_time <= cutoff:
                candidates.append(oldest_rev)
        if not candidates:
            return 0
        # Never the current revision itself: reads at a compacted revision fail, and a quiet
        # store's newest revision is the one a paginated list reads all its pages at.
        return max(0, min(max(candidates), current - 1))

    async def compact_once(self) -> int:
        """Sample the revision and compact if a limit says so; returns the revision compacted
        to, or 0 when nothing was compacted."""
        current = await self.backend.current_revision()
        target = self.target(self._clock(), current)
        if target <= await self.backend.compacted_revision():
            return 0
        await self.backend.compact(target)
        log.debug("compacted history up to revision %d (current %d)", target, current)
        return target
