"""The node side of LoadBalancers: each balancer on this node serves exactly the ready endpoints
its selector chooses.

Backends come from EndpointSlices: setpoint's own (one per ProcessSet replica, written by the
controller manager's endpoints controller) or, with ``spec.backends.kubeconfig``, another
Kubernetes-API server's (an external cluster's Services, or another setpoint). Either way every
sync hands the driver the complete set, computed from the informer's cache (never from the
event that woke the controller), so a missed or coalesced event, or an event stream that was
cut and resumed, cannot leave the balancer wrong: the next sync states the whole truth again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setpoint.agent import Controller, Informer, NotReady, Permanent, Result
from setpoint.agent.conditions import now_micro, set_condition
from setpoint.client import Client, ClientConfig, ConfigError
from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS
from setpoint.drivers.loadbalancer import Backend, Desired, HAProxyDriver, LoadBalancerDriver, frontend_of
from setpoint.drivers.loadbalancer.envoy import EnvoyDriver
from setpoint.types import Object

log = logging.getLogger(__name__)

FINALIZER = "setpoint.dev/loadbalancer"


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
        meta, spec = obj["metadata"], obj.get("spec") or {}
        namespace = meta.get("namespace", "default")
        frontend = frontend_of(spec)
        backends_spec = _backends(obj)
        selector = backends_spec.get("selector") or {}
        if backends_spec.get("kubeconfig"):
            src = await self._source(str(backends_spec["kubeconfig"]), str(backends_spec.get("namespace") or namespace))
            if not src.informer.has_synced:
                raise NotReady(f"waiting for the first list of EndpointSlices from {src.server}", retry_after=1.0,
                               reason="WaitingForSource")
            slices = src.informer.list()
        else:
            slices = [s for s in self.slices.list() if s["metadata"].get("namespace") == namespace]
        backends, revision = ready_backends(slices, selector, str(backends_spec.get("portName") or ""))
        desired = Desired(frontend, tuple(backends), float(backends_spec.get("drainSeconds", 10)))
        driver = self.drivers[str(spec.get("driver") or "haproxy")]
        try:
            observed = await driver.ensure(str(meta["uid"]), desired, f"LoadBalancer {namespace}/{meta['name']}")
        except NotReady as e:
            # Said on the object (a condition and an event), not only in the agent's log: the
            # balancer cannot start yet (its port is taken...) and is tried again later.
            self.events.warning(obj, e.reason, e.message)
            return Result(ready=False, reason=e.reason, message=e.message, requeue_after=e.retry_after or 5.0)
        before = (obj.get("status") or {}).get("pid")
        if observed.pid is not None and observed.pid != before:
            self.events.normal(obj, "BalancerStarted", f"{spec.get('driver') or 'haproxy'} running as pid "
                               f"{observed.pid} on node {self.node}" + (f" (was pid {before})" if before else ""))
        serving = observed.in_service
        status: dict[str, Any] = {
            "inService": len(serving),
            "backends": [{"name": s.backend.name, "address": s.backend.address, "port": s.backend.port,
                          "state": s.state} for s in observed.servers],
            "lastSyncRevision": str(revision), "lastSyncTime": now_micro(),
            "conditions": [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"],
        }
        if observed.pid is not None:
            status["pid"] = observed.pid
        requeue = 1.0 if observed.draining else None
        if not backends:
            set_condition(status, "Degraded", True, reason="NoBackends",
                          message="the selector matches no ready endpoint: the balancer has no servers")
            return Result(status=status, ready=False, reason="NoBackends",
                          message="the balancer runs with no servers", requeue_after=requeue)
        set_condition(status, "Degraded", False, reason="Synced", message="")
        return Result(status=status, ready=True, reason="Synced",
                      message=f"{len(backends)} backends in service", requeue_after=requeue)

    async def finalize(self, obj: Object) -> None:
        uid = str(obj["metadata"]["uid"])
        for driver in self.drivers.values():
            await driver.delete(uid)

    async def deleted(self, key: str) -> None:
        """Gone, or moved to another node: stop balancers no LoadBalancer here owns any more."""
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
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


def _backends(lb: Object) -> dict[str, Any]:
    b = (lb.get("spec") or {}).get("backends")
    return b if isinstance(b, dict) else {}


__all__ = ["LoadBalancerController", "ready_backends", "selector_matches"]
