"""Node restriction: an agent's credentials can only touch its own node's business.

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
