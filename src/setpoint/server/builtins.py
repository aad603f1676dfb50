"""The kinds every setpoint server has (core/v1 Namespace, Event and Secret, Lease, and
CustomResourceDefinition), each with its schema and its strategy; setpoint's own kinds are CRDs
(``setpoint/crds/``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from setpoint.server.resources import CRD_GROUP, ResourceType, Validator
from setpoint.server.strategies.crd import CRDStrategy
from setpoint.server.strategies.namespace import NamespaceStrategy
from setpoint.server.strategies.secret import SecretStrategy

_STR = {"type": "string"}
_INT = {"type": "integer"}
_STRINGS = {"type": "array", "items": _STR}
# Built-in kinds get schemas for the fields setpoint itself reads; everything else is kept as sent.
BUILTIN_SCHEMAS: dict[str, dict[str, Any]] = {
    "namespaces": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "spec": {"type": "object", "properties": {"finalizers": _STRINGS}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                       "properties": {"phase": _STR}},
        },
    },
    "leases": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {
                                    "holderIdentity": {**_STR, "nullable": True},
                                    "leaseDurationSeconds": {**_INT, "nullable": True},
                                    "acquireTime": {**_STR, "nullable": True},
                                    "renewTime": {**_STR, "nullable": True},
                                    "leaseTransitions": {**_INT, "nullable": True},
                                }}},
    },
    "events": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "involvedObject": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "reason": _STR, "message": _STR, "type": _STR, "count": _INT,
        },
    },
    "secrets": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"type": _STR, "immutable": {"type": "boolean"},
                       "data": {"type": "object", "additionalProperties": _STR},
                       "stringData": {"type": "object", "additionalProperties": _STR}},
    },
    "configmaps": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"data": {"type": "object", "additionalProperties": _STR},
                       "binaryData": {"type": "object", "additionalProperties": _STR},
                       "immutable": {"type": "boolean"}},
    },
    "services": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {"selector": {"type": "object", "additionalProperties": _STR},
                                               "type": _STR}},
                       "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    },
    "endpointslices": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "required": ["addressType"],
        "properties": {
            "addressType": {"type": "string", "enum": ["IPv4", "IPv6", "FQDN"]},
            "endpoints": {"type": "array", "items": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True, "required": ["addresses"],
                "properties": {"addresses": {**_STRINGS, "minItems": 1, "maxItems": 100},
                               "nodeName": _STR, "hostname": _STR,
                               "conditions": {"type": "object", "properties": {
                                   "ready": {"type": "boolean", "nullable": True},
                                   "serving": {"type": "boolean", "nullable": True},
                                   "terminating": {"type": "boolean", "nullable": True}}}}}},
            "ports": {"type": "array", "items": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"name": _STR, "port": {**_INT, "minimum": 1, "maximum": 65535},
                               "protocol": _STR, "appProtocol": _STR}}},
        },
    },
    "customresourcedefinitions": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                       "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    },
}


# kubectl describe finds an object's Events with these (Kubernetes' event field selectors).
EVENT_FIELDS = frozenset({
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
})


def builtin_types(compile_schema: Callable[[dict[str, Any]], Validator] | None = None) -> list[ResourceType]:
    types = _builtin_types()
    if compile_schema is not None:
        for t in types:
            schema = BUILTIN_SCHEMAS.get(t.plural)
            if schema is not None:
                t.validators[t.storage_version] = compile_schema(schema)
                t.schemas[t.storage_version] = schema
    return types


def _builtin_types() -> list[ResourceType]:
    return [
        ResourceType(
            group="", versions=("v1",), kind="Namespace", plural="namespaces", singular="namespace",
            namespaced=False, short_names=("ns",), status_subresource=True, name_is_label=True,
            strategy=NamespaceStrategy(),
        ),
        ResourceType(
            group="", versions=("v1",), kind="Event", plural="events", singular="event",
            namespaced=True, short_names=("ev",), allow_create_on_update=True,
            selectable_fields=EVENT_FIELDS,
        ),
        ResourceType(
            group="", versions=("v1",), kind="Secret", plural="secrets", singular="secret", namespaced=True,
            strategy=SecretStrategy(),
        ),
        ResourceType(
            group="", versions=("v1",), kind="ConfigMap", plural="configmaps", singular="configmap",
            namespaced=True, short_names=("cm",),
        ),
        ResourceType(
            group="", versions=("v1",), kind="Service", plural="services", singular="service",
            namespaced=True, short_names=("svc",), categories=("all",), status_subresource=True,
        ),
        ResourceType(
            group="discovery.k8s.io", versions=("v1",), kind="EndpointSlice", plural="endpointslices",
            singular="endpointslice", namespaced=True,
        ),
        ResourceType(
            group="coordination.k8s.io", versions=("v1",), kind="Lease", plural="leases",
            singular="lease", namespaced=True, allow_create_on_update=True,
        ),
        ResourceType(
            group=CRD_GROUP, versions=("v1",), kind="CustomResourceDefinition",
            plural="customresourcedefinitions", singular="customresourcedefinition",
            namespaced=False, short_names=("crd", "crds"), categories=("api-extensions",),
            status_subresource=True, allow_unconditional_update=False, strategy=CRDStrategy(),
        ),
    ]
