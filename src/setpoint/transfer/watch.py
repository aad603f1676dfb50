"""``watch`` (the default): list, then one long-lived watch stream with bookmarks, resumed from
the last revision seen whenever it ends.

Bookmarks double as a heartbeat: the server sends one every few seconds to a watcher that asked
for them, so a stream silent for ``idle_timeout`` is a dead connection (the case that kept
kopf's watches silent for hours), dropped and opened again from the same revision.

The list and the events are read with each object left as the JSON the server sent, for a
target that caches objects that way (the informer: :mod:`setpoint.agent.cache`); a large list is
then mostly the server's time. A target that already holds many objects catches up by digests,
as every transport does.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from setpoint.backoff import Backoff
from setpoint.client import IdleTimeout, RawObjectList, RawWatchEvent
from setpoint.transfer.base import DIGEST_MIN_OBJECTS, Target, Transport, list_into

log = logging.getLogger(__name__)


@runtime_checkable
class RawTarget(Protocol):
    """A target that caches objects as the JSON the server sent (see :meth:`Target.replace`)."""

    def replace_raw(self, listing: RawObjectList, scope: Callable[[str], bool] | None = None) -> None: ...

    def apply_raw(self, event: RawWatchEvent) -> None: ...

    def cached_versions(self) -> builtins.list[tuple[str, str]]: ...


class WatchTransport(Transport):
    name = "watch"

    def __init__(self, *, watch_timeout: float = 300.0, backoff: Backoff | None = None) -> None:
        if watch_timeout <= 0:
            raise ValueError("watch_timeout must be positive")
        self.watch_timeout = watch_timeout
        self.backoff = backoff if backoff is not None else Backoff()

    async def step(self, target: Target) -> None:
        if target.resource_version is None:
            await self._list(target)
        await self._watch(target)

    @staticmethod
    async def _list(target: Target) -> None:
        if not isinstance(target, RawTarget) or len(target.cached_versions()) >= DIGEST_MIN_OBJECTS:
            await list_into(target)
            return
        listing = await target.client.list_all_raw(
            target.resource, namespace=target.namespace, label_selector=target.label_selector,
            field_selector=target.field_selector, limit=target.page_size,
        )
        target.stats.lists += 1
        target.replace_raw(listing)

    async def _watch(self, target: Target) -> None:
        timeout = int(self.watch_timeout * (1 + random.random()))  # spread reconnects out
        started = time.monotonic()
        received = 0
        stream = target.client.watch(
            target.resource, namespace=target.namespace, resource_version=target.resource_version,
            label_selector=target.label_selector, field_selector=target.field_selector,
            allow_bookmarks=True, timeout_seconds=timeout, idle_timeout=target.idle_timeout,
        )
        async with stream:
            target.stats.watches += 1
            try:
                if isinstance(target, RawTarget):
                    async for raw_event in stream.raw():
                        received += 1
                        if received == 1:
                            self.backoff.reset()  # the connection works: the next failure starts small
                        target.apply_raw(raw_event)
                else:
                    async for event in stream:
                        received += 1
                        if received == 1:
                            self.backoff.reset()
                        target.apply(event)
            except IdleTimeout:
                # The server answered, then went silent: the connection is dead, or (with
                # nothing written anywhere) merely quiet. Either way a new watch is the cure,
                # and it is tried at once; failures to open one back off as usual.
                target.stats.idle_timeouts += 1
                log.info("%s: nothing received for %.1fs; watching again from %s", target.resource.plural,
                         target.idle_timeout, target.resource_version)
                return
        # The server ended the stream (timeoutSeconds, a cut-off watcher, shutdown): resume at
        # once, unless it keeps ending streams before they deliver anything.
        if received == 0 and time.monotonic() - started < 1.0:
            await asyncio.sleep(self.backoff.next())
