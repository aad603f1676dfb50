"""Closing connections whose library misbehaves while closing (setpoint.tasks.close_quietly)."""

from __future__ import annotations

import asyncio

import pytest

from setpoint.tasks import close_quietly


async def test_a_cancellation_the_close_makes_itself_does_not_escape() -> None:
    async def close() -> None:
        raise asyncio.CancelledError  # what nats-py's close of a reconnecting connection can do

    await close_quietly(close)  # returns: the caller was not cancelled


async def test_errors_and_a_close_that_hangs_end_within_the_timeout() -> None:
    async def broken() -> None:
        raise ConnectionResetError("gone")

    await close_quietly(broken)
    hung = asyncio.Event()
    await close_quietly(hung.wait, timeout=0.05)  # returns after the timeout instead of hanging
    assert not hung.is_set()


async def test_a_cancellation_of_the_caller_still_propagates() -> None:
    started = asyncio.Event()

    async def slow_close() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(close_quietly(slow_close, timeout=60))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
