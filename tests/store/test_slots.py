"""``Slots``, the bound on a backend's pending writes: tried without waiting by the store
service, awaited by ordinary callers, in order, and never lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from setpoint.store._core import Slots


async def test_slots_are_taken_until_none_is_free_and_given_back() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take()
    slots.give()
    assert slots.free == 1
    assert slots.try_take()
    with pytest.raises(ValueError):
        Slots(0)


async def test_waiters_are_served_in_order_and_a_free_slot_is_not_taken_past_them() -> None:
    slots = Slots(1)
    assert slots.try_take()
    served: list[int] = []

    async def waiter(i: int) -> None:
        await slots.take()
        served.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)  # one loop turn: all three are now waiting (no time passes)
    assert served == [] and slots.free == 0
    slots.give()
    await asyncio.wait_for(asyncio.shield(tasks[0]), 5)
    assert not slots.try_take()  # the slot went to the first waiter, and two still wait
    slots.give()
    slots.give()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert served == [0, 1, 2]
    slots.give()
    assert slots.free == 1


async def test_a_cancelled_waiter_loses_no_slot_and_blocks_no_one() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiting = asyncio.create_task(slots.take())
    await asyncio.sleep(0)  # one loop turn: it is waiting
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.give()
    assert slots.free == 1 and slots.try_take()  # the cancelled waiter is not in the way

    # Handed the slot and cancelled in the same turn: the slot passes on, it is not lost.
    handed = asyncio.create_task(slots.take())
    after = asyncio.create_task(slots.take())
    await asyncio.sleep(0)  # one loop turn: both are waiting
    slots.give()  # to `handed`, whose task has not run yet...
    handed.cancel()  # ...and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(after, 5)
    slots.give()
    assert slots.free == 1
