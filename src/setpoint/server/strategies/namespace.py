"""Namespaces: created Active with the ``kubernetes`` finalizer, which the namespace finalizer
(``server/namespaces.py``) removes once the namespace is empty; a deletion marks it Terminating."""

from __future__ import annotations

from typing import Any

from setpoint.server.strategies.base import Strategy


class NamespaceStrategy(Strategy):
    keeps_status_on_create = True

    def prepare_create(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}

    def prepare_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        new.setdefault("status", {}).setdefault("phase", "Active")

    def deletion_finalizers(self, obj: dict[str, Any]) -> list[str]:
        return list((obj.get("spec") or {}).get("finalizers") or [])

    def mark_terminating(self, obj: dict[str, Any]) -> None:
        obj.setdefault("status", {})["phase"] = "Terminating"
