"""What to do about one ProcessSet, decided without touching the host.

:func:`plan` takes the records, the spec, the time and what was seen of each recorded process
(alive, or exited when and how) and returns the stops, starts and record writes that make the
host match the spec. The driver gathers what it sees, plans, then executes: the decisions
(restart now or wait, replace on a spec change, drop replicas above the count) are testable as
data, as the store's batch writer plans its batches before it writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from setpoint.backoff import exponential
from setpoint.drivers.process.records import Record
from setpoint.drivers.process.spec import Spec


@dataclass(frozen=True, slots=True)
class Exit:
    """A recorded process found dead: when it was noticed to exit, and its code when known
    (negative: killed by that signal)."""

    at: float
    code: int | None


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the session of ``pid`` (started at ``ticks``): a replica to replace or remove, or
    what a dead replica's session may have left behind."""

    replica: int
    pid: int
    ticks: int


@dataclass(slots=True)
class Plan:
    stops: list[Stop] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)  # replicas above the count: records and logs go
    writes: dict[int, Record] = field(default_factory=dict)  # deaths to record before anything starts
    starts: dict[int, Record] = field(default_factory=dict)  # replica -> the record to start it from
    exits: list[tuple[int, int | None, int]] = field(default_factory=list)  # replica, code, streak

    @property
    def idle(self) -> bool:
        return not (self.stops or self.drop or self.writes or self.starts)


def restart_delay(streak: int, initial: float, maximum: float) -> float:
    """The first restart is immediate; each further one in a row waits twice as long."""
    return 0.0 if streak <= 1 else exponential(streak - 1, initial, maximum)


def next_attempt(rec: Record, exited_at: float, spec: Spec, backoff_reset: float) -> tuple[int, float]:
    """The streak of short-lived runs this exit makes, and from when a restart is allowed. A run
    longer than ``max(backoff_reset, maxSeconds)`` starts the streak over."""
    ran = exited_at - rec.started_at
    streak = 1 if ran >= max(backoff_reset, spec.backoff_max) else rec.streak + 1
    return streak, exited_at + restart_delay(streak, spec.backoff_initial, spec.backoff_max)


def fresh(rec: Record, spec: Spec) -> Record:
    """The record for a process of a new spec: restarts and backoff start over."""
    return msgspec.structs.replace(rec, spec_hash=spec.spec_hash, pid=0, start_ticks=0, restarts=0, streak=0,
                                   exited_at=None, exit_code=None, retry_at=None)


def plan(records: Mapping[int, Record], spec: Spec, now: float, exits: Mapping[int, Exit],
         backoff_reset: float) -> Plan:
    """What to do so that the replicas ``0..spec.replicas-1`` run ``spec``.

    ``exits`` holds, for each replica whose recorded process was found dead, how it ended; a
    recorded pid not in ``exits`` is alive."""
    out = Plan()
    for r, rec in sorted(records.items()):
        if r >= spec.replicas:
            if rec.pid:
                out.stops.append(Stop(r, rec.pid, rec.start_ticks))
            out.drop.append(r)
    for r in range(spec.replicas):
        known = records.get(r)
        rec = known if known is not None else Record(replica=r, spec_hash=spec.spec_hash)
        ended = exits.get(r) if rec.pid else None
        if rec.pid and ended is None:  # alive
            if rec.spec_hash != spec.spec_hash:
                out.stops.append(Stop(r, rec.pid, rec.start_ticks))
                out.starts[r] = fresh(rec, spec)
            continue
        if ended is not None:  # died since we last acted; its session may have left processes behind
            out.stops.append(Stop(r, rec.pid, rec.start_ticks))
            streak, retry_at = next_attempt(rec, ended.at, spec, backoff_reset)
            rec = msgspec.structs.replace(rec, pid=0, start_ticks=0, exited_at=ended.at, exit_code=ended.code,
                                          streak=streak, retry_at=retry_at)
            out.writes[r] = rec
            out.exits.append((r, ended.code, streak))
        if rec.spec_hash != spec.spec_hash:
            out.starts[r] = fresh(rec, spec)
        elif rec.exited_at is None:  # never ran (a first spawn, or one that was interrupted)
            out.starts[r] = rec
        elif rec.retry_at is None or rec.retry_at <= max(now, rec.exited_at):
            out.starts[r] = msgspec.structs.replace(rec, restarts=rec.restarts + 1)
    return out
