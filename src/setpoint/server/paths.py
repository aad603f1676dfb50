"""Request paths to request attributes, the way Kubernetes' RequestInfoFactory reads them.

Authorization, metrics and the handlers all need the same reading of a URL, so it happens once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


class RequestInfo(NamedTuple):
    """What the URL and method say, and nothing else: who asks and how a write is to be done
    travel beside it (``server/handlers/options.py``). Immutable; a tuple because one is made
    for every request and a frozen dataclass costs twice as much to build."""

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
    """The request's attributes; the same (method, path) reads the same every time, so the hot
    ones (a collection many clients create in) are read once."""
    return _parse(method, path, _truthy(query.get("watch")))


@functools.lru_cache(maxsize=4096)
def _parse(method: str, path: str, watch: bool) -> RequestInfo:
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
        path=path, verb=_verb(method, name, watch_path or watch),
        resource_request=True, api_prefix=api_prefix, group=group, version=version,
        namespace=namespace, resource=resource, name=name, subresource=subresource, parts=tuple(rest),
    )
