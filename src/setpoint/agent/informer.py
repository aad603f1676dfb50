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

from setpoint.agent.cache import Indexer, IndexFunc, object_key
from setpoint.backoff import Backoff, Outage
from setpoint.client import (
    BadRequest,
    Client,
    ClientError,
    Gone,
    IdleTimeout,
    Invalid,
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
SKIPPED_ANNOTATION = "setpoint.dev/skipped-events"  # on the bookmark that ends a fast-forward
# Errors no retry can fix: the request itself is wrong (a selector the server cannot apply).
FATAL_ERRORS = (BadRequest, Invalid, UnsupportedMediaType)


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
    drop fields the agent never reads (``metadata.managedFields``) and save memory. It may change
    the object it is given. A transform that raises is a bug: the informer stops, with the
    exception in :attr:`error` (and raised by :meth:`wait_synced`).
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
        self.cache = Indexer()
        self.stats = InformerStats()
        self.error: Exception | None = None  # set when the informer stopped on a fatal error
        self._resource_version: str | None = None  # None: list (again) before watching
        self._handlers: list[HandlerRegistration] = []
        self._resync_timers: dict[HandlerRegistration, asyncio.TimerHandle] = {}
        self._listed_at = -1e9
        self._listed = False  # the cache holds a complete list (and its handlers were told)
        self._wake = asyncio.Event()  # set by the first list, or by a fatal error
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage(log, f"{resource.plural}: following the server")

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
        if self.has_synced:
            for obj in self.cache.list():
                self._call(on_add, obj)
        self._schedule_resync(reg)
        return reg

    def remove_handler(self, reg: HandlerRegistration) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(reg)
        timer = self._resync_timers.pop(reg, None)
        if timer is not None:
            timer.cancel()

    @staticmethod
    def _call(fn: Callable[..., None] | None, *args: Object) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("informer event handler %r failed", fn)

    def _added(self, obj: Object) -> None:
        for reg in list(self._handlers):
            self._call(reg.on_add, obj)

    def _updated(self, old: Object, new: Object) -> None:
        for reg in list(self._handlers):
            self._call(reg.on_update, old, new)

    def _deleted(self, obj: Object) -> None:
        for reg in list(self._handlers):
            self._call(reg.on_delete, obj)

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
            for obj in self.cache.list():
                self._call(reg.on_resync, obj)
        self._schedule_resync(reg)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the informer's task (list, then watch, until :meth:`stop`)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the informer is already running")
        self.error = None
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
                    self._resource_version = None
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
        self._listed_at = time.monotonic()
        self._working()
        self._replace(items, scope)
        self._resource_version = resource_version
        first = not self._listed
        self._listed = True
        self._wake.set()
        if first:
            log.debug("%s: synced %d objects at %s", self.resource.plural, len(items), resource_version)

    def cached_versions(self) -> builtins.list[tuple[str, str]]:
        return [(object_key(o), str(_rv(o))) for o in self.cache.list()]

    def apply(self, event: WatchEvent) -> None:
        """One change from an ordered stream (watch, poll, interrupt): anything at or below the
        revision the cache reflects is a replay and is dropped."""
        self._apply(event)

    def apply_latest(self, event: WatchEvent) -> bool:
        """One change from a source that keeps only each object's newest state but may deliver
        objects out of global order or twice (command): dropped when the cached object is as
        new or newer. Returns whether it was applied."""
        if event.type == "BOOKMARK":
            self._apply(event)
            return True
        rv = _revision(event.resource_version)
        cached = self.cache.get(object_key(event.object))
        if rv is None or (cached is not None and (_revision(str(_rv(cached))) or 0) >= rv):
            self.stats.stale += 1
            return False
        self._apply(event, ordered=False)
        return True

    def forget_revision(self) -> None:
        self._resource_version = None

    def _replace(self, items: builtins.list[Object], scope: Callable[[str], bool] | None = None) -> None:
        """Make the cache equal to ``items`` and tell the handlers exactly what changed: what a
        watch would have said, had it not been interrupted (minus intermediate states)."""
        fresh: dict[str, Object] = {}
        for item in items:
            obj = self.transform(item) if self.transform else item
            fresh[object_key(obj)] = obj
        for key in self.cache.keys():
            if key not in fresh and (scope is None or scope(key)):
                gone = self.cache.remove(key)
                if gone is not None:
                    self._deleted(gone)
        for key, obj in fresh.items():
            old = self.cache.get(key)
            if old is None:
                self.cache.put(obj)
                self._added(obj)
            elif _uid(old) != _uid(obj):  # deleted and created again under the same name
                self.cache.put(obj)
                self._deleted(old)
                self._added(obj)
            elif _rv(old) != _rv(obj):
                self.cache.put(obj)
                self._updated(old, obj)
            # unchanged: keep the cached object, say nothing

    def _working(self) -> None:
        """Data arrived: the connection works, so the next failure starts a new outage."""
        if self._outage.failures:
            self._outage.recovered()
            self.backoff.reset()

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
                self._resource_version = rv
            return
        if ordered and not self._newer(rv):
            self.stats.stale += 1
            return  # already seen (a replay after a resume): never deliver an event twice
        obj = self.transform(event.object) if self.transform else event.object
        key = object_key(obj)
        cached = self.cache.get(key)
        if cached is not None and _older(rv, cached, event.type):
            # The cache already holds a newer state of this object (it was fetched after the
            # revision this stream resumed from): never go back.
            self.stats.stale += 1
            if self._newer(rv):
                self._resource_version = rv
            return
        self.stats.events += 1
        if event.type in ("ADDED", "MODIFIED"):
            old = self.cache.put(obj)
            if old is None:
                self._added(obj)
            elif _uid(old) != _uid(obj):
                self._deleted(old)
                self._added(obj)
            else:
                self._updated(old, obj)
        elif event.type == "DELETED":
            if self.cache.remove(key) is not None:
                self._deleted(obj)
        else:
            log.warning("%s: ignoring a watch event of unknown type %r", self.resource.plural, event.type)
        if self._newer(rv):
            self._resource_version = rv

    def _newer(self, rv: str) -> bool:
        if not rv:
            return False
        current = self._resource_version
        if current is None:
            return True
        a, b = _revision(rv), _revision(current)
        return a is None or b is None or a > b


def _older(rv: str, cached: Object, etype: str) -> bool:
    """Whether an event at ``rv`` is older than the cached object (a delete: than its revision
    exclusive, since a delete's revision is above the object's last write)."""
    have = _revision(str(_rv(cached)))
    at = _revision(rv)
    if have is None or at is None:
        return False
    return at < have if etype == "DELETED" else at <= have


def _uid(obj: Object) -> Any:
    return (obj.get("metadata") or {}).get("uid")


def _rv(obj: Object) -> Any:
    return (obj.get("metadata") or {}).get("resourceVersion")
