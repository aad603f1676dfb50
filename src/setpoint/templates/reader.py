"""What a template reads, and the record of it: every function a template calls reads the
informers' caches (never the API) and notes what it read, so that the engine re-renders a
template when, and only when, something it read changed."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from setpoint.agent.informer import Informer
from setpoint.client import Client, Resource
from setpoint.templates.resolve import CONFIGMAPS, ENDPOINTSLICES, SERVICE_NAME_LABEL, resource
from setpoint.types import Object

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Dependency:
    """One read: an object by name, or the objects of a kind matching labels (``selector``)."""

    resource: Resource
    namespace: str | None  # None: every namespace
    name: str | None = None
    selector: Labels | None = None

    def matches(self, obj: Object) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and self.resource.namespaced and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None:
            return bool(meta.get("name") == self.name)
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in self.selector or ())


class NeedSync(Exception):
    """A kind read for the first time: its informer must list before the template renders."""

    def __init__(self, informer: Informer) -> None:
        super().__init__(f"waiting for the first list of {informer.resource.plural}")
        self.informer = informer


class Caches:
    """Informers shared by every template of an engine, one per kind (all namespaces), started
    on first use and kept: a burst of changes to thousands of objects costs no request."""

    def __init__(self, client: Client, on_change: Callable[[Resource, Object, Object | None], None]) -> None:
        self.client = client
        self.on_change = on_change
        self._informers: dict[Resource, Informer] = {}

    def informer(self, res: Resource) -> Informer:
        inf = self._informers.get(res)
        if inf is None:
            inf = self._informers[res] = Informer(self.client, res)
            informer = inf

            def changed(obj: Object, old: Object | None = None) -> None:
                # The first list's adds are not changes: the render that asked for the kind
                # waits for that list and reads it whole.
                if informer.has_synced:
                    self.on_change(res, obj, old)

            inf.add_handler(on_add=changed, on_update=lambda old, new: changed(new, old), on_delete=changed)
            inf.start()
        return inf

    async def stop(self) -> None:
        for inf in self._informers.values():
            await inf.stop()


def tojson(value: Any, indent: int | None = None) -> str:
    """JSON as a configuration file wants it (Jinja's own ``tojson`` escapes for HTML)."""
    return json.dumps(value, indent=indent, sort_keys=True, default=str)


def toyaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False)


def b64decode(value: str) -> str:
    return base64.b64decode(value).decode()


FILTERS: dict[str, Callable[..., Any]] = {"tojson": tojson, "toyaml": toyaml, "b64decode": b64decode}


class Reader:
    """The functions of one render, reading ``caches`` with ``namespace`` as the default."""

    def __init__(self, caches: Caches, namespace: str) -> None:
        self.caches = caches
        self.namespace = namespace
        self.deps: set[Dependency] = set()
        self.revision = 0  # the newest resourceVersion among what was read

    def _synced(self, res: Resource) -> Informer:
        inf = self.caches.informer(res)
        if not inf.has_synced:
            raise NeedSync(inf)
        return inf

    def _seen(self, objs: list[Object]) -> list[Object]:
        for o in objs:
            rv = str((o.get("metadata") or {}).get("resourceVersion", ""))
            if rv.isdigit():
                self.revision = max(self.revision, int(rv))
        return objs

    def _ns(self, res: Resource, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if res.namespaced else None

    def get(self, kind: str, name: str, namespace: str | None = None) -> Object | None:
        """One object by name, or None when there is none."""
        res = resource(kind)
        ns = self._ns(res, namespace)
        self.deps.add(Dependency(res, ns, name=name))
        obj = self._synced(res).get(f"{ns}/{name}" if ns else name)
        return self._seen([obj])[0] if obj is not None else None

    def objects(self, kind: str, selector: dict[str, str] | None = None, namespace: str | None = None,
                all_namespaces: bool = False) -> list[Object]:
        """The objects of a kind with these labels, sorted by namespace and name."""
        res = resource(kind)
        ns = None if all_namespaces else self._ns(res, namespace)
        dep = Dependency(res, ns, selector=tuple(sorted((selector or {}).items())))
        self.deps.add(dep)
        found = [o for o in self._synced(res).list() if dep.matches(o)]
        found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return self._seen(found)

    def endpoints(self, service: str, namespace: str | None = None, ready_only: bool = True) -> list[dict[str, Any]]:
        """The endpoints of a ProcessSet (or of a Service): address, port, node, ready, sorted.
        From EndpointSlices, as load balancers read them."""
        out: list[dict[str, Any]] = []
        for s in self.objects("endpointslices", {SERVICE_NAME_LABEL: service}, namespace):
            ports = [p for p in s.get("ports") or [] if isinstance(p, dict)]
            for ep in s.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False and not cond.get("terminating")
                if ready_only and not ready:
                    continue
                for address in ep.get("addresses") or []:
                    for p in ports:
                        out.append({"address": address, "port": p.get("port"), "name": p.get("name", ""),
                                    "node": ep.get("nodeName", ""), "ready": ready})
        out.sort(key=lambda e: (str(e["address"]), int(e["port"] or 0)))
        return out

    def configmap(self, name: str, namespace: str | None = None) -> dict[str, str]:
        """A ConfigMap's ``data`` (empty when there is no such ConfigMap)."""
        cm = self.get("configmaps", name, namespace)
        return dict((cm or {}).get("data") or {})

    def functions(self) -> dict[str, Any]:
        return {"get": self.get, "objects": self.objects, "endpoints": self.endpoints,
                "configmap": self.configmap, "namespace": self.namespace}


__all__ = ["CONFIGMAPS", "ENDPOINTSLICES", "FILTERS", "Caches", "Dependency", "NeedSync", "Reader"]
