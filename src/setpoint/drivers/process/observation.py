"""What the driver reports: one observation per replica, and the ProcessSet status made of them.

The status is a pure function of the object and the observation, so that what an operator
reads (``kubectl get processsets``) is exactly what the driver saw.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from setpoint.drivers.base import NotReady, Obj


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcessState(enum.StrEnum):
    RUNNING = "Running"
    STARTING = "Starting"  # alive, but nothing listens on its port yet
    EXITED = "Exited"  # no process (never started, or dead and due for a restart)
    BACKOFF = "Backoff"  # dead, waiting for its restart delay to pass


class ReplicaObservation(msgspec.Struct, frozen=True, kw_only=True):
    replica: int
    state: ProcessState
    pid: int | None = None
    port: int | None = None
    started_at: float | None = None  # clock time of the spawn
    restarts: int = 0
    spec_hash: str = ""
    exit_code: int | None = None  # of the last exit, when known (negative: killed by that signal)
    retry_at: float | None = None  # Backoff: clock time from which a restart is allowed

    @property
    def alive(self) -> bool:
        return self.state in (ProcessState.RUNNING, ProcessState.STARTING)


class ProcessSetObservation(msgspec.Struct, frozen=True, kw_only=True):
    uid: str
    replicas: tuple[ReplicaObservation, ...]  # sorted by index; every desired index plus live extras
    observed_at: float

    def replica(self, index: int) -> ReplicaObservation | None:
        for r in self.replicas:
            if r.replica == index:
                return r
        return None

    @property
    def pids(self) -> dict[int, int]:
        """Replica index → pid, for the replicas with a live process."""
        return {r.replica: r.pid for r in self.replicas if r.alive and r.pid is not None}


class ProcessesNotReady(NotReady):
    """A replica waits for its restart delay, or for its port; ``observed`` is the state after
    everything else was done, so the caller can still write status."""

    def __init__(self, message: str, *, retry_after: float, observed: ProcessSetObservation, reason: str) -> None:
        super().__init__(message, retry_after=retry_after, reason=reason)
        self.observed = observed




def status(obj: Obj, observed: ProcessSetObservation, *, node_name: str, now: float) -> dict[str, Any]:
    """The ProcessSet ``status`` that reports ``observed``: replica counts, one entry per process,
    and a Ready condition whose transition time moves only when its status does."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    desired = spec.get("replicas", 1)
    if isinstance(desired, bool) or not isinstance(desired, int) or desired < 0:
        desired = 0
    generation = meta.get("generation")
    processes: list[dict[str, Any]] = []
    for o in observed.replicas:
        p: dict[str, Any] = {"replica": o.replica, "state": o.state.value, "restarts": o.restarts}
        if o.pid is not None:
            p["pid"] = o.pid
        if o.port is not None:
            p["port"] = o.port
        if o.alive and o.started_at is not None:
            p["startedAt"] = rfc3339(o.started_at)
        processes.append(p)
    wanted = [o for o in observed.replicas if o.replica < desired]
    ready = sum(1 for o in wanted if o.state is ProcessState.RUNNING)
    live = sum(1 for o in observed.replicas if o.alive)
    extra = sum(1 for o in observed.replicas if o.alive and o.replica >= desired)
    backoff = [o for o in wanted if o.state is ProcessState.BACKOFF]
    starting = [o for o in wanted if o.state is ProcessState.STARTING]
    if ready == desired and not extra:
        cond, reason, message = "True", "AllReplicasReady", f"{ready}/{desired} replicas ready"
    elif backoff:
        o = backoff[0]
        code = "" if o.exit_code is None else f" with code {o.exit_code}"
        cond, reason = "False", "Backoff"
        message = f"replica {o.replica} exited{code} and waits to be restarted (restarts: {o.restarts})"
    elif starting:
        o = starting[0]
        cond, reason = "False", "Starting"
        message = f"replica {o.replica} is starting: nothing listens on port {o.port} yet"
    elif extra:
        cond, reason, message = "False", "ScalingDown", f"{extra} replicas above {desired} still running"
    else:
        cond, reason, message = "False", "ReplicasNotReady", f"{ready}/{desired} replicas ready"
    condition: dict[str, Any] = {"type": "Ready", "status": cond, "reason": reason, "message": message,
                                 "lastTransitionTime": rfc3339(now)}
    prev_status = obj.get("status")
    previous = prev_status.get("conditions") if isinstance(prev_status, Mapping) else None
    for c in previous if isinstance(previous, list) else []:
        if (isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == cond
                and isinstance(c.get("lastTransitionTime"), str)):
            condition["lastTransitionTime"] = c["lastTransitionTime"]
    status: dict[str, Any] = {
        "replicas": live,
        "readyReplicas": ready,
        "nodeName": spec.get("nodeName") or node_name,
        "processes": processes,
        "conditions": [condition],
    }
    if isinstance(generation, int) and not isinstance(generation, bool):
        status["observedGeneration"] = generation
        condition["observedGeneration"] = generation
    return status
