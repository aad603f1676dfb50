"""Template: a file a node agent renders from setpoint objects and keeps up to date, with a
command run when its content changes (consul-template's habit, on setpoint's store)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Condition, Kind, NonEmpty


class ConfigMapKeyRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: NonEmpty
    key: NonEmpty


class TemplateSource(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The template, inline or from a ConfigMap in this namespace (a change to it renders again)."""

    inline: str | UnsetType = UNSET
    configMapRef: ConfigMapKeyRef | UnsetType = UNSET


class Wait(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Render once changes have been quiet for minSeconds, and no later than maxSeconds after the
    first of them (0: no bound): a burst of changes is one render."""

    minSeconds: Annotated[float, Meta(ge=0)] = 0
    maxSeconds: Annotated[float, Meta(ge=0)] = 0


class TemplateSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    nodeName: Annotated[str, Meta(min_length=1, description="The node whose agent renders the file.")]
    source: TemplateSource
    destination: Annotated[str, Meta(pattern="^/", description="Absolute path of the file on the node.")]
    mode: Annotated[str, Meta(pattern="^0?[0-7]{3}$", description="The file's mode, in octal.")] = "0644"
    command: Annotated[str, Meta(description=(
        "Run with /bin/sh, in the destination's directory, when the file's content changed; retried "
        "with backoff while it fails."))] | UnsetType = UNSET
    commandTimeoutSeconds: Annotated[float, Meta(ge=0.1, description=(
        "A command still running after this is killed with its process group."))] = 30
    wait: Annotated[Wait, Meta(extra_json_schema={"default": {}})] = msgspec.field(default_factory=Wait)


class CommandStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    runs: int | UnsetType = UNSET
    exitCode: int | UnsetType | None = UNSET
    output: Annotated[str, Meta(description="The tail of the last run's output.")] | UnsetType = UNSET
    succeededDigest: Annotated[str, Meta(description=(
        "sha256 of the content the command last succeeded for. An agent that starts runs the command "
        "when the file holds other content, or when the last run failed."))] | UnsetType = UNSET


class TemplateStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    observedGeneration: int | UnsetType = UNSET
    lastRenderRevision: Annotated[str, Meta(description=(
        "The newest resourceVersion among the objects the last render read."))] | UnsetType = UNSET
    digest: Annotated[str, Meta(description="sha256 of the file's content.")] | UnsetType = UNSET
    renderedAt: str | UnsetType = UNSET
    renders: int | UnsetType = UNSET
    writes: int | UnsetType = UNSET
    command: CommandStatus | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


class Template(Kind, kw_only=True, omit_defaults=True):
    """A file on a node rendered from setpoint objects (Jinja2), rewritten atomically when
    something it read changed, and a command run when its content changed."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group="setpoint.dev", short_names=("tpl",), categories=("setpoint",), selectable_fields=(".spec.nodeName",),
        printer_columns=(("Destination", "string", ".spec.destination"),
                         ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
                         ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason'),
                         ("Node", "string", ".spec.nodeName"), ("Age", "date", ".metadata.creationTimestamp")))
    spec: TemplateSpec
    status: TemplateStatus | UnsetType = UNSET
