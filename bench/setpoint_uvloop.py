"""``setpoint serve`` with its event loop forced to uvloop (``python -m bench --setpoint-uvloop``).

Older revisions of ``setpoint serve`` called ``asyncio.run(uvicorn.Server.serve(...))``, which
runs on the stock asyncio loop whatever ``uvicorn.Config(loop=...)`` says, and, their listening
socket being made with proto 0, asyncio never set TCP_NODELAY on accepted connections: every
keep-alive response (headers and body written separately) waited ~40 ms for the client's delayed
ACK. This launcher swaps ``asyncio.run`` for ``uvloop.run`` before the command runs, which
measures such a revision as it would be with that fixed; on revisions that run uvloop themselves
it changes nothing. It is also the place for experiments on the server process:

- ``BENCH_GC_THRESHOLD=a,b,c``: ``gc.set_threshold(a, b, c)`` before serving;
- ``BENCH_GC_REPORT=1``: time every garbage collection and print a summary line
  (``gc: gen0 n=... total=...ms max=...ms ...``, cumulative) every 2 s or so;
- ``BENCH_EXPERIMENT=file.py``: run that file first, in the server process, to patch something
  for an A/B comparison against the unpatched server.
"""

from __future__ import annotations

import asyncio
import gc
import os
import runpy
import sys
import time
from collections.abc import Coroutine
from typing import Any

import uvloop


def _run(main: Coroutine[Any, Any, Any], *, debug: bool | None = None) -> Any:
    return uvloop.run(main, debug=debug)


def _gc_report() -> None:
    """Time each collection; print cumulative figures at most every 2 s (uvicorn re-raises
    SIGTERM after its shutdown, so an atexit hook would never run)."""
    stats = {g: [0, 0.0, 0.0] for g in range(3)}  # count, total s, max s
    state = {"started": 0.0, "printed": time.monotonic()}

    def cb(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            state["started"] = time.perf_counter()
            return
        dt = time.perf_counter() - state["started"]
        s = stats[info["generation"]]
        s[0] += 1
        s[1] += dt
        s[2] = max(s[2], dt)
        now = time.monotonic()
        if now - state["printed"] >= 2.0:
            state["printed"] = now
            parts = [f"gen{g} n={s[0]} total={s[1] * 1e3:.1f}ms max={s[2] * 1e3:.2f}ms"
                     for g, s in stats.items()]
            print("gc: " + " ".join(parts), flush=True)

    gc.callbacks.append(cb)


if __name__ == "__main__":
    asyncio.run = _run  # type: ignore[assignment]
    if os.environ.get("BENCH_GC_THRESHOLD"):
        gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))
    if os.environ.get("BENCH_GC_REPORT"):
        _gc_report()
    if os.environ.get("BENCH_EXPERIMENT"):
        runpy.run_path(os.environ["BENCH_EXPERIMENT"])
    from setpoint.cli import main

    sys.argv[0] = "setpoint"
    main()
