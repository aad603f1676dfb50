"""``interrupt``: the server says "key K changed at revision R" on NATS; the agent then asks for
what changed since its revision, in one catch-up request, as ``poll`` does.

An interrupt carries no state, so losing one loses nothing but time: a periodic resync (a catch-up
every ``resync_period`` seconds) recovers what lost interrupts would have triggered. Interrupts that
arrive while a catch-up is running are coalesced into one more catch-up afterwards; one that names
a revision the agent already has is ignored (a duplicate, or the echo of a change already fetched).
The agent subscribes before it lists, so a change made between the list and the subscription
cannot go unannounced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from setpoint.client import ConnectionFailed
from setpoint.tasks import close_quietly
from setpoint.transfer.base import Target, Transport, catch_up, list_into
from setpoint.transfer.subjects import Subjects

log = logging.getLogger(__name__)


class _Interrupt(msgspec.Struct):
    key: str = ""
    revision: int = 0
    type: str = ""


_decode = msgspec.json.Decoder(_Interrupt).decode


async def server_subjects(target: Target) -> Subjects:
    """The subject names of the control plane the target's client talks to (``GET /transfer``):
    several control planes may share one NATS, each under its own prefix."""
    info = await target.client.transfer_info()
    return Subjects(str((info.get("nats") or {}).get("prefix") or "setpoint"))


async def connect_nats(url: str, connect: Callable[..., Any] | None = None) -> Any:
    """A NATS connection that reconnects by itself; failures to connect are the client's
    :class:`ConnectionFailed`, so the informer retries them like any other network failure."""
    import nats

    try:
        return await (connect or nats.connect)(url, allow_reconnect=True, max_reconnect_attempts=-1,
                                              reconnect_time_wait=0.5, connect_timeout=5)
    except Exception as e:  # nats.errors.NoServersError, OSError, TimeoutError...
        raise ConnectionFailed(f"NATS at {url}: {type(e).__name__}: {e}") from e


async def close_nats(nc: Any) -> None:
    """Close a NATS connection in whatever state it is (:func:`setpoint.tasks.close_quietly`)."""
    await close_quietly(nc.close)


class InterruptTransport(Transport):
    name = "interrupt"

    def __init__(self, nats_url: str, *, resync_period: float = 30.0,
                 connect: Callable[..., Any] | None = None) -> None:
        if resync_period <= 0:
            raise ValueError("resync_period must be positive")
        self.nats_url = nats_url
        self.resync_period = resync_period
        self._connect = connect
        self._nc: Any = None
        self._sub: Any = None
        self._dirty = asyncio.Event()
        self._last_fetch = 0.0

    async def _subscribe(self, target: Target) -> None:
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect_nats(self.nats_url, self._connect)
            self._sub = None
        if self._sub is None:
            subject = (await server_subjects(target)).interrupt(target.resource.group, target.resource.plural)

            async def on_interrupt(msg: Any) -> None:
                target.stats.interrupts += 1
                try:
                    note = _decode(msg.data)
                except msgspec.DecodeError:
                    log.warning("%s: ignoring a malformed interrupt on %s", target.resource.plural, subject)
                    return
                have = target.resource_version
                if have is not None and have.isdigit() and note.revision <= int(have):
                    return  # already fetched
                self._dirty.set()

            # Bounded: an agent that cannot keep up drops interrupts (the resync recovers them),
            # rather than NATS cutting it off as a slow consumer.
            self._sub = await self._nc.subscribe(subject, cb=on_interrupt, pending_msgs_limit=10_000)

    async def step(self, target: Target) -> None:
        await self._subscribe(target)
        if target.resource_version is None:
            self._dirty.clear()
            await list_into(target)
        else:
            self._dirty.clear()  # interrupts from now on trigger the next round
            await catch_up(target)
        self._last_fetch = time.monotonic()
        remaining = self.resync_period - (time.monotonic() - self._last_fetch)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(remaining, 0.0)):  # not wait_for: see setpoint.tasks
                await self._dirty.wait()

    async def close(self) -> None:
        nc, self._nc, self._sub = self._nc, None, None
        if nc is not None:
            await close_nats(nc)
