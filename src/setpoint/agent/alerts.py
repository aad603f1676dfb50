"""Alerts: what a human must hear about because the system will not fix it by itself.

A reconciler raises an alert when an object failed permanently or spent its retry budget. The
sink is pluggable; the default logs at ERROR. Sinks must not block: one that talks to the
network does so in the background, with a bounded queue.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from setpoint.agent.conditions import now_rfc3339

log = logging.getLogger("setpoint.alerts")


@dataclass(frozen=True)
class Alert:
    controller: str
    kind: str
    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    error_class: str
    attempts: int = 0
    at: str = field(default_factory=now_rfc3339)

    @property
    def object_ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


class AlertSink(Protocol):
    def alert(self, alert: Alert) -> None: ...


class LogAlertSink:
    def alert(self, alert: Alert) -> None:
        log.error("ALERT %s: %s %s: %s (after %d attempts)", alert.controller, alert.object_ref,
                  alert.reason, alert.message, alert.attempts)


class MemoryAlertSink:
    """Keeps the last ``maxlen`` alerts, e.g. for a status page or a test."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.alerts: deque[Alert] = deque(maxlen=maxlen)

    def alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


class FanOutAlertSink:
    def __init__(self, *sinks: AlertSink) -> None:
        self.sinks = sinks

    def alert(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.alert(alert)
            except Exception:
                log.exception("alert sink %r failed", sink)
