"""Stack: objects of any kind created in the order their references require, like a Terraform
configuration, and removed dependents first."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Condition, Kind

# Objects of any kind, and parameters of any shape: kept as the user wrote them.
AnyObject = Annotated[dict[str, Any], Meta(extra_json_schema={"x-kubernetes-preserve-unknown-fields": True})]


class StackResource(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: Annotated[str, Meta(pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    template: Annotated[AnyObject, Meta(description=(
        "A whole object (apiVersion, kind, metadata.name, ...); references are filled in."))]
    dependsOn: list[str] | UnsetType = UNSET


class StackSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    parameters: AnyObject | UnsetType = UNSET
    resources: list[StackResource]
    outputs: dict[str, str] | UnsetType = UNSET
    parallelism: Annotated[int, Meta(ge=1, description="How many resources may be created or changed at once.")] = 16


class StackResourceStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | UnsetType = UNSET
    apiVersion: str | UnsetType = UNSET
    kind: str | UnsetType = UNSET
    objectName: str | UnsetType = UNSET
    phase: str | UnsetType = UNSET
    message: str | UnsetType = UNSET


class StackStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    observedGeneration: int | UnsetType = UNSET
    readyResources: int | UnsetType = UNSET
    resources: list[StackResourceStatus] | UnsetType = UNSET
    outputs: AnyObject | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


class Stack(Kind, kw_only=True, omit_defaults=True):
    """Objects of any kind created as a dependency graph: each resource as soon as what it refers
    to (${resources.NAME.PATH}, ${parameters.NAME}) and what it dependsOn is converged; deleted
    dependents first when the Stack is."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group="setpoint.dev", categories=("setpoint",),
        printer_columns=(("Resources", "integer", ".status.readyResources"),
                         ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
                         ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason'),
                         ("Age", "date", ".metadata.creationTimestamp")))
    spec: StackSpec
    status: StackStatus | UnsetType = UNSET
