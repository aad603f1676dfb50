"""Discovery documents: how kubectl and client libraries learn which kinds the server serves."""

from __future__ import annotations

from typing import Any

from setpoint import __version__
from setpoint.server.errors import NotFound
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import Registry, ResourceType

KUBERNETES_MAJOR = "1"
KUBERNETES_MINOR = "34"


def version_info() -> dict[str, Any]:
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": f"v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0+setpoint-{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "cpython",
        "platform": "linux/amd64",
        "setpointVersion": __version__,
    }


def _resource_entries(t: ResourceType) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": t.verbs(),
    }
    if t.short_names:
        entry["shortNames"] = list(t.short_names)
    if t.categories:
        entry["categories"] = list(t.categories)
    out = [entry]
    if t.status_subresource:
        out.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                    "kind": t.kind, "verbs": ["get", "patch", "update"]})
    return out


def _group_doc(group: str, types: list[ResourceType]) -> dict[str, Any]:
    versions: list[str] = []
    preferred = ""
    for t in sorted(types, key=lambda t: (not t.builtin, t.plural)):
        if not preferred:
            preferred = t.storage_version
        for v in t.versions:
            if v not in versions:
                versions.append(v)
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{preferred}", "version": preferred},
    }


def discovery(info: RequestInfo, registry: Registry, server_address: str) -> dict[str, Any]:
    """The document for a non-resource path under /api or /apis; NotFound for anything else."""
    groups = registry.groups()
    if info.api_prefix == "api":
        if not info.version:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": server_address}]}
        if info.version != "v1":
            raise NotFound("the server could not find the requested resource")
        resources = [e for t in sorted(groups.get("", []), key=lambda t: t.plural)
                     for e in _resource_entries(t)]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                "resources": resources}
    if not info.group:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [_group_doc(g, ts) for g, ts in sorted(groups.items()) if g]}
    types = groups.get(info.group)
    if not types:
        raise NotFound("the server could not find the requested resource")
    if not info.version:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(info.group, types)}
    served = [t for t in types if info.version in t.versions]
    if not served:
        raise NotFound("the server could not find the requested resource")
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{info.group}/{info.version}",
            "resources": [e for t in sorted(served, key=lambda t: t.plural) for e in _resource_entries(t)]}
