"""The compactor's policy (which revision to compact to) and its background task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from setpoint.store import Compactor, SQLiteBackend

from .conformance import wait_until


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def write(backend: SQLiteBackend, n: int) -> int:
    for _ in range(n):
        try:
            await backend.update("/k", b"x")
        except Exception:
            await backend.create("/k", b"x")
    return await backend.current_revision()


def policy(keep_revisions: int, keep_seconds: float) -> Compactor:
    return Compactor(None, keep_revisions=keep_revisions, keep_seconds=keep_seconds, interval=1)  # type: ignore[arg-type]


def test_keep_revisions_only() -> None:
    c = policy(100, 0)
    assert c.target(0, 50) == 0
    assert c.target(1, 150) == 50
    assert c.target(2, 1000) == 900


def test_keep_seconds_only() -> None:
    c = policy(0, 10)
    assert c.target(0, 10) == 0  # no sample is 10 s old yet
    assert c.target(5, 20) == 0
    assert c.target(11, 30) == 10  # the revision current at t=0 (t <= 11 - 10)
    assert c.target(16, 40) == 20  # the revision current at t=5
    assert c.target(100, 40) == 39
    assert len(c._samples) <= 2  # samples that can no longer matter are dropped


def test_the_newer_cut_off_wins() -> None:
    c = policy(5, 10)
    c.target(0, 10)
    assert c.target(10, 100) == 95  # a burst: the revision limit cuts deeper
    c = policy(1000, 10)
    c.target(0, 10)
    assert c.target(10, 100) == 10  # a quiet store: the time limit cuts deeper


def test_never_the_current_revision() -> None:
    c = policy(0, 10)
    c.target(0, 40)
    assert c.target(20, 40) == 39  # a quiet store: the newest revision stays readable
    assert policy(1, 0).target(0, 40) == 39
    assert policy(0, 10).target(0, 0) == 0


def test_both_limits_off_never_compacts() -> None:
    c = policy(0, 0)
    assert c.target(0, 10) == 0
    assert c.target(1e9, 10**9) == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Compactor(None, keep_revisions=-1, keep_seconds=0, interval=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Compactor(None, keep_revisions=1, keep_seconds=0, interval=0)  # type: ignore[arg-type]


async def test_compact_once(store: SQLiteBackend) -> None:
    now = [0.0]
    c = Compactor(store, keep_revisions=10, keep_seconds=30, interval=1, clock=lambda: now[0])
    await write(store, 25)
    assert await c.compact_once() == 15
    assert await store.compacted_revision() == 15
    assert await c.compact_once() == 0  # nothing new
    now[0] = 31
    await write(store, 2)
    assert await c.compact_once() == 25  # revision 25 was current 31 s ago; newer than 27 - 10
    assert await store.compacted_revision() == 25


async def test_background_task(store: SQLiteBackend) -> None:
    c = Compactor(store, keep_revisions=3, keep_seconds=0, interval=0.01)
    c.start()
    try:
        current = await write(store, 20)

        async def compacted() -> bool:
            return await store.compacted_revision() == current - 3

        await wait_until(compacted, "the compactor to catch up")
    finally:
        await c.stop()
    assert c._task is None
    await c.stop()  # twice is fine


async def test_background_task_survives_store_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = SQLiteBackend(tmp_path / "s.db")
    await backend.start()
    await write(backend, 5)
    await backend.close()
    c = Compactor(backend, keep_revisions=1, keep_seconds=0, interval=0.01)
    c.start()
    task = c._task
    assert task is not None

    async def failed_twice() -> bool:
        return sum("compaction failed" in r.getMessage() for r in caplog.records) >= 2

    with caplog.at_level("WARNING", logger="setpoint.store.compactor"):
        await wait_until(failed_twice, "two failed ticks")
    assert not task.done()  # Unavailable from the closed store is logged, not fatal
    await c.stop()
    assert task.cancelled()
