"""Kind names as templates write them: ``processsets``, ``ProcessSet``, ``ps``, or for any other
kind ``PLURAL.GROUP/VERSION`` (``widgets.example.com/v1``). Resolved without asking the server,
so that a template means the same thing whatever the server's discovery says at render time."""

from __future__ import annotations

from setpoint.client import Resource

_KNOWN = [
    (Resource("", "v1", "configmaps", kind="ConfigMap"), ("cm",)),
    (Resource("", "v1", "secrets", kind="Secret"), ()),
    (Resource("", "v1", "services", kind="Service"), ("svc",)),
    (Resource("", "v1", "namespaces", namespaced=False, kind="Namespace"), ("ns",)),
    (Resource("", "v1", "events", kind="Event"), ("ev",)),
    (Resource("discovery.k8s.io", "v1", "endpointslices", kind="EndpointSlice"), ()),
    (Resource("setpoint.dev", "v1alpha1", "processsets", kind="ProcessSet"), ("ps",)),
    (Resource("setpoint.dev", "v1alpha1", "loadbalancers", kind="LoadBalancer"), ("lb",)),
    (Resource("setpoint.dev", "v1alpha1", "templates", kind="Template"), ()),
    (Resource("setpoint.dev", "v1alpha1", "nodes", namespaced=False, kind="Node"), ()),
]
_BY_NAME: dict[str, Resource] = {}
for _r, _short in _KNOWN:
    for _n in (_r.plural, _r.kind.lower(), _r.plural.removesuffix("s"), *_short):
        _BY_NAME[_n] = _r
    if _r.group:
        _BY_NAME[f"{_r.plural}.{_r.group}"] = _r

ENDPOINTSLICES = _BY_NAME["endpointslices"]
CONFIGMAPS = _BY_NAME["configmaps"]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class UnknownKind(ValueError):
    pass


def resource(name: str, namespaced: bool = True) -> Resource:
    """The Resource a template means by ``name``."""
    r = _BY_NAME.get(name.lower()) if "/" not in name else None
    if r is not None:
        return r
    qualified, _, version = name.partition("/")
    plural, _, group = qualified.partition(".")
    if version and plural and group:
        return Resource(group, version, plural, namespaced=namespaced)
    raise UnknownKind(f"unknown kind {name!r}: use a built-in name (processsets, configmaps, services, "
                      f"endpointslices, ...) or PLURAL.GROUP/VERSION")
