"""Request paths to request attributes, the way Kubernetes' RequestInfoFactory reads them.

Authorization, metrics and the handlers all need the same reading of a URL, so it happens once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the URL and method say, and nothing else: who asks and how a write is to be done
    travel beside it (``server/handlers/options.py``)."""

    path: str
    verb: str
    resource_request: bool = False
    api_prefix: str = ""  # "api" or "apis"
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    name: str = ""
    subresource: str = ""
    parts: tuple[str, ...] = ()


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _verb(method: str, name: str, watch: bool) -> str:
    m = method.upper()
    if m == "GET" or m == "HEAD":
        return "watch" if watch else "get" if name else "list"
    if m == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(m, method.lower())


def parse_request(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    segments = [s for s in path.split("/") if s]
    verb = method.lower()
    if not segments or segments[0] not in ("api", "apis"):
        return RequestInfo(path=path, verb=verb)
    api_prefix = segments[0]
    rest = segments[1:]
    group = version = ""
    if api_prefix == "api":
        if not rest:
            return RequestInfo(path=path, verb=verb, api_prefix=api_prefix)
        version, rest = rest[0], rest[1:]
    else:
        if len(rest) < 2:
            return RequestInfo(path=path, verb=verb, api_prefix=api_prefix, group=rest[0] if rest else "")
        group, version, rest = rest[0], rest[1], rest[2:]
    if not rest:
        return RequestInfo(path=path, verb=verb, api_prefix=api_prefix, group=group, version=version)
    watch_path = False
    if rest[0] == "watch":  # deprecated /watch/ paths still used by old clients
        watch_path = True
        rest = rest[1:]
    namespace = resource = name = subresource = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
        else:
            resource = "namespaces"
            name = rest[1]
            subresource = rest[2] if len(rest) > 2 else ""
            rest = []
    if rest:
        resource = rest[0]
        if len(rest) > 1:
            name = rest[1]
        if len(rest) > 2:
            subresource = rest[2]
    return RequestInfo(
        path=path, verb=_verb(method, name, watch_path or _truthy(query.get("watch"))),
        resource_request=True, api_prefix=api_prefix, group=group, version=version,
        namespace=namespace, resource=resource, name=name, subresource=subresource, parts=tuple(rest),
    )
