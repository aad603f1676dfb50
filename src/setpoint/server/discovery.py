"""Discovery documents: how kubectl and client libraries learn which kinds the server serves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from setpoint import __version__
from setpoint.server.errors import NotFound
from setpoint.server.objects import encode
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
    if t.scale is not None:
        out.append({"name": f"{t.plural}/scale", "singularName": "", "namespaced": t.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
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


def _aggregated_resource(t: ResourceType, version: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": version, "kind": t.kind},
        "scope": "Namespaced" if t.namespaced else "Cluster",
        "singularResource": t.singular,
        "verbs": t.verbs(),
    }
    if t.short_names:
        entry["shortNames"] = list(t.short_names)
    if t.categories:
        entry["categories"] = list(t.categories)
    subresources = []
    if t.status_subresource:
        subresources.append({
            "subresource": "status",
            "responseKind": {"group": t.group, "version": version, "kind": t.kind},
            "verbs": ["get", "patch", "update"],
        })
    if t.scale is not None:
        subresources.append({
            "subresource": "scale",
            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
            "verbs": ["get", "patch", "update"],
        })
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated_discovery(registry: Registry, legacy: bool) -> dict[str, Any]:
    """The apidiscovery.k8s.io/v2 APIGroupDiscoveryList for /api (``legacy``) or /apis: every
    group, version and resource in one response, so a client needs one request, not one per
    group-version."""
    items: list[dict[str, Any]] = []
    for group, types in sorted(registry.groups().items()):
        if (group == "") != legacy:
            continue
        doc = _group_doc(group, types)
        versions = [v["version"] for v in doc["versions"]]
        preferred = doc["preferredVersion"]["version"]
        versions.sort(key=lambda v: v != preferred)
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [{
                "version": v,
                "resources": [_aggregated_resource(t, v)
                              for t in sorted(types, key=lambda t: t.plural) if v in t.versions],
                "freshness": "Current",
            } for v in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items}


class DiscoveryCache:
    """Encoded discovery documents, rebuilt when the registry changes (a CRD is written), not
    on every request: kubectl fetches discovery before nearly every command."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._docs: dict[tuple[str, ...], bytes] = {}

    def get(self, key: tuple[str, ...], build: Callable[[], dict[str, Any]]) -> bytes:
        if self._generation != self.registry.generation:
            self._docs = {}
            self._generation = self.registry.generation
        doc = self._docs.get(key)
        if doc is None:
            doc = self._docs[key] = encode(build())
        return doc


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
