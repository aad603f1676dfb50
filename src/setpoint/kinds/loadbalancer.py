"""LoadBalancer: a balancer on a node (HAProxy or Envoy) kept serving exactly the backends a
selector chooses, the way the source material's Nitrox kept a NetScaler in step with a cluster."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Condition, Kind, LabelSelector, NonEmpty

_OBJECT_DEFAULT = Meta(extra_json_schema={"default": {}})


class HealthCheck(msgspec.Struct, kw_only=True, omit_defaults=True):
    path: Annotated[str, Meta(description=(
        "HTTP path to check (mode http); without it a TCP connect is the check."))] | UnsetType = UNSET
    intervalSeconds: Annotated[float, Meta(ge=0.1)] = 2
    rise: Annotated[int, Meta(ge=1)] = 1
    fall: Annotated[int, Meta(ge=1)] = 2


class Timeouts(msgspec.Struct, kw_only=True, omit_defaults=True):
    connectSeconds: Annotated[float, Meta(ge=0.001)] = 5
    clientSeconds: Annotated[float, Meta(ge=0.001)] = 30
    serverSeconds: Annotated[float, Meta(ge=0.001)] = 30


class Frontend(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where clients connect. Changing it restarts the balancer process."""

    address: NonEmpty = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)]
    mode: Literal["http", "tcp"] = "http"
    balance: Literal["roundrobin", "leastconn", "random"] = "roundrobin"
    healthCheck: Annotated[HealthCheck, _OBJECT_DEFAULT] = msgspec.field(default_factory=HealthCheck)
    timeouts: Annotated[Timeouts, _OBJECT_DEFAULT] = msgspec.field(default_factory=Timeouts)
    retries: Annotated[int, Meta(ge=0, description=(
        "Attempts on another backend after a connection failure or an empty answer (a backend that "
        "just started or is stopping), before the client sees an error."))] = 3


class Backends(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The backends: the ready endpoints of the EndpointSlices in this namespace that the selector
    matches (setpoint writes one per ProcessSet port, labelled like the ProcessSet), or of another
    Kubernetes-API server's when kubeconfig is set."""

    selector: LabelSelector
    portName: Annotated[str, Meta(description="The EndpointSlice port to use (default the first).")] | UnsetType = UNSET
    kubeconfig: Annotated[str, Meta(description=(
        "Path, on the balancer's node, of a kubeconfig for another Kubernetes-API server whose "
        "EndpointSlices to follow (an external cluster, or another setpoint)."))] | UnsetType = UNSET
    namespace: Annotated[str, Meta(description=(
        "With kubeconfig, the namespace to read there (default this object's)."))] | UnsetType = UNSET
    drainSeconds: Annotated[float, Meta(ge=0, description=(
        "How long a removed backend may finish its connections before it is cut."))] = 10


class LoadBalancerSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    nodeName: Annotated[str, Meta(min_length=1, description="The node whose agent runs the balancer.")]
    driver: Annotated[Literal["haproxy", "envoy"], Meta(description=(
        "haproxy (runtime API on its admin socket) or envoy (file-based xDS)."))] = "haproxy"
    frontend: Frontend
    backends: Backends


class BackendStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | UnsetType = UNSET
    address: str | UnsetType = UNSET
    port: int | UnsetType = UNSET
    state: str | UnsetType = UNSET


class LoadBalancerStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    observedGeneration: int | UnsetType = UNSET
    inService: int | UnsetType = UNSET
    backends: list[BackendStatus] | UnsetType = UNSET
    lastSyncRevision: Annotated[str, Meta(description=(
        "The resourceVersion of the EndpointSlices the last complete sync applied."))] | UnsetType = UNSET
    lastSyncTime: str | UnsetType = UNSET
    pid: Annotated[int, Meta(description="The balancer process's pid on its node.")] | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


class LoadBalancer(Kind, kw_only=True, omit_defaults=True):
    """A load balancer on a node, kept serving exactly the backends its selector chooses: every
    sync is complete (the whole set, not a delta) and changes only what differs, at runtime."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group="setpoint.dev", short_names=("lb",), categories=("setpoint",), selectable_fields=(".spec.nodeName",),
        printer_columns=(("Driver", "string", ".spec.driver"), ("Port", "integer", ".spec.frontend.port"),
                         ("Backends", "integer", ".status.inService"),
                         ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
                         ("Node", "string", ".spec.nodeName"), ("Age", "date", ".metadata.creationTimestamp")))
    spec: LoadBalancerSpec
    status: LoadBalancerStatus | UnsetType = UNSET
