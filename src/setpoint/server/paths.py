"""Request paths to request attributes, the way Kubernetes' RequestInfoFactory reads them.

Authorization, metrics and the handlers all need the same reading of a URL, so it happens once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(slots=True)
class RequestInfo:
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
    user: Any = None  # the authenticated user, once known
    field_validation: str = ""  # fieldValidation: Ignore, Warn or Strict ("" when not given)
    field_manager: str = ""  # fieldManager, or one derived from the User-Agent where needed
    warnings: list[str] | None = None  # sent back as Warning headers
    user_agent: str = ""  # for the default field manager of tracked writes
    apply: bool = False  # a server-side apply: it sets managedFields itself


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def parse_request(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    segments = [s for s in path.split("/") if s]
    info = RequestInfo(path=path, verb=method.lower())
    if not segments or segments[0] not in ("api", "apis"):
        return info
    info.api_prefix = segments[0]
    rest = segments[1:]
    if info.api_prefix == "api":
        if not rest:
            return info
        info.version, rest = rest[0], rest[1:]
    else:
        if len(rest) < 2:
            if rest:
                info.group = rest[0]
            return info
        info.group, info.version, rest = rest[0], rest[1], rest[2:]
    if not rest:
        return info
    info.resource_request = True
    watch_path = False
    if rest[0] == "watch":  # deprecated /watch/ paths still used by old clients
        watch_path = True
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        info.namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
        else:
            info.resource = "namespaces"
            info.name = rest[1]
            info.subresource = rest[2] if len(rest) > 2 else ""
            rest = []
    if rest:
        info.resource = rest[0]
        if len(rest) > 1:
            info.name = rest[1]
        if len(rest) > 2:
            info.subresource = rest[2]
    info.parts = tuple(rest)
    m = method.upper()
    if m == "GET" or m == "HEAD":
        if watch_path or _truthy(query.get("watch")):
            info.verb = "watch"
        elif info.name:
            info.verb = "get"
        else:
            info.verb = "list"
    elif m == "POST":
        info.verb = "create"
    elif m == "PUT":
        info.verb = "update"
    elif m == "PATCH":
        info.verb = "patch"
    elif m == "DELETE":
        info.verb = "delete" if info.name else "deletecollection"
    return info
