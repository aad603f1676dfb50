"""The node side of LoadBalancers: each balancer on this node serves exactly the ready endpoints
its selector chooses.

Backends come from EndpointSlices: setpoint's own (one per ProcessSet replica, written by the
controller manager's endpoints controller) or, with ``spec.backends.kubeconfig``, another
Kubernetes-API server's (an external cluster's Services, or another setpoint). Either way every
sync hands the driver the complete set, computed from the informer's cache (never from the
event that woke the controller), so a missed or coalesced event, or an event stream that was
cut and resumed, cannot leave the balancer wrong: the next sync states the whole truth again.

A balancer that cannot be synced (its admin socket does not answer, its port is taken, a new
frontend cannot start) is said at once, in the conditions (``Ready=False`` and ``Degraded=True``
with the reason), and announced once per change of state (a Warning event, an alert), not once
per attempt. Such a failure is retried with backoff for as long as it lasts: giving up after a
budget, as the runtime does for other controllers, would leave a balancer serving a stale set for
good once its socket came back. Only what cannot change before the object does (HAProxy not
installed, a configuration it refuses) waits for a change of the object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setpoint.agent import Controller, Informer, NotReady, Permanent, Result
from setpoint.agent.alerts import Alert
from setpoint.agent.conditions import get_condition, now_micro, set_condition
from setpoint.agent.errors import DriverError
from setpoint.backoff import Backoff
from setpoint.client import Client, ClientConfig, ConfigError
from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS
from setpoint.drivers.loadbalancer import Backend, Desired, HAProxyDriver, LoadBalancerDriver, Observed, frontend_of
from setpoint.drivers.loadbalancer.envoy import EnvoyDriver
from setpoint.types import Object

log = logging.getLogger(__name__)

FINALIZER = "setpoint.dev/loadbalancer"
# How long at most between looks at a balancer with backends out of service (health checks move
# with no event to wake a sync); also caps the first look, whatever the checks' interval and rise.
LOOK_AGAIN_CAP = 30.0
# States (the Degraded condition's reason) that are not failures of the balancer: no alert, and
# leaving one of them is no recovery. NoBackends is still a Warning event when it begins.
_QUIET = {"Synced", "NoBackends", "BackendsNotInService", "WaitingForSource"}


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against an object's labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ready_backends(slices: list[Object], selector: dict[str, Any], port_name: str) -> tuple[list[Backend], int]:
    """The ready endpoints of the matching slices, and the newest revision among those slices."""
    found: set[Backend] = set()
    revision = 0
    for s in slices:
        meta = s.get("metadata") or {}
        if not selector_matches(selector, meta.get("labels") or {}):
            continue
        rv = str(meta.get("resourceVersion", ""))
        revision = max(revision, int(rv) if rv.isdigit() else 0)
        ports = [p for p in s.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("port"), int)]
        chosen = next((p for p in ports if p.get("name", "") == port_name), None) if port_name else \
            (ports[0] if ports else None)
        if chosen is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # As Kubernetes reads them: a missing "ready" means ready; terminating endpoints
            # take no new connections.
            if cond.get("ready") is False or cond.get("terminating"):
                continue
            for address in ep.get("addresses") or []:
                found.add(Backend(str(address), int(chosen["port"])))
    return sorted(found), revision


@dataclass
class _External:
    client: Client
    informer: Informer
    server: str


class LoadBalancerController(Controller):
    resource = LOADBALANCERS
    finalizer = FINALIZER
    name = "loadbalancers"

    def __init__(self, client: Client, node: str, state_dir: Path, *, haproxy: str = "haproxy",
                 envoy: str = "envoy", **kw: Any) -> None:
        super().__init__(client, field_selector=f"spec.nodeName={node}", resync_period=30.0, **kw)
        self.node = node
        self.slices = Informer(client, ENDPOINTSLICES)
        self.slices.add_handler(on_add=self._slice_changed, on_update=lambda o, n: self._slice_changed(n),
                                on_delete=self._slice_changed)
        self._secondary.append(self.slices)
        self.informer.add_indexer("uid", lambda o: [str(o["metadata"].get("uid", ""))])
        self.drivers: dict[str, LoadBalancerDriver] = {
            "haproxy": HAProxyDriver(state_dir / "haproxy", binary=haproxy, on_exit=self._balancer_exited),
            "envoy": EnvoyDriver(state_dir / "envoy", binary=envoy, on_exit=self._balancer_exited),
        }
        self._external: dict[tuple[str, str], _External] = {}
        self._announced: dict[str, str] = {}  # uid -> the state (a reason) last announced
        self._failing: dict[str, Backoff] = {}  # uid -> the failed syncs in a row, and the wait
        self._checking: dict[str, Backoff] = {}  # uid -> looks at servers not in service yet
        self._permanent: dict[str, tuple[Any, DriverError]] = {}  # uid -> (generation, why)

    # ---- what wakes a balancer up --------------------------------------------------------------

    def _slice_changed(self, s: Object) -> None:
        namespace = (s.get("metadata") or {}).get("namespace")
        for lb in self.informer.list():
            if lb["metadata"].get("namespace") == namespace and not _backends(lb).get("kubeconfig"):
                self._enqueue_obj(lb)

    def _balancer_exited(self, uid: str) -> None:
        for lb in self.informer.by_index("uid", uid):
            log.warning("the balancer of LoadBalancer %s/%s exited: starting it again",
                        lb["metadata"].get("namespace"), lb["metadata"]["name"])
            self._enqueue_obj(lb)

    async def _source(self, path: str, namespace: str) -> _External:
        """An informer on another server's EndpointSlices, started on first use and kept."""
        key = (path, namespace)
        src = self._external.get(key)
        if src is None:
            try:
                config = ClientConfig.from_kubeconfig(path)
            except ConfigError as e:
                raise Permanent(f"spec.backends.kubeconfig: {e}", reason="InvalidKubeconfig") from e
            client = Client(config)
            informer = Informer(client, ENDPOINTSLICES, namespace=namespace)

            def wake(_: Object) -> None:
                for lb in self.informer.list():
                    b = _backends(lb)
                    ns = b.get("namespace") or lb["metadata"].get("namespace")
                    if b.get("kubeconfig") == path and ns == namespace:
                        self._enqueue_obj(lb)

            informer.add_handler(on_add=wake, on_update=lambda o, n: wake(n), on_delete=wake)
            informer.start()
            src = self._external[key] = _External(client, informer, config.servers[0])
        return src

    # ---- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, obj: Object) -> Result:
        meta = obj["metadata"]
        uid = str(meta["uid"])
        given_up = self._permanent.get(uid)
        if given_up is not None and given_up[0] == meta.get("generation"):
            return self._sync_failed(obj, given_up[1])  # cannot change before the object does
        self._permanent.pop(uid, None)
        try:
            return await self._sync(obj)
        except DriverError as e:
            return self._sync_failed(obj, e)

    async def _sync(self, obj: Object) -> Result:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        namespace = meta.get("namespace", "default")
        uid = str(meta["uid"])
        frontend = frontend_of(spec)
        backends_spec = _backends(obj)
        selector = backends_spec.get("selector") or {}
        if backends_spec.get("kubeconfig"):
            src = await self._source(str(backends_spec["kubeconfig"]), str(backends_spec.get("namespace") or namespace))
            if not src.informer.has_synced:
                raise NotReady(f"waiting for the first list of EndpointSlices from {src.server}", retry_after=1.0,
                               reason="WaitingForSource")
            slices, cache = src.informer.list(), src.informer
        else:
            slices = [s for s in self.slices.list() if s["metadata"].get("namespace") == namespace]
            cache = self.slices
        # The cache's revision, not the newest matching slice's: a deleted slice leaves no
        # revision behind it, yet the set the sync applies changed with it.
        cache_revision = cache.resource_version
        backends, revision = ready_backends(slices, selector, str(backends_spec.get("portName") or ""))
        if cache_revision and cache_revision.isdigit():
            revision = max(revision, int(cache_revision))
        desired = Desired(frontend, tuple(backends), float(backends_spec.get("drainSeconds", 10)))
        driver_name = str(spec.get("driver") or "haproxy")
        driver = self.drivers[driver_name]
        observed = await driver.ensure(uid, desired, f"LoadBalancer {namespace}/{meta['name']}")
        before = (obj.get("status") or {}).get("pid")
        if observed.pid is not None and observed.pid != before:
            self.events.normal(obj, "BalancerStarted", f"{driver_name} running as pid "
                               f"{observed.pid} on node {self.node}" + (f" (was pid {before})" if before else ""))
        for note in observed.notes:
            self.events.event(obj, note.type, note.reason, note.message)
            if note.type == "Warning":
                log.warning("LoadBalancer %s/%s: %s", namespace, meta["name"], note.message)
        status = self._observed_status(obj, observed, revision)
        requeue = 1.0 if observed.draining else None
        if observed.frontend_error is not None:
            result = self._sync_failed(obj, observed.frontend_error, status)
            return Result(status=result.status, ready=False, reason=result.reason, message=result.message,
                          requeue_after=_sooner(requeue, result.requeue_after))
        self._failing.pop(uid, None)
        serving = len(observed.in_service)
        if not backends:
            self._checking.pop(uid, None)
            message = "the selector matches no ready endpoint: the balancer has no servers"
            self._announce(obj, "NoBackends", message)
            set_condition(status, "Degraded", True, reason="NoBackends", message=message)
            return Result(status=status, ready=False, reason="NoBackends",
                          message="the balancer runs with no servers", requeue_after=requeue)
        message = f"{serving} of {len(backends)} backends in service"
        # Health checks change what is in service with no event to wake a sync: after a change of
        # the set (HAProxy counts a new server up until its checks say otherwise; Envoy takes it
        # once its first check passes), and while some are out of service, the balancer is looked
        # at again, less often the longer it lasts.
        hc = frontend.health
        settle = min(LOOK_AGAIN_CAP, max(1.0, hc.interval * (max(hc.rise, hc.fall) + 1)))
        before_set = {b.get("name") for b in (obj.get("status") or {}).get("backends") or [] if isinstance(b, dict)}
        if before_set != {s.backend.name for s in observed.servers}:
            requeue = _sooner(requeue, settle)
        if serving < len(backends):
            look = self._checking.setdefault(uid, Backoff(initial=settle, cap=LOOK_AGAIN_CAP, jitter=0.0))
            requeue = _sooner(requeue, look.next())
            self._announce(obj, "BackendsNotInService", message)
            set_condition(status, "Degraded", True, reason="BackendsNotInService",
                          message=f"{len(backends) - serving} of {len(backends)} backends are not in service "
                                  "(down, or waiting for their first health check)")
        else:
            self._checking.pop(uid, None)
            self._announce(obj, "Synced", message)
            set_condition(status, "Degraded", False, reason="Synced", message="")
        return Result(status=status, ready=True, reason="Synced", message=message, requeue_after=requeue)

    def _observed_status(self, obj: Object, observed: Observed, revision: int) -> dict[str, Any]:
        status: dict[str, Any] = {
            "inService": len(observed.in_service),
            "backends": [{"name": s.backend.name, "address": s.backend.address, "port": s.backend.port,
                          "state": s.state} for s in observed.servers],
            "lastSyncRevision": str(revision), "lastSyncTime": now_micro(),
            "conditions": _conditions_but_ready(obj),
        }
        if observed.pid is not None:
            status["pid"] = observed.pid
        return status

    def _sync_failed(self, obj: Object, error: DriverError, status: dict[str, Any] | None = None) -> Result:
        """A sync that failed, or a frontend that could not be applied: said in the conditions at
        once, announced once per change of state, and tried again with backoff, without end,
        unless it is permanent (then at the object's next change)."""
        meta = obj["metadata"]
        uid = str(meta["uid"])
        delay: float | None = None
        if isinstance(error, Permanent):
            if status is None:
                # Nothing serves: nothing to do before the object changes. (A frontend refused
                # while the previous one serves is not remembered here: the backends still change.)
                self._permanent[uid] = (meta.get("generation"), error)
            attempts = 1
        else:
            backoff = self._failing.setdefault(uid, Backoff(initial=0.5, cap=10.0, jitter=0.2))
            delay = backoff.next()
            if error.retry_after is not None:
                delay = error.retry_after
            attempts = backoff.failures
            log.info("LoadBalancer %s/%s: sync failed (attempt %d), again in %.1fs: %s",
                     meta.get("namespace"), meta.get("name"), attempts, delay, error.message)
        status = status if status is not None else {"conditions": _conditions_but_ready(obj)}
        set_condition(status, "Degraded", True, reason=error.reason, message=error.message)
        self._announce(obj, error.reason, error.message, attempts=attempts,
                       error_class=error.error_class.value)
        return Result(status=status, ready=False, reason=error.reason, message=error.message, requeue_after=delay)

    def _announce(self, obj: Object, state: str, message: str, *, attempts: int = 0, error_class: str = "") -> None:
        """An event (and for a failure an alert) when the balancer's state changes, none while
        it stays: a socket that does not answer for an hour is one event and one alert, and one
        event when it answers again. The state last announced is remembered, and after an agent
        restart read from the Degraded condition, so a restart announces nothing again."""
        meta = obj["metadata"]
        uid = str(meta["uid"])
        before = self._announced.get(uid)
        if before is None:
            cond = get_condition(obj.get("status"), "Degraded")
            before = str(cond.get("reason")) if cond is not None else None
        self._announced[uid] = state
        if state == before:
            return
        if state not in _QUIET:
            log.warning("LoadBalancer %s/%s: %s: %s", meta.get("namespace"), meta.get("name"), state, message)
            self.events.warning(obj, state, message)
            self.stats.alerts += 1
            self.alert_sink.alert(Alert(
                controller=self.controller_name, kind=obj.get("kind", "LoadBalancer"),
                namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=uid, reason=state,
                message=message, error_class=error_class, attempts=attempts))
            return
        if before is not None and before not in _QUIET:
            log.info("LoadBalancer %s/%s recovered from %s: %s", meta.get("namespace"), meta.get("name"), before,
                     message)
            self.events.normal(obj, "Recovered", f"{message} (after {before})")
        if state == "NoBackends":
            self.events.warning(obj, state, message)

    async def finalize(self, obj: Object) -> None:
        uid = str(obj["metadata"]["uid"])
        for driver in self.drivers.values():
            await driver.delete(uid)

    async def deleted(self, key: str) -> None:
        """Gone, or moved to another node: stop balancers no LoadBalancer here owns any more."""
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
        for memory in (self._announced, self._failing, self._checking, self._permanent):
            for uid in set(memory) - live:
                del memory[uid]
        for driver in self.drivers.values():
            for uid in driver.owners() - live:
                log.info("stopping balancer %s: its LoadBalancer is no longer on node %s", uid, self.node)
                await driver.delete(uid)

    def balancers(self) -> set[str]:
        """The uids of the balancers running on this node."""
        return set().union(*(d.owners() for d in self.drivers.values()))

    async def stop_balancers(self) -> int:
        """Stop every balancer of this node (``setpoint dev`` leaves nothing running)."""
        count = 0
        for driver in self.drivers.values():
            for uid in driver.owners():
                await driver.delete(uid)
                count += 1
        return count

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            for src in self._external.values():
                await src.informer.stop()
                await src.client.aclose()
            for driver in self.drivers.values():
                driver.close()


def _conditions_but_ready(obj: Object) -> list[Object]:
    """The stored conditions the runtime does not write itself (it sets Ready from the Result)."""
    return [dict(c) for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"]


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _backends(lb: Object) -> dict[str, Any]:
    b = (lb.get("spec") or {}).get("backends")
    return b if isinstance(b, dict) else {}


__all__ = ["LoadBalancerController", "ready_backends", "selector_matches"]
