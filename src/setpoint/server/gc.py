"""Garbage collection by ownerReferences: dependents follow their owners out.

An object whose ``metadata.ownerReferences`` all point at owners that no longer exist (no
object of that kind, name and uid) is deleted. How an owner is deleted decides the rest, as in
Kubernetes (``propagationPolicy``):

- ``Background`` (the default): the owner goes at once; this collector deletes its dependents
  afterwards.
- ``Foreground``: the owner gets the ``foregroundDeletion`` finalizer and stays (with its
  deletionTimestamp) while the collector deletes its dependents; once none that blocks it
  (``blockOwnerDeletion: true``) remains, the finalizer is removed and the owner goes.
- ``Orphan``: the owner gets the ``orphan`` finalizer; the collector removes the reference from
  every dependent, then the finalizer.

The collector is level-triggered. It keeps an index of owner references fed by the watch cache
and works through a bounded set of keys to look at, woken by events; a full sweep over the
cache runs at start (so a restart continues where it stopped), periodically, and whenever the
set would overflow. Every decision is made from the current state, so a missed or repeated
wake-up costs a little time, never a wrong deletion: a dependent is deleted with its uid as a
precondition, so a re-created object of the same name is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from setpoint.server.errors import APIError, NotFound
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import StoreError, Unavailable
from setpoint.tasks import cancel_and_wait

if TYPE_CHECKING:
    from setpoint.server.handlers import ResourceHandlers
    from setpoint.server.watchcache import CachedObject

log = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
GC_FINALIZERS = (FOREGROUND, ORPHAN)


def _parse_key(key: str) -> tuple[str, str, str, str] | None:
    """'/registry/{group|core}/{plural}/[{namespace}/]{name}' -> (group, plural, namespace, name)."""
    parts = key.split("/")
    if len(parts) == 6:
        _, _, group, plural, namespace, name = parts
    elif len(parts) == 5:
        _, _, group, plural, name = parts
        namespace = ""
    else:
        return None
    return ("" if group == "core" else group), plural, namespace, name


MAX_FAILURES = 3


class GarbageCollector:
    def __init__(self, handlers: ResourceHandlers, *, sweep_interval: float = 60.0,
                 max_pending: int = 10_000) -> None:
        self.handlers = handlers
        self.sweep_interval = sweep_interval
        self.max_pending = max_pending
        # dependent key -> the uids of its owners; owner uid -> dependent keys
        self._owners_of: dict[str, tuple[str, ...]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._pending: set[str] = set()  # keys of objects to look at
        self._foreground: dict[str, str] = {}  # uid -> key of owners being deleted in the foreground
        self._overflow = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0  # dependents deleted, for tests and metrics
        # One object the collector cannot process must not stop it for all the others: after
        # MAX_FAILURES tries it is skipped (and said so) until it changes.
        self._failures: dict[str, int] = {}
        self.skipped: dict[str, str] = {}  # key -> why, for tests, metrics and the log
        handlers.cache.add_event_hook(self._on_event)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="garbage-collector")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def wake(self) -> None:
        self._wake.set()

    # ---- the index ------------------------------------------------------------------------------

    def _index(self, key: str, obj: dict[str, Any]) -> None:
        refs = obj["metadata"].get("ownerReferences")
        uids = tuple(r["uid"] for r in refs if isinstance(r, dict) and isinstance(r.get("uid"), str)) \
            if isinstance(refs, list) else ()
        old = self._owners_of.get(key, ())
        if old == uids:
            return
        for uid in old:
            deps = self._dependents.get(uid)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._dependents[uid]
        if uids:
            self._owners_of[key] = uids
            for uid in uids:
                self._dependents.setdefault(uid, set()).add(key)
        else:
            self._owners_of.pop(key, None)

    def _enqueue(self, key: str) -> None:
        if len(self._pending) >= self.max_pending:
            self._overflow = True  # the next round sweeps everything instead
        else:
            self._pending.add(key)
        self._wake.set()

    def _on_event(self, etype: str, key: str, cached: CachedObject) -> None:
        if self.skipped or self._failures:  # it changed: worth another try
            self.skipped.pop(key, None)
            self._failures.pop(key, None)
        owners = self._owners_of.get(key, ())
        if not owners and not self._foreground:
            # Most writes concern no owner at all: tell so from the bytes, without decoding.
            if etype == "DELETED":
                if not self._dependents:
                    return
            elif not cached.mentions(b'"ownerReferences"') and not cached.mentions(b'"deletionTimestamp"'):
                return
        obj = cached.obj
        meta = obj["metadata"]
        uid = meta.get("uid", "")
        if etype == "DELETED":
            self._index(key, {"metadata": {}})
            self._foreground.pop(uid, None)
            for dep in self._dependents.get(uid, ()):
                self._enqueue(dep)
        elif meta.get("ownerReferences") or owners:
            self._index(key, obj)
            if meta.get("ownerReferences"):
                self._enqueue(key)
        # An owner waiting in the foreground looks again whenever one of its dependents changes.
        for owner_uid in owners:
            owner_key = self._foreground.get(owner_uid)
            if owner_key is not None:
                self._enqueue(owner_key)
        if etype == "DELETED":
            return
        finalizers = meta.get("finalizers") or ()
        if FOREGROUND not in finalizers:
            self._foreground.pop(uid, None)
        if meta.get("deletionTimestamp"):
            if FOREGROUND in finalizers:
                self._foreground[uid] = key
            if FOREGROUND in finalizers or ORPHAN in finalizers:
                self._enqueue(key)
            # Dependents of an owner being deleted in the foreground go now.
            for dep in self._dependents.get(meta.get("uid", ""), ()):
                self._enqueue(dep)

    # ---- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._sweep()
        while True:
            try:
                await self._work()
            except (StoreError, APIError) as e:
                log.warning("garbage collection will be retried: %s", e)
                await asyncio.sleep(1.0)
                self._overflow = True
                continue
            if self._pending or self._overflow:
                continue
            try:
                async with asyncio.timeout(self.sweep_interval):  # not wait_for: see setpoint.tasks
                    await self._wake.wait()
            except TimeoutError:
                await self._sweep()
            self._wake.clear()

    async def _sweep(self) -> None:
        """Look at every object that has owners or is being deleted by the collector's rules.

        Every object of every kind passes through here, hundreds of thousands on a big server:
        the cache finds candidates in the stored bytes without decoding, and spreads the scan
        over time, so that a sweep does not show in request or watch latencies.
        """
        self._overflow = False
        cache = self.handlers.cache
        foreground, orphan = f'"{FOREGROUND}"'.encode(), f'"{ORPHAN}"'.encode()
        needles = (b'"ownerReferences"', b'"deletionTimestamp"')
        for rtype in self.handlers.registry.all():
            async for co in cache.scan(rtype.key_prefix, needles):
                if not (co.mentions(b'"ownerReferences"') or co.mentions(foreground) or co.mentions(orphan)):
                    continue  # being deleted, but not by a rule of the collector
                obj = co.obj
                self._index(co.key, obj)
                self._pending.add(co.key)
                meta = obj["metadata"]
                if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or ()):
                    self._foreground[meta.get("uid", "")] = co.key

    async def _work(self) -> None:
        if self._overflow:
            await self._sweep()
        retry: set[str] = set()
        while self._pending:
            key = self._pending.pop()
            if key in self.skipped:
                continue
            try:
                await self._process(key)
            except Unavailable:
                self._pending.add(key)
                raise  # the store is down: every object would fail; the loop waits and retries
            except asyncio.CancelledError:
                raise
            except Exception as e:  # this object, not the collector: count it, go on with the others
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                if failures >= MAX_FAILURES or not isinstance(e, StoreError | APIError):
                    self._skip(key, e)
                else:
                    retry.add(key)
            else:
                self._failures.pop(key, None)
        if retry:
            await asyncio.sleep(1.0)  # a conflict or a busy store: try those again shortly
            self._pending |= retry

    def _skip(self, key: str, error: BaseException) -> None:
        why = f"{type(error).__name__}: {str(error)[:200]}"
        self.skipped[key] = why
        self._failures.pop(key, None)
        log.error("garbage collection skips %s until it changes: %s", key, why,
                  exc_info=error if not isinstance(error, StoreError | APIError) else None)

    async def _process(self, key: str) -> None:
        parsed = _parse_key(key)
        if parsed is None:
            return
        group, plural, namespace, _ = parsed
        rtype = self.handlers.registry.by_group_resource(group, plural)
        co = self.handlers.cache.get(key)
        if rtype is None or co is None:
            return
        obj = co.obj
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or ()
            if ORPHAN in finalizers:
                await self._orphan_dependents(rtype, namespace, obj)
                return
            if FOREGROUND in finalizers:
                await self._finish_foreground(rtype, namespace, obj)
        refs = meta.get("ownerReferences")
        if refs and not meta.get("deletionTimestamp"):
            await self._check_owners(rtype, namespace, obj, refs)

    # ---- owners ---------------------------------------------------------------------------------

    def _owner_type(self, ref: dict[str, Any]) -> ResourceType | None:
        api_version = str(ref.get("apiVersion", ""))
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        kind = ref.get("kind")
        for t in self.handlers.registry.all():
            if t.group == group and t.kind == kind:
                return t
        return None

    def _owner_state(self, ref: dict[str, Any], namespace: str) -> str:
        """'alive', 'gone', 'foreground' (being deleted in the foreground) or 'unknown'."""
        rtype = self._owner_type(ref)
        if rtype is None or not isinstance(ref.get("name"), str):
            return "unknown"  # a kind this server does not serve: never a reason to delete
        if rtype.namespaced and not namespace:
            # A cluster-scoped dependent cannot name a namespaced owner (Kubernetes reports
            # such a reference and leaves the dependent alone).
            return "unknown"
        co = self.handlers.cache.get(rtype.key(namespace if rtype.namespaced else "", ref["name"]))
        if co is None:
            return "gone"
        meta = co.obj["metadata"]
        if meta.get("uid") != ref.get("uid"):
            return "gone"  # a different object of the same name
        if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or ()):
            return "foreground"
        return "alive"

    async def _check_owners(self, rtype: ResourceType, namespace: str, obj: dict[str, Any],
                            refs: list[Any]) -> None:
        states = [(ref, self._owner_state(ref, namespace)) for ref in refs if isinstance(ref, dict)]
        if not states or any(s in ("alive", "unknown") for _, s in states):
            gone = {ref.get("uid") for ref, s in states if s == "gone"}
            if gone and any(s in ("alive", "unknown") for _, s in states):
                # Some owners remain: drop only the references to the ones that are gone.
                await self._mutate(rtype, namespace, obj, lambda o: self._drop_refs(o, gone))
            return
        policy = "Foreground" if any(s == "foreground" for _, s in states) else "Background"
        meta = obj["metadata"]
        try:
            await self.handlers.delete_object(
                rtype, namespace, meta["name"],
                {"propagationPolicy": policy, "preconditions": {"uid": meta.get("uid")}})
            self.deleted += 1
        except NotFound:
            pass
        except APIError as e:
            if e.code != 409:
                raise

    @staticmethod
    def _drop_refs(obj: dict[str, Any], uids: set[Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") not in uids]
        if refs:
            meta["ownerReferences"] = refs
        else:
            meta.pop("ownerReferences", None)
        return obj

    @staticmethod
    def _drop_finalizer(obj: dict[str, Any], finalizer: str) -> dict[str, Any]:
        meta = obj["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
        if not meta["finalizers"]:
            del meta["finalizers"]
        return obj

    def _dependent_objects(self, uid: str) -> list[tuple[ResourceType, str, dict[str, Any]]]:
        out = []
        for key in list(self._dependents.get(uid, ())):
            parsed = _parse_key(key)
            co = self.handlers.cache.get(key)
            if parsed is None or co is None:
                continue
            rtype = self.handlers.registry.by_group_resource(parsed[0], parsed[1])
            if rtype is not None:
                out.append((rtype, parsed[2], co.obj))
        return out

    async def _orphan_dependents(self, rtype: ResourceType, namespace: str, owner: dict[str, Any]) -> None:
        uid = owner["metadata"].get("uid", "")
        for dtype, dns, dep in self._dependent_objects(uid):
            await self._mutate(dtype, dns, dep, lambda o: self._drop_refs(o, {uid}))
        await self._mutate(rtype, namespace, owner, lambda o: self._drop_finalizer(o, ORPHAN))

    async def _finish_foreground(self, rtype: ResourceType, namespace: str, owner: dict[str, Any]) -> None:
        uid = owner["metadata"].get("uid", "")
        blocking = False
        for dtype, dns, dep in self._dependent_objects(uid):
            refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") == uid]
            if any(r.get("blockOwnerDeletion") for r in refs):
                blocking = True
            if not dep["metadata"].get("deletionTimestamp"):
                self._pending.add(dtype.key(dns, dep["metadata"]["name"]))
        if not blocking:
            await self._mutate(rtype, namespace, owner, lambda o: self._drop_finalizer(o, FOREGROUND))

    async def _mutate(self, rtype: ResourceType, namespace: str, obj: dict[str, Any], change: Any) -> None:
        meta = obj["metadata"]
        info = RequestInfo(path="", verb="patch", resource_request=True, group=rtype.group,
                           version=rtype.storage_version, namespace=namespace, resource=rtype.plural,
                           name=meta["name"])
        uid = meta.get("uid")

        def mutate(current: dict[str, Any]) -> dict[str, Any]:
            if current["metadata"].get("uid") != uid:
                raise NotFound("replaced")
            return change(current)  # type: ignore[no-any-return]

        with contextlib.suppress(NotFound):
            await self.handlers.update_object(info, rtype, mutate)
