"""Content negotiation: which representation a client asked for in its Accept header.

Kubernetes clients ask for alternative representations of the same resource through media type
parameters: ``application/json;as=Table;v=v1;g=meta.k8s.io`` (kubectl's tables),
``application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io`` (metadata-only clients),
``application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`` (aggregated discovery).
A plain ``application/json`` request (every controller and agent) never reaches the parser: the
caller checks for ``as=`` first, so the common path pays one substring search.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

META_GROUP = "meta.k8s.io"
DISCOVERY_GROUP = "apidiscovery.k8s.io"

TABLE = "Table"
GROUP_DISCOVERY_LIST = "APIGroupDiscoveryList"

DISCOVERY_V2_MEDIA = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


@dataclass(frozen=True, slots=True)
class Target:
    """One alternative representation: ``as`` (kind), ``g`` (group) and ``v`` (version)."""

    kind: str
    group: str
    version: str


@lru_cache(maxsize=256)
def targets(accept: str) -> tuple[Target, ...]:
    """The ``as=`` representations of an Accept header, most preferred first (header order; the
    q-values clients send for these are all equal). Cached: clients send a handful of headers."""
    out: list[Target] = []
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        if parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        params = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip()] = v.strip()
        if "as" in params:
            out.append(Target(params["as"], params.get("g", ""), params.get("v", "")))
    return tuple(out)


def table_version(accept: str | None) -> str | None:
    """``v1`` or ``v1beta1`` when the client asked for a Table of meta.k8s.io, else None."""
    if not accept or "as=" not in accept:
        return None
    for t in targets(accept):
        if t.kind == TABLE and t.group == META_GROUP and t.version in ("v1", "v1beta1"):
            return t.version
    return None


def wants_aggregated_discovery(accept: str | None) -> bool:
    if not accept or "as=" not in accept:
        return False
    return any(t.kind == GROUP_DISCOVERY_LIST and t.group == DISCOVERY_GROUP and t.version == "v2"
               for t in targets(accept))
