"""Node restriction: an agent's credentials can only touch its own node's business.

Reads too, as Kubernetes' Node authorizer has them: a node reads its own Node and Lease, the
objects assigned to it (kinds with a selectable ``spec.nodeName``: one by name if it is its own,
lists and watches only with ``fieldSelector=spec.nodeName=<node>``), and the kinds every agent
needs to find its way (namespaces, CRDs); not another node's ProcessSet, whose environment may
hold a password, nor any other kind.

Agents authenticate as ``system:node:<name>`` in group ``system:nodes`` (as kubelets do in
Kubernetes). Whatever the policy file grants that group, writes are narrowed here, after the
object is known: a node may write its own Node and its heartbeat Lease, Events, and, of objects
assigned to it (``spec.nodeName``), the ``status`` and its own ``setpoint.dev/`` cleanup
finalizers — nothing else. A compromised node can
therefore not reschedule, delete or rewrite another node's work.
"""

from __future__ import annotations

from typing import Any

from setpoint.server.errors import Forbidden
from setpoint.server.resources import ResourceType

NODE_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
LEASE_NAMESPACE = "setpoint-node-lease"


def node_of(user: Any) -> str | None:
    """The node a user speaks for, or None for every other user."""
    if user is None or NODE_GROUP not in getattr(user, "groups", ()):
        return None
    name: str = user.name
    return name[len(NODE_USER_PREFIX):] if name.startswith(NODE_USER_PREFIX) else ""


# Kinds every agent may read: what it needs to find its way, and nothing anyone keeps secret. A
# load balancer on one node sends traffic to backends on others, so where services run is
# readable by every node (kube-proxy reads all EndpointSlices for the same reason).
_READABLE: frozenset[tuple[str, str]] = frozenset({
    ("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "services"), ("discovery.k8s.io", "endpointslices"),
    # Configuration that Templates on any node may render (Secrets stay restricted).
    ("", "configmaps"),
})
NODE_FIELD = "spec.nodeName"


def selects_node(field_selector: str | None, node: str) -> bool:
    """Whether a field selector keeps a list to the objects assigned to ``node``."""
    for term in (field_selector or "").split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and not key.endswith("!") and key.strip() == NODE_FIELD and value.strip() == node:
            return True
    return False


def _names_itself(field_selector: str | None, node: str) -> bool:
    for term in (field_selector or "").split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and not key.endswith("!") and key.strip() == "metadata.name" and value.strip() == node:
            return True
    return False


def admit_node_read(node: str, verb: str, rtype: ResourceType, namespace: str, name: str,
                    field_selector: str | None) -> bool | None:
    """For a get, list or watch by node ``node``: True (allowed), None (allowed if the object
    turns out to be assigned to the node: the caller looks), or raises Forbidden."""
    gr = (rtype.group, rtype.plural)
    if gr in _READABLE:
        return True
    if gr == ("setpoint.dev", "nodes"):
        if (name == node) or (not name and _names_itself(field_selector, node)):
            return True
    elif gr == ("coordination.k8s.io", "leases"):
        if namespace == LEASE_NAMESPACE and ((name == node) or (not name and _names_itself(field_selector, node))):
            return True
    elif NODE_FIELD in rtype.selectable_fields:
        if name and verb in ("get", "watch"):
            return None
        if selects_node(field_selector, node):
            return True
    what = rtype.group_resource
    raise Forbidden(
        f'node "{node}" cannot {verb} {what}{f" {name!r}" if name else ""}: a node reads only its own Node and '
        f"Lease and the objects assigned to it (list them with fieldSelector={NODE_FIELD}={node})",
        details_name=name or None, details_kind=rtype.plural, details_group=rtype.group or None,
    )


def assigned_to(obj: dict[str, Any] | None, node: str) -> bool:
    return obj is not None and _assigned(obj) == node


def admit_node_write(
    node: str,
    verb: str,
    rtype: ResourceType,
    namespace: str,
    name: str,
    subresource: str,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None = None,
) -> None:
    """Raise Forbidden unless node ``node`` may do ``verb`` on this object."""
    if rtype.group == "setpoint.dev" and rtype.plural == "nodes":
        if name == node and verb in ("create", "update", "patch"):
            return
    elif rtype.group == "coordination.k8s.io" and rtype.plural == "leases":
        if namespace == LEASE_NAMESPACE and name == node and verb in ("create", "update", "patch"):
            return
    elif rtype.group == "" and rtype.plural == "events":
        if verb in ("create", "update", "patch"):
            return
    elif verb in ("update", "patch") and old is not None and node and _assigned(old) == node:
        if subresource == "status" or (new is not None and _only_own_finalizers_changed(old, new)):
            return
    what = f"{rtype.group_resource}/{subresource}" if subresource else rtype.group_resource
    where = f' in namespace "{namespace}"' if namespace else ""
    raise Forbidden(
        f'node "{node}" cannot {verb} {what} "{name}"{where}: a node may only write its own Node '
        "and Lease, Events, and the status and setpoint.dev/ finalizers of objects assigned to it",
        details_name=name or None, details_kind=rtype.plural, details_group=rtype.group or None,
    )


def _assigned(obj: dict[str, Any]) -> Any:
    spec = obj.get("spec")
    return spec.get("nodeName") if isinstance(spec, dict) else None


def _only_own_finalizers_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """An agent adds and removes its cleanup finalizers (``setpoint.dev/...``); nothing else."""
    def without_finalizers(obj: dict[str, Any]) -> dict[str, Any]:
        # managedFields are compared too: who owns which field is not the node's to rewrite (the
        # server records the node's own changes itself, after this check).
        meta = {k: v for k, v in (obj.get("metadata") or {}).items()
                if k not in ("finalizers", "resourceVersion")}
        rest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        return {"metadata": meta, **rest}

    if without_finalizers(old) != without_finalizers(new):
        return False
    before = set((old.get("metadata") or {}).get("finalizers") or [])
    after = set((new.get("metadata") or {}).get("finalizers") or [])
    return all(f.startswith("setpoint.dev/") for f in before ^ after)
