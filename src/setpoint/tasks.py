"""Owned background tasks: whoever starts one cancels it and waits for it to end.

Loops that wait for an event with a deadline use ``async with asyncio.timeout(...)``, never
``asyncio.wait_for(event.wait(), ...)``: on Python 3.11, wait_for can swallow a cancellation that
arrives just as the event is set, and a loop waiting that way then never ends when its owner
cancels it (seen as a test that hung in its teardown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, swallowing its cancellation."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def close_quietly(close: Callable[[], Awaitable[object]], timeout: float = 5.0) -> None:
    """Close a connection in whatever state it is, within ``timeout``. A library's close of a
    connection that is reconnecting (nats-py's, with its server cut off) can end in a
    ``CancelledError`` of its own making, from the tasks it cancels; that one must not escape as if
    the caller had been cancelled (an informer stopping would stop its owner). A cancellation of
    the caller itself still propagates; any other error of a broken connection is dropped."""
    task = asyncio.current_task()
    try:
        async with asyncio.timeout(timeout):  # not wait_for: see the module's doc
            await close()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
    except Exception:  # closing a broken connection: nothing left to do about it
        pass
