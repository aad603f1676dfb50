"""Node: a machine a node agent runs on; the agent registers it and keeps its status alive."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Kind


class NodeSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    unschedulable: Annotated[bool, Meta(description="No new work is assigned to this node while true.")] = False


class Transfer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How desired state reaches the agent, reported every few heartbeats."""

    transport: str | UnsetType = UNSET
    revision: Annotated[str, Meta(description="The oldest revision its informers have seen.")] | UnsetType = UNSET
    informers: dict[str, str] | UnsetType = UNSET
    queueDepth: Annotated[int, Meta(description="Keys waiting in its work queues.")] | UnsetType = UNSET
    reportedAt: str | UnsetType = UNSET


class NodeCondition(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Ready while the agent's heartbeats arrive; a node's conditions carry the last heartbeat's time."""

    type: str
    status: str
    reason: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    lastTransitionTime: str | UnsetType = UNSET
    lastHeartbeatTime: str | UnsetType = UNSET


class NodeStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    agentVersion: str | UnsetType = UNSET
    transfer: Transfer | UnsetType = UNSET
    hostname: str | UnsetType = UNSET
    addresses: list[str] | UnsetType = UNSET
    capacity: dict[str, int] | UnsetType = UNSET
    conditions: list[NodeCondition] | UnsetType = UNSET


class Node(Kind, kw_only=True, omit_defaults=True):
    """A machine where a node agent runs the work assigned to it."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group="setpoint.dev", namespaced=False, short_names=("no",), categories=("setpoint",),
        printer_columns=(("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
                         ("Agent", "string", ".status.agentVersion"),
                         ("Age", "date", ".metadata.creationTimestamp")))
    spec: NodeSpec = msgspec.field(default_factory=NodeSpec)
    status: NodeStatus | UnsetType = UNSET
