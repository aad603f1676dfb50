"""The ``scale`` subresource of kinds whose CRD declares ``subresources.scale``: an
``autoscaling/v1`` Scale view of the object, so ``kubectl scale`` (and autoscalers) can change
the replica count without knowing the kind's schema.

The CRD names where the counts live (``specReplicasPath``, ``statusReplicasPath``, optionally
``labelSelectorPath``), as simple dotted paths from the object's root; kube-apiserver accepts
only paths under ``.spec`` for the first and under ``.status`` for the others, and so does this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCALE_KIND = "Scale"
SCALE_API_VERSION = "autoscaling/v1"


@dataclass(frozen=True)
class ScaleSpec:
    spec_replicas: tuple[str, ...]
    status_replicas: tuple[str, ...]
    label_selector: tuple[str, ...] | None = None


def parse(sub: Any, where: str) -> tuple[ScaleSpec | None, list[tuple[str, str]]]:
    """A CRD version's ``subresources.scale`` and the errors in it as (field, message)."""
    if not isinstance(sub, dict):
        return None, [(where, "Invalid value: must be an object")]
    errors: list[tuple[str, str]] = []

    def path(name: str, under: str, required: bool) -> tuple[str, ...] | None:
        value = sub.get(name)
        if value is None:
            if required:
                errors.append((f"{where}.{name}", "Required value"))
            return None
        if not isinstance(value, str) or not value.startswith(f".{under}.") or ".." in value or \
                value.endswith(".") or any(c in value for c in "[]*\\"):
            errors.append((f"{where}.{name}",
                           f"Invalid value: {value!r}: should be a json path under .{under}"))
            return None
        return tuple(value[1:].split("."))

    spec = path("specReplicasPath", "spec", True)
    status = path("statusReplicasPath", "status", True)
    selector = path("labelSelectorPath", "status", False) if sub.get("labelSelectorPath") is not None else None
    if errors or spec is None or status is None:
        return None, errors
    return ScaleSpec(spec, status, selector), []


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def to_scale(obj: dict[str, Any], spec: ScaleSpec) -> dict[str, Any]:
    """The Scale view of ``obj`` (its metadata's identity and resourceVersion included, so that a
    client can send it back as an optimistic-concurrency guard)."""
    meta = obj.get("metadata") or {}
    replicas = _get(obj, spec.spec_replicas)
    status_replicas = _get(obj, spec.status_replicas)
    status: dict[str, Any] = {"replicas": status_replicas if _is_count(status_replicas) else 0}
    if spec.label_selector is not None:
        selector = _get(obj, spec.label_selector)
        if isinstance(selector, str):
            status["selector"] = selector
    out_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta}
    return {"kind": SCALE_KIND, "apiVersion": SCALE_API_VERSION, "metadata": out_meta,
            "spec": {"replicas": replicas if _is_count(replicas) else 0}, "status": status}


def with_replicas(obj: dict[str, Any], spec: ScaleSpec, replicas: int) -> dict[str, Any]:
    target = obj
    for part in spec.spec_replicas[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[spec.spec_replicas[-1]] = replicas
    return obj


def replicas_of(scale: Any) -> tuple[int | None, str]:
    """``spec.replicas`` of a Scale sent by a client, or None and why it is not acceptable."""
    if not isinstance(scale, dict):
        return None, "the body must be a Scale object"
    spec = scale.get("spec")
    value = spec.get("replicas") if isinstance(spec, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None, f"Invalid value: {value!r}: must be an integer greater than or equal to 0"
    return value, ""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
