"""Publishing committed changes to NATS, for agents that use the ``interrupt`` or ``command``
transfer (``setpoint serve --nats URL``).

The watch cache calls :meth:`NatsPublisher.changed` for every committed event, synchronously; the
publisher only notes the key, its revision and its cached entry there. A task of its own sends
what was noted: per key only the newest state, in revision order, so a burst of changes to one
object is one message, and the memory held is bounded by the number of objects, whatever the
write rate or however long NATS is away. Nothing is dropped on a NATS failure: the noted changes
wait and are sent after a backoff once NATS is back.

Two things are sent per change (see :mod:`setpoint.transfer.subjects` for the names):

- an interrupt on core NATS, "key K of this kind changed at revision R": fire and forget, since
  agents recover lost interrupts with a periodic resync;
- a command on JetStream: the object itself (or its last state, for a delete) on the stream
  that keeps one message per key, with a message id of key and revision so that a resend after
  a lost ack is dropped by JetStream's duplicate window.

At start, and whenever the stream turns out to have lost its seed marker (purged, or recreated
empty), the publisher sends the current state of every object, then the marker: an agent that
finds the marker knows the stream holds every object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from setpoint.backoff import Backoff
from setpoint.server.watchcache import CachedObject, WatchCache
from setpoint.tasks import cancel_and_wait, close_quietly
from setpoint.transfer.subjects import REVISION_HEADER, TYPE_HEADER, Subjects

log = logging.getLogger(__name__)

# What the cache's keys look like: /registry/GROUP/PLURAL/NAMESPACE/NAME or .../PLURAL/NAME.
KeyParts = tuple[str, str, str, str]
# key -> (type, revision, cached object): the newest noted change of each key, oldest first.
Noted = dict[str, tuple[str, int, CachedObject]]

_INFLIGHT = 256  # JetStream publishes awaiting their ack at once
_SEED_CHECK_EVERY = 5.0


def split_key(key: str) -> KeyParts | None:
    parts = key.split("/")
    # ['', 'registry', group, plural, ns, name] or ['', 'registry', group, plural, name]
    if len(parts) == 6:
        return parts[2], parts[3], parts[4], parts[5]
    if len(parts) == 5:
        return parts[2], parts[3], "", parts[4]
    return None


def public_url(url: str) -> str:
    """``url`` without credentials: what the server may tell agents (they bring their own)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit(p._replace(netloc=host))


class NatsPublisher:
    def __init__(self, url: str, cache: WatchCache, *, prefix: str = "setpoint", interrupts: bool = True,
                 commands: bool = True, connect: Callable[..., Any] | None = None) -> None:
        self.url = url
        self.subjects = Subjects(prefix)
        self.cache = cache
        self.interrupts = interrupts
        self.commands = commands
        self._connect = connect
        self._noted: Noted = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._nc: Any = None
        self._js: Any = None
        self._backoff = Backoff(initial=0.2, cap=10.0)
        self.published = 0  # changes sent (interrupt and command count as one)
        self.seeds = 0  # complete publications of every object
        self.failures = 0
        self.connected = False

    # ---- the hook on the event path ---------------------------------------------------------------

    def changed(self, etype: str, key: str, cached: CachedObject) -> None:
        """Called by the watch cache for every event: note it, nothing more."""
        self._noted.pop(key, None)  # popped and put back: the dict stays in revision order
        self._noted[key] = (etype, cached.revision, cached)
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._noted)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.cache.add_event_hook(self.changed)
        self._task = asyncio.create_task(self._run(), name="setpoint-nats-publisher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._nc is not None:
            await close_quietly(self._nc.close)  # its own CancelledError must not stop the server's shutdown
            self._nc = None

    async def _open(self) -> None:
        import nats
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        connect = self._connect or nats.connect
        self._nc = await connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                 connect_timeout=5, allow_reconnect=True)
        self._js = self._nc.jetstream(timeout=10)
        if self.commands:
            sub = self.subjects
            config = StreamConfig(name=sub.command_stream, subjects=[f"{sub.command_prefix}.>"], max_msgs_per_subject=1,
                                  storage=StorageType.FILE, discard=DiscardPolicy.OLD, duplicate_window=120.0)
            try:
                await self._js.add_stream(config)
            except Exception:
                await self._js.update_stream(config)
        self.connected = True

    async def _run(self) -> None:
        while True:
            try:
                if self._nc is None:
                    await self._open()
                    if self.commands:
                        await self._seed()
                    self._backoff.reset()
                await self._drain_until_idle()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS down, a timeout: keep what is noted, try again later
                self.failures += 1
                self.connected = False
                delay = self._backoff.next()
                log.warning("NATS publishing failed (%s: %s); %d changes wait; retrying in %.1fs",
                            type(e).__name__, e, len(self._noted), delay)
                if self._nc is not None and self._nc.is_closed:
                    self._nc = None
                await asyncio.sleep(delay)

    async def _drain_until_idle(self) -> None:
        while True:
            if not self._noted:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_SEED_CHECK_EVERY):  # not wait_for: see setpoint.tasks
                        await self._wake.wait()
                if not self._noted:
                    if self.commands and not await self._seeded():
                        log.warning("the command stream lost its seed marker (purged?); publishing every object again")
                        await self._seed()
                    continue
            await self._send_noted()

    async def _send_noted(self) -> None:
        batch: list[tuple[str, tuple[str, int, CachedObject]]] = []
        while self._noted and len(batch) < _INFLIGHT:
            key = next(iter(self._noted))
            batch.append((key, self._noted.pop(key)))
        try:
            await self._send(batch)
        except BaseException:
            # Put back what was not confirmed unless a newer change was noted meanwhile; order
            # by revision is kept since these are older than anything noted since.
            back: Noted = {}
            for key, item in batch:
                back[key] = item
            for key, item in self._noted.items():
                back.pop(key, None)
                back[key] = item
            self._noted = back
            raise
        self.published += len(batch)

    async def _send(self, batch: list[tuple[str, tuple[str, int, CachedObject]]], *,
                    interrupts: bool | None = None, msg_id_suffix: str = "") -> None:
        interrupts = self.interrupts if interrupts is None else interrupts
        acks = []
        for key, (etype, revision, cached) in batch:
            parts = split_key(key)
            if parts is None:
                continue
            group, plural, namespace, name = parts
            if interrupts:
                payload = msgspec.json.encode({"key": f"{namespace}/{name}" if namespace else name,
                                               "revision": revision, "type": etype})
                await self._nc.publish(self.subjects.interrupt(group, plural), payload)
            if self.commands:
                headers = {TYPE_HEADER: etype, REVISION_HEADER: str(revision),
                           "Nats-Msg-Id": f"{key}@{revision}{msg_id_suffix}"}
                acks.append(await self._js.publish_async(self.subjects.command(group, plural, namespace, name),
                                                         cached.raw, headers=headers))
        if acks:
            await asyncio.wait_for(asyncio.gather(*acks), 30)
        elif interrupts:
            await self._nc.flush(timeout=10)

    async def _seeded(self) -> bool:
        from nats.js.errors import NotFoundError

        try:
            await self._js.get_last_msg(self.subjects.command_stream, self.subjects.seed)
        except NotFoundError:
            return False
        return True

    async def _seed(self) -> None:
        """Every current object onto the command stream, then the seed marker. Changes noted
        meanwhile are sent after it, so the stream ends with each key's newest state."""
        revision = self.cache.revision
        self.seeds += 1
        # A message id of its own: JetStream's duplicate window would drop a resend of the same
        # key and revision, and a purge does not clear that window.
        suffix = f"#seed{self.seeds}"
        batch: list[tuple[str, tuple[str, int, CachedObject]]] = []
        for co in self.cache.all_objects():
            batch.append((co.key, ("ADDED", co.revision, co)))
            if len(batch) >= _INFLIGHT:
                await self._send(batch, interrupts=False, msg_id_suffix=suffix)
                batch = []
        if batch:
            await self._send(batch, interrupts=False, msg_id_suffix=suffix)
        await self._js.publish(self.subjects.seed, msgspec.json.encode({"revision": revision}))
