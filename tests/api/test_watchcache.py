"""The watch cache over a real SQLite store: fan-out, slow watchers cut off, catch-up from the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.server.objects import encode
from setpoint.server.watchcache import WatchCache, WatcherClosed
from setpoint.store import SQLiteBackend

PREFIX = "/registry/example.com/widgets/"


def obj(name: str, n: int = 0) -> bytes:
    return encode({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": name, "namespace": "ns", "labels": {"n": str(n % 2)}},
                   "spec": {"n": n}})


@pytest.fixture(params=[0, 30], ids=["cut-off", "fast-forward-then-cut-off"])
async def cache(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[WatchCache]:
    """Watchers that fall behind are cut off at once (``fast_forward_keys=0``), or after being
    fast-forwarded on more distinct keys than 30: the tests below write 60 distinct keys, so
    either way a slow watcher ends up cut off, and must lose nothing."""
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    wc = WatchCache(backend, window=50, watcher_queue=20, fast_forward_keys=request.param)
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
            async for line, _rev, _skipped in it:
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
    names = [json.loads(line)["object"]["metadata"]["name"] for line, _, _ in got if line]
    assert names == [f"q{i}" for i in range(len(names))]  # no line lost before the cut
    last = got[-1][1]
    while len(names) < 60:  # resume, as a client does, until caught up (each cut loses nothing)
        with contextlib.suppress(WatcherClosed):
            async with contextlib.aclosing(cache.watch(PREFIX, PREFIX, None, last)) as it:
                async with asyncio.timeout(10):
                    async for line, rev, _ in it:
                        if not line:
                            continue
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


@pytest.fixture
async def ff_cache(tmp_path: Path) -> AsyncIterator[WatchCache]:
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    wc = WatchCache(backend, window=5_000, watcher_queue=20, fast_forward_keys=30)
    await wc.start()
    try:
        yield wc
    finally:
        await wc.stop()
        await backend.close()


async def _drain(it: AsyncIterator[tuple[bytes, int, int]], until_rev: int, *,
                 fast_forwarded: bool = True) -> tuple[list[dict[str, Any]], int]:
    """Lines up to ``until_rev`` and the skipped count reported. A fast-forwarded watcher ends at
    the bookmark that closes its fast-forward; any other at the line at ``until_rev``."""
    events: list[dict[str, Any]] = []
    skipped = 0
    async with asyncio.timeout(10):
        async for line, rev, sk in it:
            skipped += sk
            if line:
                events.append(json.loads(line))
            if rev >= until_rev and (not line if fast_forwarded else bool(line)):
                break
    return events, skipped


def _rv(e: dict[str, Any]) -> int:
    return int(e["object"]["metadata"]["resourceVersion"])


async def test_slow_watcher_is_fast_forwarded_to_the_newest_state_per_key(ff_cache: WatchCache) -> None:
    start = ff_cache.revision
    slow = ff_cache.watch(PREFIX, PREFIX, None, start)
    kvs = [await ff_cache.backend.create(f"{PREFIX}ns/k{i}", obj(f"k{i}", 0)) for i in range(5)]
    first = await anext(slow)  # registered; now it stops reading while 1,000 updates pour in
    assert first[0]
    for n in range(1, 201):
        for i in range(5):
            kvs[i] = await ff_cache.backend.update(kvs[i].key, obj(f"k{i}", n))
    last = kvs[-1].mod_revision
    await ff_cache.wait_for(last, 10)
    events, skipped = await _drain(slow, last)
    await slow.aclose()
    revs = [_rv(e) for e in [json.loads(first[0]), *events]]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)  # never backwards, never twice
    assert len(events) <= 20 + 5 + 4  # the queue, then one line per key
    newest = {e["object"]["metadata"]["name"]: e["object"]["spec"]["n"] for e in events}
    assert newest == {f"k{i}": 200 for i in range(5)}
    assert skipped == 1004 - len(events)  # every update but those sent was skipped, and said so
    assert ff_cache.watchers_cut == 0 and ff_cache.watchers_fast_forwarded == 1
    assert ff_cache.events_skipped == skipped


async def test_fast_forward_drops_what_was_created_and_deleted_meanwhile(ff_cache: WatchCache) -> None:
    start = ff_cache.revision
    slow = ff_cache.watch(PREFIX, PREFIX, None, start)
    keep = await ff_cache.backend.create(f"{PREFIX}ns/keep", obj("keep"))
    await anext(slow)
    gone = await ff_cache.backend.create(f"{PREFIX}ns/reborn", obj("reborn", 1))  # queued: the client knows it
    for n in range(25):  # fills the queue: the watcher is fast-forwarded from here on
        keep = await ff_cache.backend.update(keep.key, obj("keep", n + 1))
    brief = await ff_cache.backend.create(f"{PREFIX}ns/brief", obj("brief"))
    await ff_cache.backend.delete(brief.key)
    await ff_cache.backend.delete(gone.key)
    reborn = await ff_cache.backend.create(f"{PREFIX}ns/reborn", obj("reborn", 2))
    await ff_cache.wait_for(reborn.mod_revision, 10)
    events, _ = await _drain(slow, reborn.mod_revision)
    await slow.aclose()
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert ("ADDED", "brief") not in seen and ("DELETED", "brief") not in seen
    # A delete and a new object under the same key are both told, in that order.
    tail = [s for s in seen if s[1] == "reborn"]
    assert tail == [("ADDED", "reborn"), ("DELETED", "reborn"), ("ADDED", "reborn")]
    assert events[-1]["object"]["spec"]["n"] == 2


async def test_resume_in_the_middle_of_a_fast_forward_loses_nothing(ff_cache: WatchCache) -> None:
    start = ff_cache.revision
    slow = ff_cache.watch(PREFIX, PREFIX, None, start)
    kvs = {i: await ff_cache.backend.create(f"{PREFIX}ns/m{i}", obj(f"m{i}", 0)) for i in range(10)}
    await anext(slow)
    for n in range(1, 30):
        for i in range(10):
            kvs[i] = await ff_cache.backend.update(kvs[i].key, obj(f"m{i}", n))
    last = max(kv.mod_revision for kv in kvs.values())
    await ff_cache.wait_for(last, 10)
    state: dict[str, int] = {}
    rev = start
    got = 0
    async with asyncio.timeout(10):
        async for line, r, _ in slow:  # the queue, then part of the fast-forward: then it drops
            if line:
                e = json.loads(line)
                state[e["object"]["metadata"]["name"]] = e["object"]["spec"]["n"]
                rev = r
                got += 1
                if got == 25:
                    break
    await slow.aclose()
    async with contextlib.aclosing(ff_cache.watch(PREFIX, PREFIX, None, rev)) as resumed:
        events, _ = await _drain(resumed, last, fast_forwarded=False)
    for e in events:
        state[e["object"]["metadata"]["name"]] = e["object"]["spec"]["n"]
    assert state == {f"m{i}": 29 for i in range(10)}
