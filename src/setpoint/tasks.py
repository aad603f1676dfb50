"""Owned background tasks: whoever starts one cancels it and waits for it to end.

Loops that wait for an event with a deadline use ``async with asyncio.timeout(...)``, never
``asyncio.wait_for(event.wait(), ...)``: on Python 3.11, wait_for can swallow a cancellation that
arrives just as the event is set, and a loop waiting that way then never ends when its owner
cancels it (seen as a test that hung in its teardown).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, swallowing its cancellation."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
