"""``command``: the server publishes each object's newest state to a NATS JetStream stream that
keeps one message per key (max-msgs-per-subject 1: only the latest desired state survives, as in
the source material's "only the last command matters"); the agent consumes it.

How the agent stays right:

- **At start** it (re)creates its durable consumer with deliver-policy last-per-subject: the stream
  then hands it the newest state of every object of its kind, which is its snapshot. The stream is
  complete only if the server's seed marker is there (it is missing after a purge until the
  server has published every object again); without it the agent lists from the API instead and
  takes the stream's messages as changes on top.
- **Explicit acks**: a message is acked after it is applied; one that is not is redelivered.
- **A lost delivery is fetched at once**: the consumer numbers every delivery (redeliveries
  included), so a number skipped is a delivery lost on the way. Waiting for the redelivery costs
  ``ack_wait`` per loss, and a redelivery lost again as much once more (at 30 % loss, seven
  rounds for the last of 10,000 deliveries). Instead the agent asks the stream directly for the
  stream sequences it never received between two it did (or after the last one, when the
  consumer says it delivered more than arrived), and applies those newer than what it has; the
  redelivery that comes later is then a duplicate, acked and dropped.
- **Never backwards**: a message is applied only if it is newer (by revision) than the cached
  object, and than the last delete seen of that key (kept for a bounded number of keys), so
  duplicates and redeliveries of older states are dropped.
- **Its share only**: the stream carries every object of the kind; the agent applies its label and
  field selectors itself (:mod:`setpoint.transfer.selectors`), and an object that stops matching
  leaves its cache as a delete, as a watch would say.
- **Restarts**: its own (a new snapshot), the NATS server's (the stream and the durable consumer
  are on disk; the client reconnects), a purge (the server notices its seed marker is gone and
  publishes everything again; duplicates of what the agent has are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from setpoint.client import ClientError, ConnectionFailed, WatchEvent
from setpoint.transfer.base import Target, Transport, list_into
from setpoint.transfer.interrupt import close_nats, connect_nats, server_subjects
from setpoint.transfer.selectors import Predicate, predicate
from setpoint.transfer.subjects import REVISION_HEADER, TYPE_HEADER
from setpoint.types import Object

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder().decode
# A message not acked within this is delivered again: what a delivery lost on the network costs.
# An agent acks within milliseconds of receiving; a late ack only means a duplicate, dropped as stale.
ACK_WAIT_SECONDS = 1.0
BUSY_FETCH_SECONDS = 0.2
RECOVER_TIMEOUT_SECONDS = 0.5  # a direct read of a lost delivery; unanswered, the redelivery covers it
RECOVER_LIMIT = 256  # stream sequences read directly per gap; a wider gap waits for redelivery
_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _key(obj: Object) -> str:
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name", "")
    return f"{ns}/{name}" if ns else str(name)


class CommandTransport(Transport):
    name = "command"

    def __init__(self, nats_url: str, *, consumer: str, batch: int = 256, tombstones: int = 100_000,
                 connect: Callable[..., Any] | None = None) -> None:
        if not consumer:
            raise ValueError("the command transfer needs a consumer name")
        self.nats_url = nats_url
        self.consumer = consumer
        self.batch = batch
        self._tombstone_limit = tombstones
        self._connect = connect
        self._nc: Any = None
        self._js: Any = None
        self._psub: Any = None
        self._pred: Predicate | None = None
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        self.snapshot_from_stream = False  # how the last start got its snapshot (for tests, metrics)
        self._busy = False  # the last fetch brought messages
        self._instance = uuid.uuid4().hex[:8]
        self._gaps = _Gaps()
        self._recover_js: Any = None  # a JetStream context with a short timeout, for direct reads
        self._filter = ""
        self._stream = ""

    def durable_name(self, target: Target) -> str:
        """The agent's name, the kind, and this informer's own suffix: two informers of one kind
        in one agent (two controllers) must not share a consumer, or each would get half the
        messages. A consumer left behind by an agent that died goes away by itself after
        ``inactive_threshold``; a restarted agent makes a new one (it needs a new snapshot)."""
        r = target.resource
        return _NAME.sub("_", f"{self.consumer}-{r.group or 'core'}-{r.plural}-{target.namespace or 'all'}"
                              f"-{self._instance}")

    # ---- steps ---------------------------------------------------------------------------------

    async def step(self, target: Target) -> None:
        try:
            if self._psub is None or target.resource_version is None:
                await self._start(target)
                return
            # Busy (the last fetch brought messages): a short fetch. A delivery lost on the way
            # leaves a fetch waiting for a batch that cannot fill; the short wait bounds that
            # stall, and the message comes again after ack_wait. Idle: a long poll, so that an
            # agent with nothing to do asks rarely.
            idle = max(1.0, min(target.idle_timeout, 5.0))
            await self._consume(target, timeout=BUSY_FETCH_SECONDS if self._busy else idle)
        except ClientError:  # the API's answer (a refused selector, 404, ...) or a connection failure
            self._psub = None
            raise
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:
            if _is_timeout(e):
                return  # nothing new within the fetch's wait: the next step asks again
            self._psub = None  # rebuilt, with a new snapshot, after the informer's backoff
            raise ConnectionFailed(f"NATS JetStream at {self.nats_url}: {type(e).__name__}: {e}") from e

    async def _start(self, target: Target) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        # One small request to the API first: the kind exists, this agent may read it, and the
        # server accepts its selectors (a selector it refuses stops the informer, as on every
        # transport, instead of silently matching nothing here).
        await target.client.list(target.resource, namespace=target.namespace, label_selector=target.label_selector,
                                 field_selector=target.field_selector, limit=1)
        if self._nc is None or self._nc.is_closed:
            self._nc = await connect_nats(self.nats_url, self._connect)
            self._js = self._nc.jetstream(timeout=10)
            self._recover_js = self._nc.jetstream(timeout=RECOVER_TIMEOUT_SECONDS)
        self._pred = predicate(target.label_selector, target.field_selector)
        names = await server_subjects(target)
        stream = names.command_stream
        durable = self.durable_name(target)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(stream, durable)
        subject = names.command_filter(target.resource.group, target.resource.plural, target.namespace)
        self._stream, self._filter, self._gaps = stream, subject, _Gaps()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=ACK_WAIT_SECONDS, max_ack_pending=10 * self.batch, inactive_threshold=600.0)
        try:
            seed = await self._js.get_last_msg(stream, names.seed)
        except NotFoundError:
            seed = None
        self._psub = await self._js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        if seed is None:
            # Not (yet) a complete picture: the API's list is, and the stream's messages follow as
            # changes on top (those not newer than the listed objects are dropped).
            log.info("%s: the command stream has no seed marker; listing from the API", target.resource.plural)
            self.snapshot_from_stream = False
            await list_into(target)
            return
        self.snapshot_from_stream = True
        newest: dict[str, tuple[str, int, Object]] = {}
        top = int(_decode(seed.data).get("revision", 0))
        # Until every message the stream held at the start is delivered and acked (messages that
        # arrive meanwhile may come along; a steady stream of them must not keep the snapshot
        # from ending). A delivery lost on the way comes again after ack_wait: short fetches and
        # the consumer's own counts, instead of a wait for a batch that cannot fill.
        last = int((await self._js.stream_info(stream)).state.last_seq)
        while True:
            info = await self._psub.consumer_info()
            delivered = int(info.delivered.stream_seq or 0) if info.delivered is not None else 0
            if (int(info.num_pending) == 0 or delivered >= last) and int(info.num_ack_pending) == 0:
                break
            try:
                msgs = await self._psub.fetch(self.batch, timeout=BUSY_FETCH_SECONDS * 5)
            except Exception as e:
                if _is_timeout(e):
                    continue
                raise
            for msg in msgs:
                self._gaps.delivered(msg)
            for msg in [*msgs, *await self._recover(target)]:
                parsed = self._parse(target, msg)
                if parsed is not None:
                    etype, rev, obj = parsed
                    key = _key(obj)
                    if key not in newest or newest[key][1] < rev:
                        newest[key] = (etype, rev, obj)
                    top = max(top, rev)
                if getattr(msg, "reply", None):
                    await msg.ack()
        pred = self._pred
        items = [obj for etype, _, obj in newest.values()
                 if etype != "DELETED" and (pred is None or pred(obj))]
        for key, (etype, rev, _) in newest.items():
            if etype == "DELETED":
                self._remember_delete(key, rev)
        target.stats.lists += 1  # a complete picture, as a list is
        target.replace(items, str(top))

    async def _consume(self, target: Target, timeout: float) -> None:
        try:
            msgs = await self._psub.fetch(self.batch, timeout=timeout)
        except Exception as e:
            was_busy, self._busy = self._busy, False
            if was_busy and _is_timeout(e):
                # The burst went quiet: did the consumer deliver more than arrived? (The last
                # deliveries' loss shows no skipped number until something follows them.)
                await self._check_tail(target)
            raise
        self._busy = bool(msgs)
        for msg in msgs:
            self._gaps.delivered(msg)
            parsed = self._parse(target, msg)
            if parsed is not None:
                self._apply(target, *parsed)
            await msg.ack()
        await self._apply_recovered(target)

    async def _apply_recovered(self, target: Target) -> None:
        for raw in await self._recover(target):
            parsed = self._parse(target, raw)
            if parsed is not None:
                self._apply(target, *parsed)

    async def _check_tail(self, target: Target) -> None:
        try:
            info = await self._psub.consumer_info()
        except Exception as e:  # a lost answer: the redelivery covers it
            log.debug("%s: consumer info for lost deliveries: %s", target.resource.plural, e)
            return
        if info.delivered is not None:
            self._gaps.consumer_says(int(info.delivered.consumer_seq or 0), int(info.delivered.stream_seq or 0))
        await self._apply_recovered(target)

    async def _recover(self, target: Target) -> list[Any]:
        """The stream's current messages at the sequences whose delivery was lost, those of this
        consumer's subjects (others share the stream; a superseded one is gone, its newer state
        delivered on its own)."""
        from nats.js.errors import NotFoundError

        missing = self._gaps.take()
        if not missing:
            return []
        if len(missing) > RECOVER_LIMIT:
            log.debug("%s: %d deliveries lost at once; waiting for their redelivery", target.resource.plural,
                      len(missing))
            return []
        js = self._recover_js or self._js

        async def one(seq: int) -> Any:
            try:
                raw = await js.get_msg(self._stream, seq)
            except NotFoundError:
                return None
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as e:  # unanswered: the redelivery covers it
                log.debug("%s: reading lost delivery %d: %s", target.resource.plural, seq, e)
                return None
            return raw if subject_matches(self._filter, str(raw.subject or "")) else None

        found = [m for m in await asyncio.gather(*(one(seq) for seq in missing)) if m is not None]
        target.stats.recovered += len(found)
        return found

    # ---- applying ------------------------------------------------------------------------------

    def _parse(self, target: Target, msg: Any) -> tuple[str, int, Object] | None:
        target.stats.commands += 1
        headers = msg.headers or {}
        try:
            rev = int(headers.get(REVISION_HEADER, ""))
            obj = _decode(msg.data)
        except (ValueError, msgspec.DecodeError):
            log.warning("%s: ignoring a malformed command on %s", target.resource.plural, msg.subject)
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            return None
        return str(headers.get(TYPE_HEADER, "MODIFIED")), rev, obj

    def _apply(self, target: Target, etype: str, rev: int, obj: Object) -> None:
        key = _key(obj)
        gone_at = self._tombstones.get(key)
        if gone_at is not None and rev <= gone_at:
            target.stats.stale += 1
            return  # an older state of something already deleted
        if etype == "DELETED":
            self._remember_delete(key, rev)
            target.apply_latest(WatchEvent("DELETED", obj))
            return
        if self._pred is not None and not self._pred(obj):
            # Not (or no longer) this agent's: if it was cached, it leaves, as a watch would say.
            target.apply_latest(WatchEvent("DELETED", obj))
            return
        target.apply_latest(WatchEvent("MODIFIED", obj))

    def _remember_delete(self, key: str, rev: int) -> None:
        self._tombstones[key] = rev
        self._tombstones.move_to_end(key)
        while len(self._tombstones) > self._tombstone_limit:
            self._tombstones.popitem(last=False)

    async def close(self) -> None:
        nc, self._nc, self._js, self._psub = self._nc, None, None, None
        if nc is not None:
            await close_nats(nc)


class _Gaps:
    """Which deliveries of one consumer never arrived, from the sequence numbers of those that did.

    The consumer numbers each delivery (a redelivery gets a new number); the stream numbers each
    message. A skipped delivery number says something was lost; the stream sequences between the
    highest one seen before and the next higher one seen (or the consumer's last delivered one)
    say what: deliveries of new messages come in stream order, and a lost redelivery is of a
    message already read directly."""

    def __init__(self) -> None:
        self.consumer_seq = 0  # the highest delivery number seen
        self.stream_seq = 0  # the highest stream sequence delivered
        self.pending = False  # a delivery number was skipped; its stream sequence is not known yet
        self.missing: list[int] = []

    def delivered(self, msg: Any) -> None:
        try:
            seq = msg.metadata.sequence
        except Exception:  # not a JetStream delivery (no ack subject)
            return
        self._saw(int(seq.consumer), int(seq.stream))

    def consumer_says(self, consumer_seq: int, stream_seq: int) -> None:
        """What the consumer reports it delivered last."""
        if consumer_seq > self.consumer_seq:
            self.pending = True
            self.consumer_seq = consumer_seq
        self._advance(stream_seq)

    def _saw(self, consumer_seq: int, stream_seq: int) -> None:
        if consumer_seq > self.consumer_seq + 1:
            self.pending = True
        self.consumer_seq = max(self.consumer_seq, consumer_seq)
        self._advance(stream_seq, exclusive=True)

    def _advance(self, stream_seq: int, exclusive: bool = False) -> None:
        if stream_seq <= self.stream_seq:
            return
        if self.pending and self.stream_seq:
            self.missing.extend(range(self.stream_seq + 1, stream_seq if exclusive else stream_seq + 1))
            self.pending = False
        self.stream_seq = stream_seq

    def take(self) -> list[int]:
        missing, self.missing = self.missing, []
        return missing


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def _is_timeout(e: BaseException) -> bool:
    import nats.errors

    return isinstance(e, TimeoutError | nats.errors.TimeoutError)
