"""Load balancer drivers: HAProxy through its Runtime API, Envoy through file-based xDS.

Both take the complete desired set on every sync and change only what differs (see
``model.py``); the LoadBalancer controller (``setpoint.controllers.loadbalancer``) computes that
set from EndpointSlices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from setpoint.drivers.loadbalancer.haproxy import HAProxyDriver
from setpoint.drivers.loadbalancer.model import (
    Backend,
    Desired,
    Frontend,
    HealthCheck,
    Observed,
    ServerState,
    frontend_of,
)


class LoadBalancerDriver(Protocol):
    name: str
    state_dir: Path

    async def observe(self, uid: str) -> Observed: ...

    async def ensure(self, uid: str, desired: Desired, title: str) -> Observed: ...

    async def delete(self, uid: str) -> None: ...

    def owners(self) -> set[str]: ...

    def close(self) -> None: ...


__all__ = ["Backend", "Desired", "Frontend", "HAProxyDriver", "HealthCheck", "LoadBalancerDriver", "Observed",
           "ServerState", "frontend_of"]
