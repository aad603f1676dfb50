"""Writers that retry on conflict take turns per key, in arrival order, and the map of
locks holds only keys being written."""

from __future__ import annotations

import asyncio

from setpoint.server.keylocks import KeyLocks


async def test_writers_to_one_key_take_turns_in_order_and_the_map_empties() -> None:
    locks = KeyLocks()
    inside: list[int] = []
    order: list[int] = []
    gate = asyncio.Event()
    first_in = asyncio.Event()

    async def writer(i: int) -> None:
        async with locks.hold("/k"):
            first_in.set()
            inside.append(i)
            assert len(inside) == 1, f"writers {inside} held one key at once"
            order.append(i)
            await gate.wait()
            inside.remove(i)

    tasks = [asyncio.create_task(writer(i)) for i in range(20)]
    await first_in.wait()
    assert len(locks) == 1
    gate.set()
    await asyncio.gather(*tasks)
    assert order == list(range(20))
    assert len(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("/a"):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    async with asyncio.timeout(5):
        async with locks.hold("/b"):
            assert len(locks) == 2
    release.set()
    await task
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    locks = KeyLocks()
    release = asyncio.Event()
    held = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("/a"):
            held.set()
            await release.wait()

    first = asyncio.create_task(holder())
    await held.wait()
    waiter = asyncio.create_task(holder())
    async with asyncio.timeout(5):
        while locks.users("/a") < 2:  # noqa: ASYNC110 - until the waiter is queued behind the holder
            await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await first
    assert waiter.cancelled(), "the waiter got the lock instead of being cancelled while waiting"
    assert len(locks) == 0 and locks.users("/a") == 0
