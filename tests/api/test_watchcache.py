"""The watch cache over a real SQLite store: fan-out, slow watchers cut off, catch-up from the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from setpoint.server.objects import encode
from setpoint.server.watchcache import WatchCache, WatcherClosed
from setpoint.store import SQLiteBackend

PREFIX = "/registry/example.com/widgets/"


def obj(name: str, n: int = 0) -> bytes:
    return encode({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": name, "namespace": "ns", "labels": {"n": str(n % 2)}},
                   "spec": {"n": n}})


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[WatchCache]:
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    wc = WatchCache(backend, window=50, watcher_queue=20)
    await wc.start()
    try:
        yield wc
    finally:
        await wc.stop()
        await backend.close()


async def collect(wc: WatchCache, after: int | None, n: int, **kw: object) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    async with contextlib.aclosing(wc.watch(PREFIX, PREFIX + "ns/", None, after, **kw)) as it:  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            async for line, _rev in it:
                if line:
                    out.append(json.loads(line))
                    if len(out) == n:
                        break
    return out


async def test_fan_out_in_order_to_many_watchers(cache: WatchCache) -> None:
    start = cache.revision
    tasks = [asyncio.create_task(collect(cache, start, 30)) for _ in range(10)]
    for i in range(30):
        await cache.backend.create(f"{PREFIX}ns/w{i}", obj(f"w{i}", i))
    results = await asyncio.gather(*tasks)
    expected = list(range(start + 1, start + 31))
    for events in results:
        revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]  # type: ignore[index]
        assert revs == expected
        assert {e["type"] for e in events} == {"ADDED"}


async def test_slow_watcher_is_cut_off_and_fast_one_is_not(cache: WatchCache) -> None:
    start = cache.revision
    slow = cache.watch(PREFIX, PREFIX, None, start)
    fast_task = asyncio.create_task(collect(cache, start, 60))
    await cache.backend.create(f"{PREFIX}ns/s0", obj("s0"))
    first = await anext(slow)  # registers, then never reads again while writes pour in
    assert first[0]
    for i in range(1, 60):
        await cache.backend.create(f"{PREFIX}ns/s{i}", obj(f"s{i}"))
    fast = await fast_task
    assert len(fast) == 60
    assert cache.watchers_cut >= 1
    with pytest.raises(WatcherClosed):
        async with asyncio.timeout(10):
            async for _ in slow:
                pass
    # The cut-off watcher resumes from its last revision and loses nothing.
    resumed = await collect(cache, int(json.loads(first[0])["object"]["metadata"]["resourceVersion"]), 59)
    assert [e["object"]["metadata"]["name"] for e in resumed] == [f"s{i}" for i in range(1, 60)]  # type: ignore[index]


async def test_cut_off_watcher_gets_every_queued_line_before_it_ends(cache: WatchCache) -> None:
    start = cache.revision
    slow = cache.watch(PREFIX, PREFIX, None, start)
    await cache.backend.create(f"{PREFIX}ns/q0", obj("q0"))
    got = [await anext(slow)]
    for i in range(1, 60):  # far more than the watcher's queue holds
        await cache.backend.create(f"{PREFIX}ns/q{i}", obj(f"q{i}"))
    await cache.wait_for(start + 60, 10)
    with pytest.raises(WatcherClosed):
        async with asyncio.timeout(10):
            async for item in slow:
                got.append(item)
    names = [json.loads(line)["object"]["metadata"]["name"] for line, _ in got if line]
    assert names == [f"q{i}" for i in range(len(names))]  # no line lost before the cut
    last = got[-1][1]
    while len(names) < 60:  # resume, as a client does, until caught up (each cut loses nothing)
        with contextlib.suppress(WatcherClosed):
            async with contextlib.aclosing(cache.watch(PREFIX, PREFIX, None, last)) as it:
                async with asyncio.timeout(10):
                    async for line, rev in it:
                        names.append(json.loads(line)["object"]["metadata"]["name"])
                        last = rev
                        if len(names) == 60:
                            break
    assert names == [f"q{i}" for i in range(60)]


async def test_resume_older_than_the_window_reads_the_store(cache: WatchCache) -> None:
    start = cache.revision
    for i in range(120):  # more than the window of 50
        await cache.backend.create(f"{PREFIX}ns/o{i}", obj(f"o{i}"))
    assert cache.floor > start
    task = asyncio.create_task(collect(cache, start, 121))
    await cache.backend.create(f"{PREFIX}ns/late", obj("late"))
    events = await task
    revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]  # type: ignore[index]
    assert revs == list(range(start + 1, start + 122))


async def test_initial_state_then_changes(cache: WatchCache) -> None:
    for i in range(3):
        await cache.backend.create(f"{PREFIX}ns/i{i}", obj(f"i{i}"))
    assert await cache.wait_for(await cache.backend.current_revision(), 5)
    task = asyncio.create_task(collect(cache, None, 4))
    kv = await cache.backend.create(f"{PREFIX}ns/new", obj("new"))
    events = await task
    assert [e["type"] for e in events] == ["ADDED"] * 4
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(kv.mod_revision)  # type: ignore[index]


async def test_wait_for_times_out_on_a_future_revision(cache: WatchCache) -> None:
    assert not await cache.wait_for(cache.revision + 100, 0.05)
