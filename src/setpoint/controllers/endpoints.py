"""EndpointSlices for ProcessSets: where each replica can be reached, as Kubernetes publishes
where each Pod of a Service can be reached.

A load balancer (or anything else) then follows EndpointSlices only, whether they describe
setpoint's ProcessSets or another cluster's Services: one data path for both. The controller
runs in the controller manager (it reads every ProcessSet and Node, which a node's credentials
may not). A ProcessSet's replicas all run on one node, each on its own port, so each replica
with a port gets a slice of its own (``NAME-REPLICA``): a slice's endpoints share its ports.
The slices carry the ProcessSet's labels, so a selector written for ProcessSets selects them,
and an owner reference, so the garbage collector removes them with it.
"""

from __future__ import annotations

import logging
from typing import Any

from setpoint.agent import Controller, Informer, Result, Watch
from setpoint.client import AlreadyExists, Client, Conflict, NotFound
from setpoint.controllers.resources import ENDPOINTSLICES, NODES, PROCESSSETS
from setpoint.types import Object

log = logging.getLogger(__name__)

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MANAGER = "processsets.setpoint.dev"
SERVICE_NAME = "kubernetes.io/service-name"
PROCESSSET_LABEL = "setpoint.dev/processset"
DEFAULT_ADDRESS = "127.0.0.1"


def node_address(node: Object | None) -> str:
    """The address a node's replicas are reached at: the first its agent reports."""
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    return str(addresses[0]) if addresses and isinstance(addresses[0], str) else DEFAULT_ADDRESS


def desired_slices(ps: Object, address: str) -> dict[str, Object]:
    """The EndpointSlices that describe ``ps``'s replicas, by name."""
    meta = ps["metadata"]
    spec = ps.get("spec") or {}
    status = ps.get("status") or {}
    name, namespace = meta["name"], meta.get("namespace", "default")
    desired = spec.get("replicas", 1) if isinstance(spec.get("replicas", 1), int) else 0
    node = spec.get("nodeName") or status.get("nodeName")
    if not node or meta.get("deletionTimestamp"):
        return {}
    labels = {**(meta.get("labels") or {}), SERVICE_NAME: name, MANAGED_BY: MANAGER, PROCESSSET_LABEL: name}
    owner = {"apiVersion": PROCESSSETS.api_version, "kind": "ProcessSet", "name": name,
             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    out: dict[str, Object] = {}
    for p in status.get("processes") or []:
        port, replica = p.get("port"), p.get("replica")
        if not isinstance(port, int) or not isinstance(replica, int):
            continue
        running = p.get("state") == "Running"
        terminating = replica >= desired
        slice_name = f"{name}-{replica}"
        out[slice_name] = {
            "apiVersion": ENDPOINTSLICES.api_version, "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": namespace, "labels": labels,
                         "ownerReferences": [owner]},
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": [address], "nodeName": node,
                "conditions": {"ready": running and not terminating, "serving": running,
                               "terminating": terminating},
                "targetRef": {"kind": "ProcessSet", "namespace": namespace, "name": name,
                              "uid": meta["uid"], "fieldPath": f"status.processes[{replica}]"},
            }],
            "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        }
    return out


def _same(current: Object, want: Object) -> bool:
    cm, wm = current.get("metadata") or {}, want["metadata"]
    return bool(current.get("endpoints") == want["endpoints"] and current.get("ports") == want["ports"]
            and current.get("addressType") == want["addressType"]
            and (cm.get("labels") or {}) == wm["labels"]
            and (cm.get("ownerReferences") or []) == wm["ownerReferences"])


class EndpointsController(Controller):
    """Keeps each ProcessSet's EndpointSlices equal to what its status reports."""

    resource = PROCESSSETS
    name = "endpoints"
    manages_status = False  # the ProcessSet's status is its node agent's

    def __init__(self, client: Client, **kw: Any) -> None:
        super().__init__(client, watches=[Watch(ENDPOINTSLICES, self._slice_owner,
                                                label_selector={MANAGED_BY: MANAGER})], **kw)
        self.nodes = Informer(client, NODES)
        self.nodes.add_handler(on_add=self._node_changed, on_update=lambda o, n: self._node_changed(n))
        self._secondary.append(self.nodes)
        self.slices = self._secondary[0]
        self.slices.add_indexer("owner", lambda s: [str(r.get("uid")) for r in
                                                    (s.get("metadata") or {}).get("ownerReferences") or []])

    @staticmethod
    def _slice_owner(s: Object) -> list[str]:
        meta = s.get("metadata") or {}
        name = (meta.get("labels") or {}).get(PROCESSSET_LABEL)
        return [f"{meta.get('namespace')}/{name}"] if name else []

    def _node_changed(self, node: Object) -> None:
        for ps in self.informer.list():
            if (ps.get("spec") or {}).get("nodeName") == node["metadata"]["name"]:
                self._enqueue_obj(ps)

    async def reconcile(self, obj: Object) -> Result | None:
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default")
        node_name = (obj.get("spec") or {}).get("nodeName")
        want = desired_slices(obj, node_address(self.nodes.get(node_name) if node_name else None))
        have = {s["metadata"]["name"]: s for s in self.slices.by_index("owner", str(meta["uid"]))}
        for name, body in want.items():
            current = have.get(name)
            if current is not None and _same(current, body):
                continue
            try:
                if current is None:
                    await self.client.create(ENDPOINTSLICES, body, namespace=namespace)
                else:
                    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    await self.client.update(ENDPOINTSLICES, body, namespace=namespace)
            except (AlreadyExists, Conflict):
                return Result(requeue_after=0.2)  # the cache was behind: look again when it is not
        for name in have.keys() - want.keys():
            try:
                await self.client.delete(ENDPOINTSLICES, name, namespace=namespace)
            except NotFound:
                pass
        return None

    async def deleted(self, key: str) -> None:
        """The ProcessSet is gone: the garbage collector removes its slices (owner references)."""


__all__ = ["EndpointsController", "desired_slices", "node_address"]
