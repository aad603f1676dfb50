"""The informer: a local, indexed copy of one kind's objects, kept current by list + watch,
and event handlers told about every change.

How it stays correct over an unreliable network (client-go's reflector, with its known gaps closed):

- It lists (paginated, one consistent snapshot), then watches from the list's resourceVersion
  with bookmarks. It remembers the last resourceVersion it has seen, from events and bookmarks.
- When the stream breaks (connection lost, server restarted, ``timeoutSeconds`` reached, or the
  server cut off a slow watcher) it watches again from that resourceVersion, so it neither
  misses nor repeats an event. Reconnects back off exponentially with jitter, up to a cap.
- When the server no longer has that revision (410 Expired, history compacted while the
  informer was away) it lists again and delivers only the true differences against its cache:
  ``on_add`` for new objects, ``on_update`` for changed ones (their resourceVersion differs),
  ``on_delete`` for objects that disappeared meanwhile (with the last state the informer saw).
- A stream that goes silent is dead until proven otherwise: if no byte (no event, no bookmark)
  arrives within ``idle_timeout`` the informer drops the connection and watches again. The
  server sends a bookmark every 5 s to a watcher that hears no events and asked for bookmarks,
  so the default of 15 s notices a dead connection within seconds, not hours.

Resync (optional, per handler) calls ``on_resync(obj)`` for every cached object every
``resync_period`` seconds. It is never disguised as an update: a handler that wants periodic
re-reconciliation says so by giving ``on_resync``; ``on_update`` always means a real change.

Selectors are applied by the server, so an agent receives only its share: any label selector,
and field selectors on ``metadata.name``, ``metadata.namespace`` and the fields a kind's CRD
declares in ``selectableFields`` (``spec.nodeName`` of ProcessSets: one node's share). An object
that stops matching arrives as a delete, one that starts matching as an add. A selector the
server refuses (400, e.g. a field the kind does not declare) stops the informer:
:meth:`Informer.wait_synced` raises it. Filter on other fields in the handlers.

How the changes travel is the informer's ``transport`` (:mod:`setpoint.transfer`): ``watch``
(the default, described above), ``poll``, NATS ``interrupt`` or JetStream ``command``. Whatever
it is, the informer's cache, handlers and guarantees are the same: changes are applied in
revision order per object, never older over newer, and failures are handled here alike.

Handlers are plain (sync) callables, called in order of registration on the informer's task,
typically to put a key on a work queue. They must not block, and must not change the objects
they are given (the cache shares them). An exception in a handler is logged, not propagated.

Memory: ``metadata.managedFields`` (the server's record of who wrote which field, often the
largest part of an object's metadata, read by no agent) is dropped from every object, as
client-go users do with a transform; ``keep_managed_fields=True`` keeps it. Objects from a list
are kept as the JSON the server sent until something reads them (:mod:`setpoint.agent.cache`):
a cold start of many objects then costs their bytes, not their dicts, and no decoding. A
handler is given each one decoded for it; the cache keeps the decoded object from its first
read through :meth:`Informer.get`, :meth:`Informer.list` or an index.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from setpoint.agent.cache import Entry, Indexer, IndexFunc, entry_versions, object_key, raw_identity
from setpoint.backoff import Backoff, Outage
from setpoint.client import (
    BadRequest,
    Client,
    ClientError,
    Gone,
    IdleTimeout,
    Invalid,
    RawObjectList,
    RawWatchEvent,
    Resource,
    UnsupportedMediaType,
    WatchEvent,
)
from setpoint.client.client import Selector, format_selector
from setpoint.tasks import cancel_and_wait
from setpoint.transfer import default_transport
from setpoint.transfer.base import TransferStats, Transport
from setpoint.transfer.watch import WatchTransport
from setpoint.types import Object

if TYPE_CHECKING:
    from setpoint.agent.typedview import TypedView
    from setpoint.client.typed import K

__all__ = ["Backoff", "HandlerRegistration", "Informer", "InformerStats"]

log = logging.getLogger(__name__)

AddHandler = Callable[[Object], None]
UpdateHandler = Callable[[Object, Object], None]
DeleteHandler = Callable[[Object], None]
ResyncHandler = Callable[[Object], None]
Transform = Callable[[Object], Object]

SERVER_BOOKMARK_INTERVAL = 5.0
# A stream that worked at least this long and then broke is retried at once (not after a
# backoff); shorter-lived ones back off, so a server that accepts and drops cannot make a loop.
HEALTHY_FOR = 1.0
SKIPPED_ANNOTATION = "setpoint.dev/skipped-events"  # on the bookmark that ends a fast-forward
# Errors no retry can fix: the request itself is wrong (a selector the server cannot apply).
FATAL_ERRORS = (BadRequest, Invalid, UnsupportedMediaType)

_json = msgspec.json.Decoder(dict[str, Any])
_CHANGES = frozenset(("ADDED", "MODIFIED", "DELETED"))


InformerStats = TransferStats  # the counters every transport keeps


class HandlerRegistration:
    """What :meth:`Informer.add_handler` returns; give it to :meth:`Informer.remove_handler`."""

    __slots__ = ("on_add", "on_delete", "on_resync", "on_update", "resync_period")

    def __init__(
        self, on_add: AddHandler | None, on_update: UpdateHandler | None, on_delete: DeleteHandler | None,
        on_resync: ResyncHandler | None, resync_period: float | None,
    ) -> None:
        self.on_add = on_add
        self.on_update = on_update
        self.on_delete = on_delete
        self.on_resync = on_resync
        self.resync_period = resync_period


def _revision(rv: str) -> int | None:
    try:
        return int(rv)
    except ValueError:
        return None


class Informer:
    """A cached, watched view of one kind (optionally one namespace, optionally a selector).

        informer = Informer(client, widgets, namespace="prod", label_selector={"team": "a"})
        informer.add_handler(on_add=lambda o: queue.add(object_key(o)),
                             on_update=lambda old, new: queue.add(object_key(new)),
                             on_delete=lambda o: queue.add(object_key(o)))
        async with informer:
            await informer.wait_synced()
            ...

    ``transform`` is applied to every object before it is cached or handed to a handler, e.g. to
    drop fields the agent never reads and save memory (``metadata.managedFields`` is dropped
    before it unless ``keep_managed_fields``). It may change the object it is given. An object
    from a list is transformed when it is decoded, which may be more than once (a handler's
    copy, then the cache's), each time on a fresh object. A transform that raises is a bug: the
    informer stops, with the exception in :attr:`error` (and raised by :meth:`wait_synced`);
    raised while a reader decodes an object, it is raised to that reader.
    """

    def __init__(
        self,
        client: Client,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        transform: Transform | None = None,
        keep_managed_fields: bool = False,
        idle_timeout: float = 3 * SERVER_BOOKMARK_INTERVAL,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        backoff: Backoff | None = None,
        transport: Transport | None = None,
    ) -> None:
        if idle_timeout <= 0 or page_size <= 0 or watch_timeout <= 0:
            raise ValueError("idle_timeout, page_size and watch_timeout must be positive")
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = format_selector(label_selector)
        self.field_selector = format_selector(field_selector)
        self.transform = transform
        self.keep_managed_fields = keep_managed_fields
        self.idle_timeout = idle_timeout
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff = backoff if backoff is not None else Backoff()
        if transport is None:
            transport = default_transport()
            if isinstance(transport, WatchTransport):  # the informer's own settings apply to it
                transport.watch_timeout = watch_timeout
                transport.backoff = self.backoff
        self.transport = transport
        self.cache = Indexer(decode=self._decode)
        self.stats = InformerStats()
        self.error: Exception | None = None  # set when the informer stopped on a fatal error
        self._resource_version: str | None = None  # None: list (again) before watching
        self._revision_now: int | None = None  # the same, parsed once (it is compared on every event)
        self._handlers: list[HandlerRegistration] = []
        # Whether any handler takes adds, updates, deletes: what an event must be decoded for.
        self._takes = (False, False, False)
        self._resync_timers: dict[HandlerRegistration, asyncio.TimerHandle] = {}
        self._listed_at = -1e9
        self._listed = False  # the cache holds a complete list (and its handlers were told)
        self._wake = asyncio.Event()  # set by the first list, or by a fatal error
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, f"{resource.plural}: following the server")
        self._healthy_since = time.monotonic()  # since when data has flowed without a failure

    # ---- the cache ------------------------------------------------------------------------------

    def get(self, key: str) -> Object | None:
        """The cached object under ``"namespace/name"`` (or ``"name"`` when cluster-scoped)."""
        return self.cache.get(key)

    def list(self) -> list[Object]:
        return self.cache.list()

    def by_index(self, index: str, value: str) -> builtins.list[Object]:
        return self.cache.by_index(index, value)

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        self.cache.add_indexer(name, fn)

    def typed(self, cls: type[K]) -> TypedView[K]:
        """The cache as instances of ``cls`` (a kind's class), each object version decoded once:
        ``informer.typed(Lamp).get("home/l1")``. One view per class is enough; each keeps its own
        decoded objects."""
        from setpoint.agent.typedview import TypedView

        return TypedView(self, cls)

    @property
    def resource_version(self) -> str | None:
        """The newest revision the cache reflects (from the last list, event or bookmark)."""
        return self._resource_version

    # ---- handlers -------------------------------------------------------------------------------

    def add_handler(
        self,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
        *,
        on_resync: ResyncHandler | None = None,
        resync_period: float | None = None,
    ) -> HandlerRegistration:
        """Register handlers. One added after the informer has synced is first given
        ``on_add`` for every cached object, so it starts from the same state as the others."""
        if (on_resync is None) != (resync_period is None):
            raise ValueError("on_resync and resync_period go together")
        if resync_period is not None and resync_period <= 0:
            raise ValueError("resync_period must be positive")
        reg = HandlerRegistration(on_add, on_update, on_delete, on_resync, resync_period)
        self._handlers.append(reg)
        self._count_takers()
        if self.has_synced and on_add is not None:
            for obj in self.cache.objects():
                self._call(on_add, obj)
        self._schedule_resync(reg)
        return reg

    def remove_handler(self, reg: HandlerRegistration) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(reg)
        self._count_takers()
        timer = self._resync_timers.pop(reg, None)
        if timer is not None:
            timer.cancel()

    def _count_takers(self) -> None:
        regs = self._handlers
        self._takes = (any(r.on_add for r in regs), any(r.on_update for r in regs), any(r.on_delete for r in regs))

    @staticmethod
    def _call(fn: Callable[..., None] | None, *args: Object) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("informer event handler %r failed", fn)

    # An entry still held as JSON is decoded once per change, for the handlers that take it, and
    # only if there is one: the cache keeps it as it was.

    def _added(self, entry: Entry) -> None:
        regs = [reg for reg in self._handlers if reg.on_add is not None]
        if regs:
            obj = self.cache.decode(entry)
            for reg in regs:
                self._call(reg.on_add, obj)

    def _updated(self, old: Entry, new: Entry) -> None:
        regs = [reg for reg in self._handlers if reg.on_update is not None]
        if regs:
            old_obj, new_obj = self.cache.decode(old), self.cache.decode(new)
            for reg in regs:
                self._call(reg.on_update, old_obj, new_obj)

    def _deleted(self, entry: Entry) -> None:
        regs = [reg for reg in self._handlers if reg.on_delete is not None]
        if regs:
            obj = self.cache.decode(entry)
            for reg in regs:
                self._call(reg.on_delete, obj)

    # ---- what objects become before anyone sees them --------------------------------------------

    def _prepare(self, obj: Object) -> Object:
        if not self.keep_managed_fields:
            meta = obj.get("metadata")
            if type(meta) is dict:
                meta.pop("managedFields", None)
        return self.transform(obj) if self.transform else obj

    def _decode(self, raw: bytes) -> Object:
        return self._prepare(_json.decode(raw))

    # ---- resync ---------------------------------------------------------------------------------

    def _schedule_resync(self, reg: HandlerRegistration) -> None:
        if reg.resync_period is None or self._task is None or self._task.done():
            return
        loop = asyncio.get_running_loop()
        self._resync_timers[reg] = loop.call_later(reg.resync_period, self._resync, reg)

    def _resync(self, reg: HandlerRegistration) -> None:
        # A timer callback: it runs between the informer's steps, so the cache is consistent.
        self._resync_timers.pop(reg, None)
        if reg not in self._handlers:
            return
        if self.has_synced:
            self.stats.resyncs += 1
            for obj in self.cache.objects():
                self._call(reg.on_resync, obj)
        self._schedule_resync(reg)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the informer's task (list, then watch, until :meth:`stop`)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the informer is already running")
        self.error = None
        self._healthy_since = time.monotonic()  # not since construction: a first failure backs off
        if not self._listed:
            self._wake.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"informer:{self.resource.plural}")
        for reg in self._handlers:
            self._schedule_resync(reg)

    async def stop(self) -> None:
        """Stop the task and wait for it; the cache keeps its last state."""
        for timer in self._resync_timers.values():
            timer.cancel()
        self._resync_timers.clear()
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.transport.close()

    async def __aenter__(self) -> Informer:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def has_synced(self) -> bool:
        """True once the first list is in the cache and its adds were handed to the handlers."""
        return self._listed and self.error is None

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait for :attr:`has_synced`; raises the informer's error if it stopped on one, and
        TimeoutError after ``timeout`` seconds."""
        if self._task is None and not self._wake.is_set():
            raise RuntimeError("the informer is not running: call start() or use async with")
        async with asyncio.timeout(timeout):
            await self._wake.wait()
        if self.error is not None:
            raise self.error

    async def wait_stopped(self) -> None:
        """Until the informer's task ends. It ends by itself only on a fatal error, raised here;
        a command that follows a kind for as long as it runs waits on this after
        :meth:`wait_synced`. Cancelling the wait leaves the informer running."""
        task = self._task
        if task is None:
            raise RuntimeError("the informer is not running: call start() or use async with")
        await asyncio.shield(task)
        if self.error is not None:
            raise self.error

    # ---- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self.transport.step(self)
                    this = asyncio.current_task()
                    if this is not None and this.cancelling():
                        # A library below swallowed our cancellation (turned it into a timeout):
                        # honour it here, or stop() would wait for ever.
                        raise asyncio.CancelledError
                except Gone as e:
                    self.stats.expired += 1
                    self.stats.last_error = str(e)
                    log.info("%s: resourceVersion %s is gone; listing again", self.resource.plural,
                             self._resource_version)
                    self._at(None)
                    if time.monotonic() - self._listed_at < 1.0:
                        # Compacted again right after a list: do not spin on list + 410.
                        await asyncio.sleep(self.backoff.next())
                except FATAL_ERRORS as e:
                    self.stats.last_error = str(e)
                    log.error("%s: the server refused the informer's request; stopping: %s",
                              self.resource.plural, e)
                    self._fail(e)
                    return
                except ClientError as e:
                    self.stats.watch_errors += 1
                    self.stats.last_error = str(e)
                    if isinstance(e, IdleTimeout):  # no answer to the watch request itself
                        self.stats.idle_timeouts += 1
                    if self._outage.failures == 0 and time.monotonic() - self._healthy_since >= HEALTHY_FOR:
                        # A stream that had worked for a while broke (a proxy or load balancer
                        # closing it, a server restarting): try again at once, and back off only
                        # if that fails too. Every change made meanwhile waits for the retry.
                        delay = 0.0
                    else:
                        delay = self.backoff.next()
                    self._outage.failed(e, delay)  # logged once per outage, not per attempt
                    await asyncio.sleep(delay)
        except Exception as e:  # a bug, not a fault of the network or the server
            log.exception("%s: the informer failed", self.resource.plural)
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        self.error = error
        self._wake.set()  # wakes wait_synced(), which raises the error
        for timer in self._resync_timers.values():
            timer.cancel()
        self._resync_timers.clear()

    # ---- what transports call (setpoint.transfer.base.Target) -----------------------------------

    def replace(self, items: builtins.list[Object], resource_version: str,
                scope: Callable[[str], bool] | None = None) -> None:
        """A complete list as of ``resource_version``: the cache becomes exactly ``items``. With
        ``scope`` the list is complete only for the keys ``scope`` accepts (the buckets a digest
        catch-up fetched): other cached objects are left as they are."""
        fresh: dict[str, Entry] = {}
        for item in items:
            obj = self._prepare(item)
            fresh[object_key(obj)] = obj
        self._replaced(fresh, resource_version, scope)

    def replace_raw(self, listing: RawObjectList, scope: Callable[[str], bool] | None = None) -> None:
        """:meth:`replace` from a list whose objects are still the JSON the server sent: they are
        cached as they are, by name, and decoded when first read."""
        fresh: dict[str, Entry] = {
            f"{namespace}/{name}" if namespace else name: raw
            for raw, (namespace, name) in zip(listing.items, listing.names, strict=True)
        }
        self._replaced(fresh, listing.resource_version, scope)

    def _replaced(self, fresh: dict[str, Entry], resource_version: str, scope: Callable[[str], bool] | None) -> None:
        self._listed_at = time.monotonic()
        self._working()
        self._replace(fresh, scope)
        self._at(resource_version)
        first = not self._listed
        self._listed = True
        self._wake.set()
        if first:
            log.debug("%s: synced %d objects at %s", self.resource.plural, len(fresh), resource_version)

    def cached_versions(self) -> builtins.list[tuple[str, str]]:
        return [(key, str(entry_versions(entry)[1])) for key, entry in self.cache.entries()]

    def apply(self, event: WatchEvent) -> None:
        """One change from an ordered stream (watch, poll, interrupt): anything at or below the
        revision the cache reflects is a replay and is dropped."""
        self._apply(event)

    def apply_raw(self, event: RawWatchEvent) -> None:
        """:meth:`apply` for an event whose object is still the JSON the server sent: it is
        cached as it is (decoded for the handlers that take it, and when first read), so a
        change nobody reads costs no object, and the collector no work."""
        etype = event.type
        if etype not in _CHANGES:  # a bookmark (read at once), or a type to warn about
            self._apply(WatchEvent(etype, _json.decode(event.object)))
            return
        if self._outage.failures:
            self._working()
        raw = bytes(event.object)
        takes_add, takes_update, takes_delete = self._takes
        obj: Object | None = None
        if takes_delete if etype == "DELETED" else takes_add or takes_update:
            # The handlers will be given the object: decode it once, and read the rest from it.
            obj = self._decode(raw)
            meta = obj.get("metadata") or {}
            name, namespace = meta.get("name", ""), meta.get("namespace")
            key = f"{namespace}/{name}" if namespace else str(name)
            uid, revision = meta.get("uid"), meta.get("resourceVersion")
        else:
            key, uid, revision = raw_identity(raw)
        rv = "" if revision is None else str(revision)
        if not self._newer(rv):
            self.stats.stale += 1
            return  # already seen (a replay after a resume): never deliver an event twice
        self._change(etype, rv, key, uid, raw, obj)

    def apply_latest(self, event: WatchEvent) -> bool:
        """One change from a source that keeps only each object's newest state but may deliver
        objects out of global order or twice (command): dropped when the cached object is as
        new or newer. Returns whether it was applied."""
        if event.type == "BOOKMARK":
            self._apply(event)
            return True
        rv = _revision(event.resource_version)
        cached = self.cache.entry(object_key(event.object))
        if rv is None or (cached is not None and (_revision(str(entry_versions(cached)[1])) or 0) >= rv):
            self.stats.stale += 1
            return False
        self._apply(event, ordered=False)
        return True

    def forget_revision(self) -> None:
        self._at(None)

    def _replace(self, fresh: dict[str, Entry], scope: Callable[[str], bool] | None = None) -> None:
        """Make the cache equal to ``fresh`` and tell the handlers exactly what changed: what a
        watch would have said, had it not been interrupted (minus intermediate states)."""
        cache = self.cache
        for key in cache.keys():
            if key not in fresh and (scope is None or scope(key)):
                gone = cache.remove_entry(key)
                if gone is not None:
                    self._deleted(gone)
        for key, entry in fresh.items():
            old = cache.entry(key)
            if old is None:
                cache.put_entry(key, entry)
                self._added(entry)
                continue
            old_uid, old_rv = entry_versions(old)
            uid, rv = entry_versions(entry)
            if old_uid != uid:  # deleted and created again under the same name
                cache.put_entry(key, entry)
                self._deleted(old)
                self._added(entry)
            elif old_rv != rv:
                cache.put_entry(key, entry)
                self._updated(old, entry)
            # unchanged: keep the cached object, say nothing

    def _working(self) -> None:
        """Data arrived: the connection works, so the next failure starts a new outage."""
        if self._outage.failures:
            self._outage.recovered()
            self.backoff.reset()
            self._healthy_since = time.monotonic()

    def _apply(self, event: WatchEvent, *, ordered: bool = True) -> None:
        self._working()
        rv = event.resource_version
        if event.type == "BOOKMARK":
            self.stats.bookmarks += 1
            skipped = (event.object.get("metadata", {}).get("annotations") or {}).get(SKIPPED_ANNOTATION)
            if skipped:
                with contextlib.suppress(ValueError):
                    self.stats.skipped += int(skipped)
            if self._newer(rv):
                self._at(rv)
            return
        if ordered and not self._newer(rv):
            self.stats.stale += 1
            return  # already seen (a replay after a resume): never deliver an event twice
        obj = self._prepare(event.object)
        self._change(event.type, rv, object_key(obj), _uid(obj), obj, ordered=ordered)

    def _change(self, etype: str, rv: str, key: str, uid: Any, entry: Entry, obj: Object | None = None, *,
                ordered: bool = True) -> None:
        """Apply one change to what is held under ``key``: ``entry`` is what to hold, ``obj`` (when
        given) the same object decoded, for the handlers. ``ordered``: the caller has checked that
        ``rv`` is newer than the informer's revision."""
        cache = self.cache
        cached = cache.entry(key)
        cached_uid = None
        if obj is not None and type(cached) is dict:
            # Someone has read this object (or it came decoded): keep its new state decoded too,
            # as the handlers were given it, rather than decode it again for the next read.
            entry = obj
        if cached is not None:
            if type(cached) is bytes and etype != "DELETED" and (self._takes[1] or self._takes[2]):
                cached = cache.decode(cached)  # once: for its versions here, and for the handlers
            cached_uid, cached_rv = entry_versions(cached)
            if _older(rv, cached_rv, etype):
                # The cache already holds a newer state of this object (it was fetched after the
                # revision this stream resumed from): never go back.
                self.stats.stale += 1
                if ordered or self._newer(rv):
                    self._at(rv)
                return
        self.stats.events += 1
        new = entry if obj is None else obj
        if etype in ("ADDED", "MODIFIED"):
            cache.put_entry(key, entry)
            if cached is None:
                self._added(new)
            elif cached_uid != uid:
                self._deleted(cached)
                self._added(new)
            else:
                self._updated(cached, new)
        elif etype == "DELETED":
            if cache.remove_entry(key) is not None:
                self._deleted(new)
        else:
            log.warning("%s: ignoring a watch event of unknown type %r", self.resource.plural, etype)
        if ordered or self._newer(rv):
            self._at(rv)

    def _at(self, rv: str | None) -> None:
        self._resource_version = rv
        self._revision_now = None if rv is None else _revision(rv)

    def _newer(self, rv: str) -> bool:
        if not rv:
            return False
        if self._resource_version is None:
            return True
        a, b = _revision(rv), self._revision_now
        return a is None or b is None or a > b


def _older(rv: str, cached_rv: Any, etype: str) -> bool:
    """Whether an event at ``rv`` is older than the cached object at ``cached_rv`` (a delete:
    than its revision exclusive, since a delete's revision is above the object's last write)."""
    have = _revision(str(cached_rv))
    at = _revision(rv)
    if have is None or at is None:
        return False
    return at < have if etype == "DELETED" else at <= have


def _uid(obj: Object) -> Any:
    return (obj.get("metadata") or {}).get("uid")
