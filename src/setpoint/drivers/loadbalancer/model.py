"""What a load balancer driver is asked for: a frontend and the complete set of backends.

Both drivers receive the whole set on every sync, never a delta, as the source material's
Nitrox did: a missed event cannot leave a balancer wrong, because the next sync states the
whole truth again and the driver changes only what differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from setpoint.agent.errors import DriverError, Permanent


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    address: str
    port: int

    @property
    def name(self) -> str:
        """The server's name in the balancer: its address, readable in HAProxy's and Envoy's own
        tools, and the same for the same backend on every sync."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = ""
    interval: float = 2.0
    rise: int = 1
    fall: int = 2


@dataclass(frozen=True, slots=True)
class Frontend:
    """What the balancer process is started with: changing any of it needs a new process."""

    address: str
    port: int
    mode: str = "http"
    balance: str = "roundrobin"
    health: HealthCheck = HealthCheck()
    connect_timeout: float = 5.0
    client_timeout: float = 30.0
    server_timeout: float = 30.0
    retries: int = 3

    def digest(self) -> str:
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Desired:
    frontend: Frontend
    backends: tuple[Backend, ...]  # sorted, unique
    drain_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class ServerState:
    """One backend as the balancer reports it."""

    backend: Backend
    state: str  # UP, STARTING (taking traffic); DOWN, PENDING (its first check), DRAIN, MAINT, FOREIGN


# The states in which a server takes new connections (HAProxy's STARTING is a slow start).
IN_SERVICE = ("UP", "STARTING")


@dataclass(frozen=True, slots=True)
class Note:
    """Something a sync did that its LoadBalancer's owner should hear of (an Event): a new process
    for a frontend change, a process that replaced one whose admin socket was gone."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Observed:
    running: bool
    pid: int | None
    frontend_digest: str | None  # of the frontend the balancer serves
    servers: tuple[ServerState, ...]
    draining: int = 0  # servers still finishing their connections before removal
    # The desired frontend could not be applied (its port is taken, the balancer refused it): the
    # balancer keeps serving its previous frontend, if it had one, with the current backends.
    frontend_error: DriverError | None = None
    notes: tuple[Note, ...] = ()

    @property
    def in_service(self) -> list[ServerState]:
        return [s for s in self.servers if s.state in IN_SERVICE]


def _num(d: dict[str, Any], key: str, default: float) -> float:
    v = d.get(key, default)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def frontend_of(spec: dict[str, Any]) -> Frontend:
    """The frontend of a LoadBalancer's spec (already defaulted and checked by its schema)."""
    fe = spec.get("frontend") or {}
    port = fe.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        raise Permanent("spec.frontend.port must be an integer", reason="InvalidSpec")
    hc = fe.get("healthCheck") or {}
    to = fe.get("timeouts") or {}
    mode = str(fe.get("mode") or "http")
    path = str(hc.get("path") or "")
    if path and mode != "http":
        raise Permanent("spec.frontend.healthCheck.path needs mode http (tcp checks connect only)",
                        reason="InvalidSpec")
    return Frontend(
        address=str(fe.get("address") or "127.0.0.1"), port=port, mode=mode,
        balance=str(fe.get("balance") or "roundrobin"),
        health=HealthCheck(path=path, interval=_num(hc, "intervalSeconds", 2.0),
                           rise=int(_num(hc, "rise", 1)), fall=int(_num(hc, "fall", 2))),
        connect_timeout=_num(to, "connectSeconds", 5.0), client_timeout=_num(to, "clientSeconds", 30.0),
        server_timeout=_num(to, "serverSeconds", 30.0), retries=int(_num(fe, "retries", 3)),
    )
