"""The reconciler runtime: informer → work queue → ``reconcile(obj)``, level-triggered.

A controller receives *keys*, not events. When a key comes off the queue the worker reads the
newest object from the informer's cache and reconciles that, so intermediate states that piled
up while it was busy are skipped for free, and a burst of changes to one object costs one
reconcile. The queue guarantees one key is never reconciled by two workers at once.

What a reconcile raises decides what happens next:

============================  ===================================================================
``Transient`` / other errors   retry with per-key exponential backoff (and the global rate limit)
``NotReady``                   retry after ``retry_after`` (or ``not_ready_delay``)
``Permanent``                  no retry: condition Ready=False, a Warning Event, an alert
budget spent                   after ``max_retries`` failed attempts the object is alerted and
                               left alone until it changes
============================  ===================================================================

With a ``retry_policy`` (:class:`~setpoint.drivers.retry.RetryPolicy`, usually the driver's) the
policy decides instead, per error class: attempts, backoff base and cap, a total deadline, and
``Retry-After`` honoured for NotReady. A failure whose outcome is uncertain is retried like any
Transient one; the next reconcile observes before it acts, with the same operation id.

The runtime owns status bookkeeping: a successful reconcile's :class:`Result` is written to the
``status`` subresource with ``observedGeneration`` and a ``Ready`` condition, only when it differs
from what is stored. With a ``finalizer``, deletion waits until :meth:`Controller.finalize` has
cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from setpoint.agent.alerts import Alert, AlertSink, LogAlertSink
from setpoint.agent.cache import object_key, split_key
from setpoint.agent.conditions import set_condition
from setpoint.agent.errors import DriverError, ErrorClass, Permanent
from setpoint.agent.events import EventRecorder
from setpoint.agent.informer import Informer
from setpoint.agent.leaderelection import LeaderElector
from setpoint.agent.ratelimit import RateLimiter
from setpoint.agent.retry import RetryPolicy, RetryTracker
from setpoint.agent.workqueue import ShutDown, WorkQueue
from setpoint.client import (
    APIStatusError,
    Client,
    ClientError,
    Conflict,
    NotFound,
    Resource,
    Selector,
    typed,
)
from setpoint.transfer import TransportFactory
from setpoint.types import Object

K = TypeVar("K", bound=msgspec.Struct)

log = logging.getLogger(__name__)



@dataclass
class Result:
    """What a reconcile found. ``status`` fields are merged into the object's status."""

    status: Object | msgspec.Struct | None = None  # a typed status (a Struct) is written as its fields
    ready: bool = True
    reason: str = "Reconciled"
    message: str = ""
    requeue_after: float | None = None


@dataclass
class ControllerStats:
    reconciles: int = 0
    errors: int = 0
    status_writes: int = 0
    alerts: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Watch:
    """Another kind whose changes enqueue objects of ours (``mapper`` returns their keys)."""

    resource: Resource
    mapper: Callable[[Object], list[str]]
    namespace: str | None = None
    label_selector: Selector | None = None
    field_selector: Selector | None = None


def owner_mapper(kind: str) -> Callable[[Object], list[str]]:
    """Map an owned object to its controlling owner of ``kind`` (same namespace)."""

    def mapper(obj: Object) -> list[str]:
        meta = obj.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == kind and ref.get("controller"):
                ns = meta.get("namespace")
                return [f"{ns}/{ref['name']}" if ns else str(ref["name"])]
        return []

    return mapper


class Controller:
    """Subclass and implement :meth:`reconcile` (and :meth:`finalize` with a ``finalizer``)."""

    resource: ClassVar[Resource]
    finalizer: ClassVar[str | None] = None
    name: ClassVar[str] = ""
    # False for controllers that act on objects whose status another controller reports (a
    # scheduler): their results are not written, and failures only raise events and alerts.
    manages_status: ClassVar[bool] = True

    def __init__(
        self,
        client: Client,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        workers: int = 4,
        max_retries: int = 15,
        not_ready_delay: float = 5.0,
        resync_period: float | None = None,
        rate_limiter: RateLimiter | None = None,
        alert_sink: AlertSink | None = None,
        events: EventRecorder | None = None,
        leader_election: LeaderElector | None = None,
        owns: list[Resource] | None = None,
        watches: list[Watch] | None = None,
        retry_policy: RetryPolicy | None = None,
        transfer: TransportFactory | None = None,
    ) -> None:
        self.client = client
        self.retry_policy = retry_policy
        self.retries = RetryTracker()
        self.controller_name = self.name or type(self).__name__
        self.workers = workers
        self.max_retries = max_retries
        self.not_ready_delay = not_ready_delay
        self.alert_sink = alert_sink or LogAlertSink()
        self.events = events or EventRecorder(client, self.controller_name)
        self._own_events = events is None
        self.leader_election = leader_election
        self.stats = ControllerStats()
        self.queue: WorkQueue[str] = WorkQueue(name=self.controller_name, rate_limiter=rate_limiter)
        self.informer = Informer(client, self.resource, namespace=namespace,
                                 label_selector=label_selector, field_selector=field_selector,
                                 transport=transfer() if transfer else None)  # managedFields dropped by default
        self.informer.add_handler(
            on_add=self._enqueue_obj,
            on_update=self._enqueue_update,
            on_delete=self._enqueue_obj,
            on_resync=self._enqueue_obj if resync_period else None,
            resync_period=resync_period,
        )
        self._secondary: list[Informer] = []
        all_watches = list(watches or [])
        for res in owns or []:
            all_watches.append(Watch(res, owner_mapper(self.resource.kind), namespace=namespace))
        self._transfer = transfer
        self._running = False
        for w in all_watches:
            self.watch(w)
        self._not_ready: dict[str, int] = {}
        self._own_writes: dict[str, Object] = {}  # key -> the status we last wrote
        self._given_up: dict[str, Any] = {}  # key -> the generation we stopped retrying at
        self._stopping = False

    # ---- what subclasses write -------------------------------------------------------------

    async def reconcile(self, obj: Object) -> Result | None:
        """Make the world match ``obj`` (the newest cached version). Must be idempotent."""
        raise NotImplementedError

    async def finalize(self, obj: Object) -> None:
        """Clean up before ``obj`` goes away (only with a ``finalizer``). Must be idempotent."""

    async def deleted(self, key: str) -> None:
        """``key`` is gone from the store (without a finalizer there is nothing left to read)."""

    def _view(self, obj: Object) -> Any:
        """What :meth:`reconcile` and :meth:`finalize` are given: a copy of the cached object
        (theirs to change), or an instance of the kind's class (:class:`TypedController`)."""
        return copy.deepcopy(obj)

    # ---- queueing ----------------------------------------------------------------------------

    def _enqueue_obj(self, obj: Object) -> None:
        self.queue.add(object_key(obj))

    def _enqueue_update(self, old: Object, new: Object) -> None:
        key = object_key(new)
        written = self._own_writes.get(key)
        if written is not None and new.get("status") == written and _only_status_changed(old, new):
            # The echo of our own status write: nothing new to act on (it would cost a second,
            # no-op reconcile per change). It may arrive before the write's response does.
            return
        self.queue.add(key)

    def watch(self, w: Watch) -> Informer:
        """Enqueue objects of ours on changes to another kind, from now on. A controller whose
        children's kinds are known only at run time (a Stack's) adds its watches as it meets
        them; one added while the controller runs starts at once and stops with it."""
        inf = Informer(self.client, w.resource, namespace=w.namespace, label_selector=w.label_selector,
                       field_selector=w.field_selector,
                       transport=self._transfer() if self._transfer else None)
        enqueue = self._mapped(w.mapper)
        inf.add_handler(on_add=enqueue, on_update=_on_new(enqueue), on_delete=enqueue)
        self._secondary.append(inf)
        if self._running:
            inf.start()
        return inf

    def _mapped(self, mapper: Callable[[Object], list[str]]) -> Callable[[Object], None]:
        def enqueue(obj: Object) -> None:
            for key in mapper(obj):
                self.queue.add(key)

        return enqueue

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: informers always (a warm cache), workers while leading."""
        informers = [self.informer, *self._secondary]
        for inf in informers:
            inf.start()
        self._running = True
        if self._own_events:
            self.events.start()
        try:
            for inf in informers:
                await inf.wait_synced()
            if self.leader_election is None:
                await self._work()
            else:
                await self.leader_election.run(self._work)
        finally:
            self._stopping = True
            self._running = False
            self.queue.shutdown()
            for inf in [self.informer, *self._secondary]:  # watches added meanwhile too
                await inf.stop()
            if self._own_events:
                await self.events.stop()

    async def _work(self) -> None:
        """N workers until cancelled (e.g. on losing leadership: in-flight reconciles stop)."""
        if self.queue.shutting_down:  # a previous term ended; start a fresh queue with every key
            self.queue = WorkQueue(name=self.controller_name)
        for obj in self.informer.list():
            self._enqueue_obj(obj)
        async with asyncio.TaskGroup() as tg:
            for i in range(self.workers):
                tg.create_task(self._worker(), name=f"{self.controller_name}-worker-{i}")

    async def _worker(self) -> None:
        queue = self.queue
        try:
            while True:
                try:
                    key = await queue.get()
                except ShutDown:
                    return
                try:
                    await self._process(key)
                finally:
                    queue.done(key)
        except asyncio.CancelledError:
            queue.shutdown()
            raise

    # ---- one key -----------------------------------------------------------------------------

    async def _process(self, key: str) -> None:
        obj = self.informer.get(key)
        if obj is None:
            self.queue.forget(key)
            self._not_ready.pop(key, None)
            self._given_up.pop(key, None)
            self._own_writes.pop(key, None)
            self.retries.forget(key)
            await self.deleted(key)
            return
        generation = obj["metadata"].get("generation")
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        # Deletion always runs the finalizer path, whatever came before: an object whose
        # reconcile was given up on (a permanent failure) must still be deletable.
        if not deleting and key in self._given_up and self._given_up[key] == generation:
            return  # given up on this desired state; a change to it brings the object back
        self._given_up.pop(key, None)
        self.stats.reconciles += 1
        try:
            if deleting:
                await self._finalize(obj)
                return
            if self.finalizer and self.finalizer not in (obj["metadata"].get("finalizers") or []):
                obj = await self._add_finalizer(obj)
            result = await self.reconcile(self._view(obj)) or Result()
        except Exception as e:
            await self._failed(key, obj, e)
            return
        self.queue.forget(key)
        self._not_ready.pop(key, None)
        self.retries.forget(key)
        try:
            await self._write_status(obj, result)
        except Conflict:
            self.queue.add(key)  # our copy was stale: a newer version is on its way anyway
            return
        except ClientError as e:
            await self._failed(key, obj, e)
            return
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

    async def _failed(self, key: str, obj: Object, error: Exception) -> None:
        self.stats.errors += 1
        cls, reason, message, retry_after = _classify(error)
        self.stats.by_class[cls.value] = self.stats.by_class.get(cls.value, 0) + 1
        if cls is ErrorClass.PERMANENT:
            log.warning("%s: %s failed permanently: %s", self.controller_name, key, message)
            await self._give_up(key, obj, reason, message, cls)
            return
        if self.retry_policy is not None:
            d = self.retries.failed(key, obj["metadata"].get("generation"), self.retry_policy, cls,
                                    retry_after=retry_after, message=message,
                                    uncertain=isinstance(error, DriverError) and error.uncertain)
            if not isinstance(error, DriverError | ClientError):
                log.exception("%s: unexpected error reconciling %s", self.controller_name, key, exc_info=error)
            if d.give_up:
                await self._give_up(key, obj, d.reason, d.message, cls, d.attempts)
            else:
                log.info("%s: %s %s (attempt %d), retrying in %.2fs: %s", self.controller_name, key,
                         cls.value, d.attempts, d.delay, message)
                self.queue.add_after(key, d.delay)
            return
        if cls is ErrorClass.NOT_READY:
            count = self._not_ready.get(key, 0) + 1
            self._not_ready[key] = count
            delay = retry_after if retry_after is not None else self.not_ready_delay
            log.info("%s: %s not ready (%s), retrying in %.1fs", self.controller_name, key, message, delay)
            self.queue.add_after(key, delay)
            return
        attempts = self.queue.num_requeues(key) + 1
        if attempts > self.max_retries:
            await self._give_up(key, obj, "RetryBudgetExhausted",
                                f"gave up after {attempts} attempts; last error: {message}", cls)
            return
        log.info("%s: %s failed (attempt %d): %s", self.controller_name, key, attempts, message)
        if isinstance(error, Exception) and not isinstance(error, (DriverError, ClientError)):
            log.exception("%s: unexpected error reconciling %s", self.controller_name, key, exc_info=error)
        self.queue.add_rate_limited(key)

    async def _give_up(self, key: str, obj: Object, reason: str, message: str, cls: ErrorClass,
                       attempts: int | None = None) -> None:
        attempts = attempts or self.queue.num_requeues(key) + 1
        self.queue.forget(key)
        self.retries.forget(key)
        self._not_ready.pop(key, None)
        self._given_up[key] = obj["metadata"].get("generation")
        meta = obj["metadata"]
        self.events.warning(obj, reason, message)
        self.stats.alerts += 1
        self.alert_sink.alert(Alert(
            controller=self.controller_name, kind=obj.get("kind", self.resource.kind),
            namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
            reason=reason, message=message, error_class=cls.value, attempts=attempts,
        ))
        with contextlib.suppress(ClientError):
            await self._write_status(obj, Result(ready=False, reason=reason, message=message))

    # ---- status and finalizers ---------------------------------------------------------------

    async def _write_status(self, obj: Object, result: Result) -> None:
        if not self.manages_status:
            return
        old = obj.get("status") or {}
        status = copy.deepcopy(old)
        if isinstance(result.status, msgspec.Struct):
            status.update({k: v for k, v in typed.to_builtins(result.status).items() if v is not None})
        elif result.status:
            status.update(copy.deepcopy(result.status))
        generation = obj["metadata"].get("generation")
        status["observedGeneration"] = generation
        set_condition(status, "Ready", result.ready, reason=result.reason, message=result.message,
                      observed_generation=generation)
        if status == old:
            return
        ns, name = split_key(object_key(obj))
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": status}
        key = object_key(obj)
        self._own_writes[key] = status
        try:
            await self.client.patch(self.resource, name, body, namespace=ns or None, subresource="status")
        except BaseException:
            self._own_writes.pop(key, None)
            raise
        self.stats.status_writes += 1

    async def _add_finalizer(self, obj: Object) -> Object:
        finalizers = [*(obj["metadata"].get("finalizers") or []), self.finalizer]
        ns, name = split_key(object_key(obj))
        return await self.client.patch(
            self.resource, name,
            {"metadata": {"finalizers": finalizers, "resourceVersion": obj["metadata"]["resourceVersion"]}},
            namespace=ns or None,
        )

    async def _finalize(self, obj: Object) -> None:
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if not self.finalizer or self.finalizer not in finalizers:
            return
        await self.finalize(self._view(obj))
        finalizers.remove(self.finalizer)
        ns, name = split_key(object_key(obj))
        try:
            await self.client.patch(
                self.resource, name,
                {"metadata": {"finalizers": finalizers, "resourceVersion": obj["metadata"]["resourceVersion"]}},
                namespace=ns or None,
            )
        except NotFound:
            pass
        self.events.normal(obj, "Finalized", f"{self.controller_name} cleaned up")


def _classify(error: BaseException) -> tuple[ErrorClass, str, str, float | None]:
    if isinstance(error, DriverError):
        return error.error_class, error.reason, error.message, error.retry_after
    if isinstance(error, APIStatusError):
        if error.code in (400, 403, 404, 405, 413, 415, 422) and not isinstance(error, NotFound):
            # The object we would write is wrong; retrying the same write cannot succeed.
            return ErrorClass.PERMANENT, type(error).__name__, str(error), None
        return ErrorClass.TRANSIENT, type(error).__name__, str(error), None
    return ErrorClass.TRANSIENT, type(error).__name__, str(error) or type(error).__name__, None


def _only_status_changed(old: Object, new: Object) -> bool:
    def rest(obj: Object) -> Object:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    return rest(old) == rest(new)


def _on_new(enqueue: Callable[[Object], None]) -> Callable[[Object, Object], None]:
    def on_update(old: Object, new: Object) -> None:
        enqueue(new)

    return on_update


class TypedController(Controller, Generic[K]):
    """A controller of a typed kind: ``class LampController(TypedController[Lamp])``, with
    ``reconcile(self, lamp: Lamp)``. The resource comes from the class's ``kind_info``; each
    object is decoded into the class once per reconcile (msgspec), and one that does not fit it
    fails permanently with the field named. Write it back with ``client.save(lamp)`` (unknown
    fields kept) or return a typed status in :class:`Result`."""

    model: ClassVar[type[msgspec.Struct]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for base in getattr(cls, "__orig_bases__", ()):
            args = typing.get_args(base)
            if typing.get_origin(base) is TypedController and args and isinstance(args[0], type):
                cls.model = args[0]
                cls.resource = typed.resource_of(args[0])

    def _view(self, obj: Object) -> Any:
        try:
            return typed.decode(self.model, obj)
        except typed.InvalidObject as e:
            raise Permanent(str(e), reason="InvalidObject") from None

    async def reconcile(self, obj: K) -> Result | None:  # type: ignore[override]  # typed by kind
        raise NotImplementedError

    async def finalize(self, obj: K) -> None:  # type: ignore[override]
        """Clean up before ``obj`` goes away (only with a ``finalizer``). Must be idempotent."""
