"""ProcessSet: processes a node agent keeps running, the way a Deployment keeps pods.

The class is the kind's one definition: its CRD (``crds/processsets.yaml``) is generated from it
and the typed client and controllers take it as it is.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from setpoint.crdgen import KindInfo
from setpoint.kinds.common import Condition, Kind, NonEmpty


class SecretKeyRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: NonEmpty
    key: NonEmpty
    optional: bool | UnsetType = UNSET


class EnvValueSource(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A value read from a Secret in the ProcessSet's namespace when a replica starts."""

    secretKeyRef: SecretKeyRef | UnsetType = UNSET


class EnvVar(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: NonEmpty
    value: str | UnsetType = UNSET
    valueFrom: EnvValueSource | UnsetType = UNSET


class RestartBackoff(msgspec.Struct, kw_only=True, omit_defaults=True):
    initialSeconds: Annotated[float, Meta(ge=0)] = 1
    maxSeconds: Annotated[float, Meta(ge=0)] = 60


class ProcessSetSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    command: Annotated[str, Meta(min_length=1, description=(
        "Executable to run (a path, or a name looked up on the agent's PATH)."))]
    args: list[str] | UnsetType = UNSET
    env: list[EnvVar] | UnsetType = UNSET
    workingDir: Annotated[str, Meta(description=(
        "Directory the replicas run in. Default: one of the ProcessSet's own under the agent's state "
        "directory (STATE_DIR/processes/UID/work), created for it and removed with it; never the "
        "directory the agent was started from."))] | UnsetType = UNSET
    replicas: Annotated[int, Meta(ge=0)] = 1
    nodeName: Annotated[str, Meta(description=(
        "The node whose agent runs the processes; set by the scheduler when empty."))] | UnsetType = UNSET
    portEnv: Annotated[str, Meta(description=(
        "When set, the agent gives each replica a free TCP port on the node, in this environment "
        "variable, and reports it in status."))] | UnsetType = UNSET
    restartBackoff: Annotated[RestartBackoff, Meta(extra_json_schema={"default": {}})] = msgspec.field(
        default_factory=RestartBackoff)
    stopGracePeriodSeconds: Annotated[float, Meta(ge=0)] = 5


class ProcessStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    replica: int | UnsetType = UNSET
    pid: int | UnsetType = UNSET
    port: int | UnsetType = UNSET
    startedAt: str | UnsetType = UNSET
    restarts: int | UnsetType = UNSET
    state: str | UnsetType = UNSET


class ProcessSetStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    observedGeneration: int | UnsetType = UNSET
    replicas: int | UnsetType = UNSET
    readyReplicas: int | UnsetType = UNSET
    nodeName: str | UnsetType = UNSET
    processes: list[ProcessStatus] | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


class ProcessSet(Kind, kw_only=True, omit_defaults=True):
    """Processes a node agent keeps running: replicas of one command, restarted when they exit."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        group="setpoint.dev", short_names=("ps",), categories=("setpoint",),
        scale=(".spec.replicas", ".status.replicas"), selectable_fields=(".spec.nodeName",),
        printer_columns=(("Desired", "integer", ".spec.replicas"), ("Ready", "integer", ".status.readyReplicas"),
                         ("Node", "string", ".spec.nodeName"), ("Age", "date", ".metadata.creationTimestamp")))
    spec: ProcessSetSpec
    status: ProcessSetStatus | UnsetType = UNSET
