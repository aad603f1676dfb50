"""How a ``Home`` maps to device resources: one per entry of ``spec.devices``."""

from __future__ import annotations

from typing import Any

from setpoint.client import Resource

HOMES = Resource("home.example.com", "v1", "homes", namespaced=True, kind="Home")


def home_resources(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{device id: {"type": ..., "settings": {...}}}`` for every device of the Home."""
    out: dict[str, dict[str, Any]] = {}
    for device in (obj.get("spec") or {}).get("devices") or []:
        name = device["name"]
        if name in out:
            raise ValueError(f"device {name!r} is listed twice")
        out[name] = {"type": device["type"], "settings": dict(device.get("settings") or {})}
    return out
