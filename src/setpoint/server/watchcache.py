"""The watch cache: one backend watch feeds every client watch, list-from-cache and bookmark.

Why: a backend watch per client would multiply store load by the number of agents; instead the
server keeps the current objects and a bounded window of recent events in memory, encodes each
event once, and fans it out to watchers through bounded queues.

A watcher that cannot keep up is fast-forwarded: once its queue is full, its further events are
coalesced per key (only the newest state of each key is kept, in revision order; an object
created and deleted meanwhile is dropped altogether), and when the queue has drained the
watcher is sent those, then a bookmark saying how many events it skipped. Only the latest
desired state matters, so a slow agent catches up in one pass over what changed instead of
replaying every intermediate state or relisting. What it holds is bounded by the number of keys
(``fast_forward_keys``); a watcher behind on more keys than that is cut off and resumes from the
last revision it saw, as it is with fast-forwarding turned off.

A client that asks for a revision older than the in-memory window but still inside the store's
history is served from the store first and then joins the window, so the window size trades
memory for store reads, never correctness.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec

from setpoint.server.objects import decode_stored, encode
from setpoint.store import Backend, Compacted, Event, KeyValue, StoreError
from setpoint.tasks import cancel_and_wait

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder()

Predicate = Callable[[dict[str, Any]], bool]
EventHook = Callable[[str, dict[str, Any], dict[str, Any] | None], None]


def resource_prefix(key: str) -> str:
    """'/registry/g/plural/ns/name' -> '/registry/g/plural/'."""
    parts = key.split("/", 4)
    return f"/{parts[1]}/{parts[2]}/{parts[3]}/"


# What the cache keeps of an object: ``(data, revision, served)``, where ``data`` is its JSON
# with the resourceVersion in (``served``) or as the store returned it, without. An exact tuple
# of bytes, int and bool: the garbage collector stops tracking such a tuple the first time it
# sees it. Objects of a class are tracked for good, and with one per object and one per event a
# busy cache made every collection walk hundreds of thousands of them (pauses of up to ~0.8 s).
Entry = tuple[bytes, int, bool]
# An event in the window: (revision, type, key, prefix, entry, previous entry or None); also an
# exact tuple of untracked things, so also untracked.
Record = tuple[int, str, str, str, Entry, "Entry | None"]


def _decoded(entry: Entry) -> dict[str, Any]:
    data, revision, served = entry
    obj: dict[str, Any] = _decoder.decode(data)
    if not served:
        obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def _served(entry: Entry) -> bytes:
    return entry[0] if entry[2] else encode(_decoded(entry))


class CachedObject:
    """An object of the cache as readers get it: made on demand from its entry.

    ``raw`` (the JSON the API serves) is made on first use and written back to the cache, so an
    object nobody reads costs no decoding and no encoding. ``obj`` decodes on demand: callers
    may not keep or change the dict, which may be shared while an event is being dispatched.
    """

    __slots__ = ("_bucket", "_entry", "_obj", "key")

    def __init__(self, key: str, entry: Entry, bucket: dict[str, Entry] | None = None,
                 obj: dict[str, Any] | None = None) -> None:
        self.key = key
        self._entry = entry
        self._bucket = bucket
        self._obj = obj

    @property
    def revision(self) -> int:
        return self._entry[1]

    @property
    def raw(self) -> bytes:
        entry = self._entry
        if entry[2]:
            return entry[0]
        raw = encode(self._obj) if self._obj is not None else _served(entry)
        self._entry = (raw, entry[1], True)
        if self._bucket is not None and self._bucket.get(self.key) is entry:
            self._bucket[self.key] = self._entry
        return raw

    @property
    def obj(self) -> dict[str, Any]:
        return self._obj if self._obj is not None else _decoded(self._entry)

    def mentions(self, field: bytes) -> bool:
        """Whether ``field`` (a quoted JSON key) may occur in the object: False means it does
        not, without decoding it."""
        return field in self._entry[0]


class _Delivery:
    """One event on its way to the watchers and hooks: its line and dicts made once, shared."""

    __slots__ = ("_obj", "_prev", "_raw", "record")

    def __init__(self, record: Record) -> None:
        self.record = record
        self._raw: bytes | None = None
        self._obj: dict[str, Any] | None = None
        self._prev: dict[str, Any] | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = encode(self._obj) if self._obj is not None else _served(self.record[4])
        return self._raw

    @property
    def obj(self) -> dict[str, Any]:
        if self._obj is None:
            self._obj = _decoded(self.record[4])
        return self._obj

    @property
    def prev(self) -> dict[str, Any] | None:
        entry = self.record[5]
        if entry is None:
            return None
        if self._prev is None:
            self._prev = _decoded(entry)
        return self._prev


SKIPPED_ANNOTATION = b"setpoint.dev/skipped-events"
"""On the bookmark that ends a fast-forward: how many events the watcher was spared."""


def watch_line(type: str, raw: bytes) -> bytes:
    return b'{"type":"' + type.encode() + b'","object":' + raw + b"}\n"


class TooOld(Exception):
    """The requested revision is older than the in-memory window."""


class WatcherClosed(Exception):
    """The watcher was cut off (too slow, or the cache restarted); the client resumes."""


# While a watcher is fast-forwarded: key -> (type, served JSON, revision), oldest first. A delete
# followed by a new object under the same key keeps the delete apart, under the key plus NUL
# (no key holds NUL), so that a client is told the old object went before it sees the new one.
Pending = dict[str, tuple[str, bytes, int]]
_DELETED_APART = "\x00"


class CacheWatcher:
    """One client watch: a bounded queue of encoded lines, filled synchronously by the cache,
    and once that is full, the coalesced events of a fast-forward (see the module docstring)."""

    def __init__(
        self,
        cache: WatchCache,
        prefix: str,
        key_prefix: str,
        predicate: Predicate | None,
        capacity: int,
        fast_forward_keys: int = 0,
    ) -> None:
        self.cache = cache
        self.prefix = prefix
        self.key_prefix = key_prefix
        self.predicate = predicate
        # One slot more than the capacity, kept for the closing sentinel: a watcher cut off
        # with a full queue still gets every line before it, so resuming from the last one it
        # was sent loses nothing.
        self.capacity = capacity
        self.queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue(capacity + 1)
        self.closed_reason: str | None = None
        self.fast_forward_keys = fast_forward_keys
        self.pending: Pending | None = None  # not None while fast-forwarding
        self.skipped = 0  # events coalesced away in the current fast-forward

    def offer(self, d: _Delivery) -> None:
        revision, etype, key = d.record[0], d.record[1], d.record[2]
        if self.closed_reason is not None or not key.startswith(self.key_prefix):
            return
        pred = self.predicate
        if pred is not None:
            new_ok = pred(d.obj)
            prev = d.prev
            old_ok = prev is not None and pred(prev)
            if etype == "DELETED":
                if not new_ok:
                    return
            elif new_ok and old_ok:
                etype = "MODIFIED"
            elif new_ok:
                etype = "ADDED"
            elif old_ok:
                etype = "DELETED"
            else:
                return
        if self.pending is None and self.queue.qsize() >= self.capacity:
            if self.fast_forward_keys <= 0:
                self._cut()
                return
            self.pending = {}
            self.cache.watchers_fast_forwarded += 1
        if self.pending is not None:
            self._coalesce(self.pending, key, etype, d.raw, revision)
            return
        self.queue.put_nowait((watch_line(etype, d.raw), revision))

    def _coalesce(self, pending: Pending, key: str, etype: str, raw: bytes, revision: int) -> None:
        old = pending.pop(key, None)  # popped and put back: the dict stays in revision order
        if old is not None:
            self.skipped += 1
            self.cache.events_skipped += 1
            if old[0] == "ADDED":
                if etype == "DELETED":  # created and deleted while behind: the client never knew it
                    self.skipped += 1
                    self.cache.events_skipped += 1
                    return
                etype = "ADDED"
            elif old[0] == "DELETED" and etype != "DELETED":
                self.skipped -= 1  # both are sent
                self.cache.events_skipped -= 1
                pending[key + _DELETED_APART] = old
                etype = "ADDED"
        if len(pending) >= self.fast_forward_keys:
            self._cut()
            return
        pending[key] = (etype, raw, revision)

    def take_pending(self) -> tuple[bytes, int] | None:
        """The oldest coalesced event as a watch line, or None when the fast-forward is done."""
        pending = self.pending
        if not pending:
            return None
        key = next(iter(pending))
        etype, raw, revision = pending.pop(key)
        return watch_line(etype, raw), revision

    def finish_fast_forward(self) -> int:
        """Back to queueing events one by one; returns how many were skipped."""
        skipped, self.skipped, self.pending = self.skipped, 0, None
        return skipped

    def _cut(self) -> None:
        self.cache.watchers_cut += 1
        self.pending = None
        self.close("the watcher fell behind and was cut off; resume from the last resourceVersion")

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self.cache._unregister(self)
            # The consumer sends what is queued, then stops at the sentinel; the client resumes
            # from the last revision it was sent.
            self.queue.put_nowait(None)


class WatchCache:
    def __init__(self, backend: Backend, *, window: int = 20_000, watcher_queue: int = 1_000,
                 fast_forward_keys: int = 100_000) -> None:
        self.backend = backend
        self.window = window
        self.watcher_queue = watcher_queue
        self.fast_forward_keys = fast_forward_keys
        self.revision = 0
        self.floor = 0  # every event with revision > floor is in the ring
        self._ring: deque[Record] = deque()
        self._ring_revs: deque[int] = deque()
        self._objects: dict[str, dict[str, Entry]] = {}
        self._watchers: dict[str, set[CacheWatcher]] = {}
        self._hooks: dict[str, list[EventHook]] = {}
        self._all_hooks: list[Callable[[str, str, CachedObject], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.ready = asyncio.Event()
        self.events_total = 0
        self.closing = False  # no new watchers once the server is shutting down
        self.watchers_cut = 0
        self.watchers_fast_forwarded = 0
        self.events_skipped = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._run(), name="watch-cache")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.close_watchers("the server is shutting down")

    def close_watchers(self, reason: str) -> None:
        self.closing = True
        for watchers in list(self._watchers.values()):
            for w in list(watchers):
                w.close(reason)

    def add_hook(self, prefix: str, hook: EventHook) -> None:
        """Call ``hook(type, obj, prev)`` for every event under ``prefix`` (e.g. CRDs)."""
        self._hooks.setdefault(prefix, []).append(hook)

    def add_event_hook(self, hook: Callable[[str, str, CachedObject], None]) -> None:
        """Call ``hook(type, key, cached)`` for every event of every kind (the garbage
        collector's index of owner references). Such a hook sees every write: it should look at
        ``cached.mentions(...)`` before decoding ``cached.obj``. Not called for the state loaded
        at start: a user that needs it reads it from the cache once started."""
        self._all_hooks.append(hook)

    async def _load(self) -> None:
        objects: dict[str, dict[str, Entry]] = {}
        start_after = ""
        revision = 0
        while True:
            page = await self.backend.list("/registry/", revision=revision, limit=5_000,
                                           start_after=start_after)
            revision = page.revision
            for kv in page.items:
                objects.setdefault(resource_prefix(kv.key), {})[kv.key] = (kv.value, kv.mod_revision, False)
            if not page.more or not page.items:
                break
            start_after = page.items[-1].key
        self._objects = objects
        self.revision = revision
        self.floor = revision
        self._ring.clear()
        self._ring_revs.clear()
        for prefix, hooks in self._hooks.items():
            for entry in objects.get(prefix, {}).values():
                obj = _decoded(entry)
                for hook in hooks:
                    hook("ADDED", obj, None)
        self.ready.set()

    async def _run(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.backend.watch("/registry/", self.revision)) as w:
                    async for batch in w:
                        self._apply(batch)
            except Compacted:
                log.warning("watch cache fell behind the store's history; reloading")
                for watchers in list(self._watchers.values()):
                    for cw in list(watchers):
                        cw.close("the server's cache was reloaded; relist")
                await self._load()
            except StoreError as e:
                log.warning("backend watch ended (%s); resuming from %d", e, self.revision)
                await asyncio.sleep(0.1)  # back off before re-subscribing to a failing store

    def _apply(self, batch: list[Event]) -> None:
        objects, ring, ring_revs = self._objects, self._ring, self._ring_revs
        for ev in batch:
            kv = ev.kv
            key = kv.key
            revision = kv.mod_revision
            prefix = resource_prefix(key)
            bucket = objects.get(prefix)
            if bucket is None:
                bucket = objects[prefix] = {}
            prev = bucket.get(key)
            entry: Entry = (kv.value, revision, False)
            if ev.type == "DELETE":
                bucket.pop(key, None)
                etype = "DELETED"
            else:
                bucket[key] = entry
                etype = "ADDED" if ev.created or prev is None else "MODIFIED"
            record: Record = (revision, etype, key, prefix, entry, prev)
            ring.append(record)
            ring_revs.append(revision)
            if len(ring) > self.window:
                ring_revs.popleft()
                self.floor = ring.popleft()[0]
            self.revision = revision
            self.events_total += 1
            watchers = self._watchers.get(prefix)
            hooks = self._hooks.get(prefix)
            if not (watchers or hooks or self._all_hooks):
                continue
            d = _Delivery(record)
            if watchers:
                for w in list(watchers):
                    w.offer(d)
                if d._raw is not None and bucket.get(key) is entry:
                    bucket[key] = (d._raw, revision, True)  # encoded once, for lists too
            if hooks:
                for hook in hooks:
                    try:
                        hook(etype, d.obj, d.prev)
                    except Exception:
                        log.exception("watch cache hook failed for %s", key)
            if self._all_hooks:
                cached = CachedObject(key, entry, None, d._obj)
                for any_hook in self._all_hooks:
                    try:
                        any_hook(etype, key, cached)
                    except Exception:
                        log.exception("watch cache hook failed for %s", key)
        self._notify()

    def _notify(self) -> None:
        if not self._waiters:
            return
        keep = []
        for rev, fut in self._waiters:
            if rev <= self.revision:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._waiters = keep

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait until the cache has seen ``revision``; False on timeout."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (revision, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    # ---- reads -----------------------------------------------------------------------------

    async def scan(self, prefix: str, needles: tuple[bytes, ...], *, slice_size: int = 200,
                   pause: float = 0.001) -> AsyncIterator[CachedObject]:
        """The objects of one resource type whose JSON holds any of ``needles``, found without
        decoding anything. For background work over the whole cache (hundreds of thousands
        of objects): it pauses ``pause`` seconds every ``slice_size`` objects, so that a scan
        spreads over time instead of crowding the event loop's turns."""
        bucket = self._objects.get(prefix, {})
        for i, key in enumerate(list(bucket)):  # keys only: strings, nothing for the collector
            if i % slice_size == slice_size - 1:
                await asyncio.sleep(pause)
            entry = bucket.get(key)
            if entry is None:
                continue
            data = entry[0]
            for needle in needles:
                if needle in data:
                    yield CachedObject(key, entry, bucket)
                    break

    def list(self, prefix: str, key_prefix: str) -> list[CachedObject]:
        bucket = self._objects.get(prefix, {})
        if key_prefix == prefix:
            keys = list(bucket)
        else:
            keys = [k for k in bucket if k.startswith(key_prefix)]
        keys.sort()
        return [CachedObject(k, bucket[k], bucket) for k in keys]

    def all_objects(self) -> Iterator[CachedObject]:
        """Every cached object, kind by kind; safe to interleave with awaits (it walks copies of
        the key lists, and skips what was deleted meanwhile)."""
        for bucket in list(self._objects.values()):
            for key in list(bucket):
                entry = bucket.get(key)
                if entry is not None:
                    yield CachedObject(key, entry, bucket)

    def get(self, key: str) -> CachedObject | None:
        bucket = self._objects.get(resource_prefix(key))
        if bucket is None:
            return None
        entry = bucket.get(key)
        return None if entry is None else CachedObject(key, entry, bucket)

    def revision_of(self, key: str) -> int | None:
        """The revision of ``key`` in the cache, or None: what a caller that already knows the
        object needs to tell whether it changed, without a CachedObject."""
        bucket = self._objects.get(resource_prefix(key))
        entry = bucket.get(key) if bucket is not None else None
        return None if entry is None else entry[1]

    def count(self, prefix: str) -> int:
        return len(self._objects.get(prefix, {}))

    def watcher_count(self) -> int:
        return sum(len(s) for s in self._watchers.values())

    # ---- watches ---------------------------------------------------------------------------

    def _register(self, prefix: str, key_prefix: str, predicate: Predicate | None,
                  after: int) -> CacheWatcher:
        if after < self.floor:
            raise TooOld(after)
        w = CacheWatcher(self, prefix, key_prefix, predicate, self.watcher_queue, self.fast_forward_keys)
        if self.closing:
            w.close("the server is shutting down")
            return w
        start = bisect.bisect_right(self._ring_revs, after)
        for i in range(start, len(self._ring)):
            record = self._ring[i]
            if record[3] == prefix:
                w.offer(_Delivery(record))
        if w.closed_reason is None:
            self._watchers.setdefault(prefix, set()).add(w)
        return w

    def _unregister(self, w: CacheWatcher) -> None:
        s = self._watchers.get(w.prefix)
        if s is not None:
            s.discard(w)

    async def watch(
        self,
        prefix: str,
        key_prefix: str,
        predicate: Predicate | None,
        after: int | None,
        tick: float | None = None,
        until: int | None = None,
    ) -> AsyncIterator[tuple[bytes, int, int]]:
        """Encoded watch lines, their revisions, and 0.

        Every ``tick`` seconds without an event it yields ``(b"", revision, 0)``: the revision up
        to which this watcher has been sent everything (for bookmarks and deadlines). At the end
        of a fast-forward it yields ``(b"", revision, skipped)``: everything up to ``revision``
        was sent, with ``skipped`` events coalesced away.

        ``after=None`` starts with synthetic ADDED events for the current state (Kubernetes'
        "watch from now, with initial state"); otherwise every event after that revision.

        With ``until`` (a revision the cache has reached) the watch is a catch-up: it ends, with
        ``(b"", revision, 0)``, as soon as everything up to ``until`` has been sent. Nothing
        changed costs one registration and that one item.
        Raises Compacted when ``after`` is older than the store keeps; WatcherClosed when cut off.
        """
        if after is None:
            after = self.revision
            for co in self.list(prefix, key_prefix):
                if predicate is None or predicate(co.obj):
                    yield watch_line("ADDED", co.raw), co.revision, 0
        while True:
            try:
                w = self._register(prefix, key_prefix, predicate, after)
                break
            except TooOld:
                # Catch up from the store until the in-memory window covers us.
                async with contextlib.aclosing(self.backend.watch(key_prefix, after)) as bw:
                    async for batch in bw:
                        for ev in batch:
                            line = self._catch_up_line(ev, predicate)
                            after = ev.revision
                            if line is not None:
                                yield line, after, 0
                        if after >= self.floor:
                            break
        try:
            while True:
                if w.queue.empty() and w.pending is not None:
                    # The queue has drained: send the coalesced events, oldest first (new ones
                    # keep joining at the end), then say how many were skipped.
                    taken = w.take_pending()
                    if taken is not None:
                        yield taken[0], taken[1], 0
                        continue
                    # Both empty: every event up to the cache's revision has been sent.
                    yield b"", self.revision, w.finish_fast_forward()
                    continue
                if until is not None and w.queue.empty() and w.pending is None and self.revision >= until:
                    # Every event up to the cache's revision was offered to this watcher (the
                    # cache applies events synchronously) and none is left: caught up.
                    yield b"", self.revision, 0
                    return
                if tick is None or not w.queue.empty():
                    # Returns at once when lines are queued: a watcher behind a busy loop
                    # catches up in one turn, not a turn (and a timer) per line.
                    item = await w.queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(w.queue.get(), tick)
                    except TimeoutError:
                        yield b"", self.revision, 0
                        continue
                if item is None:
                    raise WatcherClosed(w.closed_reason or "closed")
                yield item[0], item[1], 0
        finally:
            w.close("done")

    @staticmethod
    def _catch_up_line(ev: Event, predicate: Predicate | None) -> bytes | None:
        kv: KeyValue = ev.kv
        obj = decode_stored(kv)
        if predicate is not None and not predicate(obj):
            return None  # without the previous value a selector exit cannot be told apart
        etype = "DELETED" if ev.type == "DELETE" else ("ADDED" if ev.created else "MODIFIED")
        return watch_line(etype, encode(obj))
