"""setpoint's own kinds, as CustomResourceDefinitions the server installs on start."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def bundled_crds() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out.append(yaml.safe_load(entry.read_text()))
    return out
