"""Conditions and convergence, as Kubernetes' ``metav1.Condition`` conventions define them.

``lastTransitionTime`` changes only when a condition's status changes, so it tells how long an
object has been in its state; reason and message may be refreshed without moving it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from setpoint.types import Object


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Kubernetes' MicroTime, used by Leases and Events."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def get_condition(status: Object | None, type_: str) -> Object | None:
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == type_:
            return cond
    return None


def set_condition(
    status: Object,
    type_: str,
    value: bool | str,
    *,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
) -> bool:
    """Set a condition in ``status`` (in place); True if anything changed."""
    text = ("True" if value else "False") if isinstance(value, bool) else value
    conditions = status.setdefault("conditions", [])
    current = get_condition(status, type_)
    new: Object = {"type": type_, "status": text, "reason": reason, "message": message}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    if current is None:
        new["lastTransitionTime"] = now_rfc3339()
        conditions.append(new)
        return True
    new["lastTransitionTime"] = (
        current.get("lastTransitionTime") or now_rfc3339() if current.get("status") == text else now_rfc3339()
    )
    if all(current.get(k) == v for k, v in new.items()):
        return False
    current.clear()
    current.update(new)
    return True


def is_true(obj: Object, type_: str) -> bool:
    cond = get_condition(obj.get("status"), type_)
    return cond is not None and cond.get("status") == "True"


def is_converged(obj: Object) -> bool:
    """Desired state reached: the agent has seen this generation and says Ready."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    return status.get("observedGeneration") == generation and is_true(obj, "Ready")
