"""``poll``: every ``interval`` seconds (with jitter, so that many agents do not ask in
lockstep) the agent asks the server for what changed since its revision.

The question is one short request (the server's ``catchUp`` watch): when nothing changed the
answer is a single bookmark of about 150 bytes, never the whole list; when something did, only
the changed objects come, newest state per key. Lost answers cost nothing but the wait for the
next poll; a revision the server no longer has (410) lists again.
"""

from __future__ import annotations

import asyncio
import random

from setpoint.transfer.base import Target, Transport, catch_up, list_into


class PollTransport(Transport):
    name = "poll"

    def __init__(self, *, interval: float = 5.0, jitter: float = 0.2) -> None:
        if interval <= 0 or not 0 <= jitter < 1:
            raise ValueError("need interval > 0 and 0 <= jitter < 1")
        self.interval = interval
        self.jitter = jitter

    async def step(self, target: Target) -> None:
        if target.resource_version is None:
            await list_into(target)
        else:
            await catch_up(target)
        # The schedule itself, not a synchronisation: the next poll is due then.
        await asyncio.sleep(self.interval * (1 - self.jitter * random.random()))
