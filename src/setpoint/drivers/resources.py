"""Drivers over a *resource API*: a subsystem that holds named resources, each with the desired
state it last accepted (``spec``), what it actually is (``status``) and a ``phase``.

This is the shape of the REST driver contract (``docs/driver-contract.md``), and an in-process
plugin can offer the same shape in Python. :class:`ResourceSetDriver` turns such an API into a
:class:`~setpoint.drivers.base.Driver` for a kind of object: each object maps to one or more
resources (``resources(obj) -> {id: spec}``), and

- ``observe`` reads each of them (a failure to read one is remembered, not fatal);
- ``ensure`` sends a PUT only for a resource whose accepted spec differs from the desired one, or
  that failed midway; a resource still ``Progressing`` towards the desired spec is left alone
  (NotReady: look again later). Every PUT carries an operation id derived from the object's uid,
  generation and the resource id, the same on every retry, so the subsystem deduplicates;
- after a failure whose outcome is uncertain (a timeout, a lost reply, a 5xx) it does not resend:
  it reads the resource again, and if the work was done that is a success. Otherwise the error goes
  to the runtime, whose next attempt observes again and resends with the same operation id;
- resources are independent: one that fails does not stop the others; the errors are combined
  at the end (Permanent over Transient over NotReady).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from setpoint.backoff import Backoff
from setpoint.drivers.base import DriverError, ErrorClass, NotReady, Obj, OperationId, Permanent, Transient
from setpoint.drivers.retry import RetryPolicy

log = logging.getLogger(__name__)

Spec = dict[str, Any]

READY = "Ready"
PROGRESSING = "Progressing"
FAILED = "Failed"


class Owner(msgspec.Struct, frozen=True, omit_defaults=True):
    """The setpoint object a resource belongs to (for orphan detection)."""

    uid: str
    kind: str = ""
    namespace: str = ""
    name: str = ""


class RemoteResource(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """One resource as the subsystem reports it."""

    id: str
    spec: Spec | None = None  # the desired state it last accepted (None: never configured)
    status: dict[str, Any] = msgspec.field(default_factory=dict)  # what it actually is
    phase: str = READY  # Ready | Progressing | Failed
    message: str = ""
    owner: Owner | None = None
    operation_id: str = ""  # the Idempotency-Key of the last accepted change
    retry_after_seconds: float | None = None  # Progressing: when it is worth looking again


class Health(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    status: str = "ok"
    driver: str = ""
    version: str = ""
    instance: str = ""  # changes when the subsystem restarts with its memory lost


class ResourceAPI(Protocol):
    """What a resource subsystem offers; the REST bridge speaks it over HTTP. Every method raises
    :class:`~setpoint.drivers.base.DriverError` subclasses only."""

    async def get(self, id: str) -> RemoteResource | None: ...

    async def put(self, id: str, spec: Spec, owner: Owner, op: OperationId) -> RemoteResource: ...

    async def delete(self, id: str, op: OperationId) -> None: ...

    async def list(self) -> list[RemoteResource]: ...

    async def health(self) -> Health: ...


def one_resource(obj: Obj) -> dict[str, Spec]:
    """The default mapping: one resource per object, ``<namespace>.<name>``, with the object's spec."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = str(meta.get("name", ""))
    return {f"{ns}.{name}" if ns else name: dict(obj.get("spec") or {})}


def owner_of(obj: Obj) -> Owner:
    meta = obj.get("metadata") or {}
    return Owner(uid=str(meta.get("uid", "")), kind=str(obj.get("kind", "")),
                 namespace=str(meta.get("namespace") or ""), name=str(meta.get("name", "")))


@dataclass
class ResourceObservation:
    """What ``observe`` saw: each resource (``None``: absent), or the error reading it."""

    found: dict[str, RemoteResource | None] = field(default_factory=dict)
    errors: dict[str, DriverError] = field(default_factory=dict)

    def ready(self, id: str) -> bool:
        r = self.found.get(id)
        return r is not None and r.phase == READY


@dataclass
class SouthboundStats:
    """Counts of what the driver did, for tests, benchmarks and metrics."""

    observes: int = 0
    sends: int = 0  # PUTs sent (first sends and resends)
    resends: int = 0  # PUTs sent again with an operation id sent before
    skipped: int = 0  # resources found already as desired: nothing sent
    uncertain: int = 0  # sends whose outcome was unknown
    confirmed_after_uncertain: int = 0  # ... and that a fresh observation showed were done
    deletes: int = 0
    op_retries: int = 0  # transient failures of one resource retried within the same ensure


class ResourcesFailed(DriverError):
    """Some resources of an object failed; ``errors`` by resource id, ``done`` what succeeded."""

    def __init__(self, message: str, *, error_class: ErrorClass, errors: Mapping[str, DriverError],
                 done: Mapping[str, RemoteResource], retry_after: float | None, uncertain: bool,
                 reason: str) -> None:
        super().__init__(message, retry_after=retry_after, uncertain=uncertain, reason=reason)
        self.error_class = error_class
        self.errors = dict(errors)
        self.done = dict(done)


def combine(errors: Mapping[str, DriverError], done: Mapping[str, RemoteResource]) -> DriverError:
    """One error for a set of resource errors: the most serious class wins."""
    items = sorted(errors.items())
    cls: type[DriverError] = Transient  # plain DriverErrors count as Transient
    chosen: list[tuple[str, DriverError]] = items
    for c in (Permanent, Transient, NotReady):
        picked: list[tuple[str, DriverError]] = [(i, e) for i, e in items if isinstance(e, c)]
        if picked:
            cls, chosen = c, picked
            break
    message = "; ".join(f"{i}: {e.message}" for i, e in items)
    retry_afters = [e.retry_after for _, e in chosen if e.retry_after is not None]
    return ResourcesFailed(
        message, error_class=cls.error_class, errors=errors, done=done,
        retry_after=min(retry_afters) if retry_afters else None,
        uncertain=any(e.uncertain for e in errors.values()),
        reason=chosen[0][1].reason if len(chosen) == 1 else "ResourcesFailed",
    )


class ResourceSetDriver:
    """A Driver for objects that map to resources of a :class:`ResourceAPI` (see the module doc)."""

    name = "resources"
    retry_policy = RetryPolicy()
    # ``ensure(obj, None, op)`` reads each resource just before acting on it, each on its own: a
    # reconciler need not observe them all first (a lost read would hold up every resource).
    observes_in_ensure = True

    def __init__(self, api: ResourceAPI, *, resources: Callable[[Obj], dict[str, Spec]] = one_resource,
                 retry_policy: RetryPolicy | None = None, progress_poll: float = 0.5,
                 concurrency: int = 16, op_attempts: int = 6, op_backoff: float = 0.02,
                 op_backoff_cap: float = 0.2, op_budget: float = 10.0, confirmed_for: float = 5.0) -> None:
        self.api = api
        self.op_attempts = op_attempts  # tries of one resource within one ensure
        self.op_backoff = op_backoff  # the first wait after a transient failure; doubles each time
        self.op_backoff_cap = op_backoff_cap
        self.op_budget = op_budget  # seconds one resource may spend retrying within one ensure
        self.resources = resources
        if retry_policy is not None:
            self.retry_policy = retry_policy
        self.progress_poll = progress_poll
        # How long, at most, a resource found as desired by an operation is taken as such by the
        # same operation's next passes while a sibling is still in progress or failing, without
        # being read again. Once every resource of the object is done, the next pass (a drift
        # check) reads them all afresh; so does a new generation.
        self.confirmed_for = confirmed_for
        self.stats = SouthboundStats()
        self._sem = asyncio.Semaphore(concurrency)
        self._sent: dict[str, str] = {}  # resource id -> the last operation id sent for it
        # resource id -> (operation id, when, the resource): found as desired by that operation
        self._confirmed: dict[str, tuple[str, float, RemoteResource]] = {}

    # ---------------------------------------------------------------- the Driver contract

    async def observe(self, obj: Obj) -> ResourceObservation:
        desired = self._desired(obj)
        seen = ResourceObservation()

        async def one(id: str) -> None:
            try:
                seen.found[id] = await self._get(id)
            except DriverError as e:
                seen.errors[id] = e

        await asyncio.gather(*(one(id) for id in desired))
        return seen

    async def ensure(self, obj: Obj, observed: ResourceObservation | None,
                     op: OperationId) -> dict[str, RemoteResource]:
        """Bring every resource of ``obj`` to its desired spec; returns them as they are after.
        Raises a combined error (:class:`ResourcesFailed`) when any of them failed."""
        desired = self._desired(obj)
        owner = owner_of(obj)
        observed = observed or ResourceObservation()
        done: dict[str, RemoteResource] = {}
        errors: dict[str, DriverError] = {}

        async def one(id: str, spec: Spec) -> None:
            try:
                done[id] = await self._ensure_one(id, spec, owner, op, observed)
            except DriverError as e:
                errors[id] = e

        await asyncio.gather(*(one(id, spec) for id, spec in desired.items()))
        if errors:
            raise combine(errors, done)
        for id in desired:  # all done: the next pass (a drift check) reads each afresh
            self._confirmed.pop(id, None)
        return done

    async def delete(self, obj: Obj, op: OperationId) -> None:
        errors: dict[str, DriverError] = {}

        async def one(id: str) -> None:
            try:
                async with self._sem:
                    self.stats.deletes += 1
                    await self.api.delete(id, _resource_op(op, id))
                self._sent.pop(id, None)
                self._confirmed.pop(id, None)
            except DriverError as e:
                errors[id] = e

        await asyncio.gather(*(one(id) for id in self._desired(obj)))
        if errors:
            raise combine(errors, {})

    # ---------------------------------------------------------------- orphans and health

    async def orphans(self, live_uids: set[str]) -> list[RemoteResource]:
        """Resources that name an owner which no longer exists."""
        return [r for r in await self.api.list()
                if r.owner is not None and r.owner.uid and r.owner.uid not in live_uids]

    async def release(self, resource: RemoteResource) -> None:
        """Remove an orphan (the operation id names its dead owner, so a retry is recognised)."""
        uid = resource.owner.uid if resource.owner else ""
        await self.api.delete(resource.id, OperationId(uid, 0, f"release:{resource.id}"))

    async def health(self) -> Health:
        return await self.api.health()

    # ---------------------------------------------------------------- one resource

    def _desired(self, obj: Obj) -> dict[str, Spec]:
        try:
            return self.resources(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise Permanent(f"cannot map the object to resources: {e}", reason="InvalidSpec") from e

    async def _get(self, id: str) -> RemoteResource | None:
        async with self._sem:
            self.stats.observes += 1
            return await self.api.get(id)

    async def _ensure_one(self, id: str, spec: Spec, owner: Owner, op: OperationId,
                          observed: ResourceObservation) -> RemoteResource:
        """One resource, retried here on transient failures with a backoff of its own: a lost
        packet costs this resource a short wait, not the whole object a trip through the
        runtime's retry policy (whose backoff would grow with every other resource's losses).
        Each attempt observes before it acts. The backoff grows with failures *in a row*: an
        attempt in which the subsystem answered anything shows it is there (a lossy link, not an
        overloaded or absent subsystem), so the next waits the shortest delay again. After
        ``op_attempts`` attempts or ``op_budget`` seconds the error goes to the runtime, which
        takes over and alerts if its policy is spent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.op_budget
        # Jittered, so that the retries of resources that failed together do not march together.
        pace = Backoff(initial=self.op_backoff, cap=self.op_backoff_cap, jitter=0.5)
        attempts = 0
        while True:
            attempts += 1
            attempt = _Attempt()
            try:
                return await self._attempt_one(id, spec, owner, op, observed, attempt)
            except Transient as e:
                if attempt.answered:
                    pace.reset()
                delay = pace.next()
                if attempts >= self.op_attempts or loop.time() + delay > deadline:
                    raise
                self.stats.op_retries += 1
                log.debug("%s: %s failed (%s); again in %.3fs", self.name, id, e.message, delay)
                # The next attempt starts from what this one read after its failure, if anything
                # (each read is one more chance to lose); what was seen before proves nothing now.
                observed = attempt.seen
                await asyncio.sleep(delay)

    async def _attempt_one(self, id: str, spec: Spec, owner: Owner, op: OperationId,
                           observed: ResourceObservation, attempt: _Attempt) -> RemoteResource:
        rop = _resource_op(op, id)
        key = str(rop)
        if id in observed.found:
            current = observed.found[id]
        elif (done := self._confirmed.get(id)) is not None and done[0] == key and \
                asyncio.get_running_loop().time() - done[1] < self.confirmed_for:
            # This very operation confirmed it moments ago, while its siblings were still on
            # their way: not read again for the pass that waits for them.
            self.stats.skipped += 1
            return done[2]
        else:  # never read, or reading it failed: look before acting
            current = await self._get(id)
            attempt.answered = True
        if current is not None and current.spec == spec and current.phase != FAILED:
            if current.phase == PROGRESSING:
                raise self._progressing(current)
            self.stats.skipped += 1
            return self._confirm(id, key, current)
        if self._sent.get(id) == key:
            self.stats.resends += 1
        self._sent[id] = key
        self.stats.sends += 1
        try:
            async with self._sem:
                result = await self.api.put(id, spec, owner, rop)
        except DriverError as e:
            if not e.uncertain:
                raise
            # The request may have been carried out. Look before acting again: if it was, that
            # is a success; if not, the runtime retries later, observing first, with this same id.
            self.stats.uncertain += 1
            try:
                now = await self._get(id)
            except DriverError:
                raise e from None
            attempt.answered = True
            if now is None or now.spec != spec or now.phase == FAILED:
                attempt.seen.found[id] = now
                raise
            self.stats.confirmed_after_uncertain += 1
            log.info("%s: %s was done although its reply was lost", self.name, key)
            result = now
        if result.phase == PROGRESSING:
            raise self._progressing(result)
        if result.phase == FAILED:
            raise Transient(f"{id} failed: {result.message}", reason="ResourceFailed", uncertain=True)
        return self._confirm(id, key, result)

    def _confirm(self, id: str, key: str, resource: RemoteResource) -> RemoteResource:
        self._confirmed[id] = (key, asyncio.get_running_loop().time(), resource)
        return resource

    def _progressing(self, r: RemoteResource) -> NotReady:
        wait = r.retry_after_seconds if r.retry_after_seconds is not None else self.progress_poll
        return NotReady(f"{r.id} is still {r.phase.lower()}{': ' + r.message if r.message else ''}",
                        retry_after=wait, reason="Progressing")


@dataclass
class _Attempt:
    """What one attempt at a resource learnt besides its outcome."""

    answered: bool = False  # the subsystem answered at least one of its requests
    seen: ResourceObservation = field(default_factory=ResourceObservation)  # read after its failure


def _resource_op(op: OperationId, id: str) -> OperationId:
    """The operation id of one resource of an object: unique across resources and subsystems."""
    return OperationId(op.uid, op.generation, f"{op.action}:{id}")
