"""CustomResourceDefinitions: their status is the server's (accepted names, stored versions,
conditions), and a stored CRD is a served kind. The conversion of a CRD into a resource type
runs once per write: ``validate`` does it (a CRD that cannot be served is refused naming the
field) and ``after_write`` installs the result; the watch cache's hook then finds the registry
already at that revision and does not convert again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from setpoint.server.errors import APIError
from setpoint.server.objects import now
from setpoint.server.resources import ResourceType, resource_type_from_crd
from setpoint.server.schema import compile_schema
from setpoint.server.strategies.base import Strategy

if TYPE_CHECKING:
    from setpoint.server.resources import Registry

log = logging.getLogger(__name__)


def crd_status(spec: Any) -> dict[str, Any] | None:
    """A new CRD's status: its names accepted and established at once (there is no conflict
    check to wait for)."""
    if not isinstance(spec, dict):
        return None  # validation names the field
    names = spec.get("names")
    names = dict(names) if isinstance(names, dict) else {}
    if isinstance(names.get("kind"), str) and names["kind"]:
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    ts = now()
    versions = spec.get("versions")
    versions = versions if isinstance(versions, list) else []
    return {
        "acceptedNames": names,
        "storedVersions": [v.get("name") for v in versions if isinstance(v, dict) and v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": ts},
        ],
    }


def install(registry: Registry, event: str, obj: dict[str, Any], rtype: ResourceType | None = None) -> None:
    """Bring the registry in step with a stored CRD (``rtype``: its conversion, when known)."""
    meta = obj["metadata"]
    name = meta["name"]
    if event == "DELETED":
        registry.remove_crd(name)
        return
    revision = str(meta.get("resourceVersion", ""))
    if rtype is None:
        if revision and registry.crd_revision(name) == revision:
            return  # installed by the write that made this revision
        try:
            rtype = resource_type_from_crd(obj, compile_schema)
        except APIError as e:
            log.error("stored CustomResourceDefinition %s is not servable: %s", name, e.message)
            return
    registry.put_crd(name, rtype, revision)


class CRDStrategy(Strategy):
    def prepare_create(self, obj: dict[str, Any]) -> None:
        status = crd_status(obj.get("spec"))
        if status is not None:
            obj["status"] = status

    def validate(self, obj: dict[str, Any]) -> ResourceType:
        return resource_type_from_crd(obj, compile_schema)  # raises Invalid naming the field

    def after_write(self, registry: Registry, event: str, obj: dict[str, Any], derived: Any) -> None:
        install(registry, event, obj, derived if isinstance(derived, ResourceType) else None)
