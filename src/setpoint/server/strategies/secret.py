"""Secrets: ``stringData`` folded into ``data`` on every write, and a node reads a Secret only
when a ProcessSet assigned to it takes a value from it (see ``server/secrets.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from setpoint.server import secrets
from setpoint.server.admission import assigned_to
from setpoint.server.strategies.base import Strategy

if TYPE_CHECKING:
    from setpoint.server.resources import ResourceType
    from setpoint.server.watchcache import WatchCache

PROCESSSETS = "/registry/setpoint.dev/processsets/"


class SecretStrategy(Strategy):
    def prepare_create(self, obj: dict[str, Any]) -> None:
        secrets.prepare(obj)

    def prepare_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        secrets.prepare(new)

    def node_may_get(self, cache: WatchCache, rtype: ResourceType, node: str, namespace: str,
                     name: str) -> bool | None:
        for co in cache.list(PROCESSSETS, f"{PROCESSSETS}{namespace}/"):
            if assigned_to(co.obj, node) and secrets.referenced_by(co.obj, name):
                return True
        return False
