"""Write-acknowledged → event-received latency, at a paced write rate, seen by N watchers.

The writer (this process) sends creates at a fixed rate over a few keep-alive connections and
records, for each, the moment its success response was parsed. The watchers live in another
process (so the writer's work never delays their reads), each on its own watch stream; for each
event they record the moment its line arrived. Latency = arrival - ack, matched by object name
(setpoint) or key (etcd). Both clocks are CLOCK_MONOTONIC, one clock for the whole machine.
An event can arrive before its writer has parsed the response: such latencies are negative and kept.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe

from bench.rawhttp import Connection, open_stream


@dataclass
class WatchSpec:
    host: str
    port: int
    request: bytes  # the whole HTTP request that opens one watch stream
    pattern: bytes  # regex whose group 1 is the identity of a written object in an event line
    wait_first_line: bool = False  # etcd answers a watch create with a first "created" message


def _watchers_main(spec: WatchSpec, n: int, pipe: Pipe) -> None:
    import uvloop

    async def main() -> None:
        pattern = re.compile(spec.pattern)
        seen: list[dict[bytes, int]] = [{} for _ in range(n)]
        lines = [0] * n
        first_line = [asyncio.get_running_loop().create_future() for _ in range(n)]

        def handler(i: int) -> Callable[[bytes, int], None]:
            d = seen[i]
            fl = first_line[i]

            def on_line(line: bytes, t: int) -> None:
                lines[i] += 1
                if not fl.done():
                    fl.set_result(line)
                for m in pattern.finditer(line):
                    d.setdefault(m.group(1), t)
            return on_line

        streams = [await open_stream(spec.host, spec.port, spec.request, handler(i)) for i in range(n)]
        statuses = await asyncio.wait_for(
            asyncio.gather(*(s.headers_received for s in streams)), timeout=15)
        if any(s != 200 for s in statuses):
            pipe.send(("error", f"watch answered {statuses}"))
            return
        if spec.wait_first_line:
            await asyncio.wait_for(asyncio.gather(*first_line), timeout=15)
        pipe.send(("ready", None))
        loop = asyncio.get_running_loop()
        msg = await loop.run_in_executor(None, pipe.recv)
        expected, grace = msg[1], msg[2]
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(len(d) < expected for d in seen):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for s in streams:
            s.close()
        pipe.send(("result", seen, lines))

    try:
        uvloop.run(main())
    except BaseException as e:
        pipe.send(("error", repr(e)))


@dataclass
class LatencyResult:
    rate_target: float
    rate_achieved: float
    writes: int
    write_errors: int
    first_error: str
    watchers: int
    events_expected: int
    events_missing: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    negative_fraction: float
    write_p50_ms: float
    write_p99_ms: float

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[i], 3)


async def paced_writes(host: str, port: int, make: Callable[[int], tuple[bytes, bytes]], rate: float,
                       total: int, connections: int, ok: tuple[int, ...]
                       ) -> tuple[dict[int, tuple[bytes, int, int]], int, str, float]:
    """Send ``total`` writes at ``rate``/s. Returns {i: (identity, sent_ns, ack_ns)}, errors,
    the first error, and the achieved rate (writes acknowledged per second of sending)."""
    conns = [await Connection.open(host, port) for _ in range(connections)]
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    acks: dict[int, tuple[bytes, int, int]] = {}
    errors = 0
    first_error = ""

    async def sender(conn: Connection) -> None:
        nonlocal errors, first_error
        while True:
            i = await queue.get()
            if i is None:
                return
            ident, req = make(i)
            t0 = time.monotonic_ns()
            resp = await conn.request(req)
            if resp.status in ok:
                acks[i] = (ident, t0, resp.t_ns)
            else:
                errors += 1
                if not first_error:
                    first_error = f"{resp.status} {resp.body[:300]!r}"

    tasks = [asyncio.create_task(sender(c)) for c in conns]
    interval = 1.0 / rate
    t0 = time.monotonic()
    i = 0
    while i < total:
        now = time.monotonic()
        due = min(total, int((now - t0) / interval) + 1)
        while i < due:
            queue.put_nowait(i)
            i += 1
        next_at = t0 + i * interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    for _ in conns:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    for c in conns:
        c.close()
    return acks, errors, first_error, len(acks) / elapsed if elapsed > 0 else 0.0


def measure(spec: WatchSpec, watchers: int, host: str, port: int,
            make: Callable[[int], tuple[bytes, bytes]], rate: float, seconds: float, warmup: float,
            ok: tuple[int, ...], connections: int = 64, grace: float = 5.0) -> LatencyResult:
    """Open the watchers, then write at ``rate`` for ``warmup + seconds``; the first ``warmup``
    seconds of writes are made but not counted. ``connections`` is generous so that the rate
    holds even when each write takes tens of milliseconds."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_watchers_main, args=(spec, watchers, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("watchers did not start")
        kind, detail = parent.recv()
        if kind != "ready":
            raise RuntimeError(f"watchers failed: {detail}")
        total = int(rate * (warmup + seconds))
        skip = int(rate * warmup)
        import uvloop

        acks, errors, first_error, achieved = uvloop.run(
            paced_writes(host, port, make, rate, total, connections, ok))
        parent.send(("stop", len(acks), grace))
        if not parent.poll(grace + 30):
            raise RuntimeError("watchers did not report")
        msg = parent.recv()
        if msg[0] != "result":
            raise RuntimeError(f"watchers failed: {msg[1]}")
        seen: list[dict[bytes, int]] = msg[1]
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    lat: list[float] = []
    write_lat: list[float] = []
    missing = 0
    expected = 0
    for i, (ident, sent, ack) in acks.items():
        if i < skip:
            continue
        write_lat.append((ack - sent) / 1e6)
        for d in seen:
            expected += 1
            t = d.get(ident)
            if t is None:
                missing += 1
            else:
                lat.append((t - ack) / 1e6)
    lat.sort()
    write_lat.sort()
    return LatencyResult(
        rate_target=rate, rate_achieved=round(achieved, 1), writes=len(acks), write_errors=errors,
        first_error=first_error, watchers=watchers, events_expected=expected, events_missing=missing,
        p50_ms=_pct(lat, 0.50), p90_ms=_pct(lat, 0.90), p99_ms=_pct(lat, 0.99),
        max_ms=round(lat[-1], 3) if lat else float("nan"),
        negative_fraction=round(sum(1 for x in lat if x < 0) / len(lat), 4) if lat else 0.0,
        write_p50_ms=_pct(write_lat, 0.5), write_p99_ms=_pct(write_lat, 0.99),
    )
