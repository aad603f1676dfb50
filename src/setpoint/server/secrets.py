"""The core/v1 ``Secret`` kind's own rules, as kube-apiserver has them: ``stringData`` is a
write-only convenience merged into ``data`` (base64) on every write, and ``data`` holds base64.

Values never appear in an error message (the key does), and nobody but the policy's readers
sees a Secret: a node reads one only when a ProcessSet assigned to it refers to it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from setpoint.server.objects import raise_invalid


def prepare(obj: dict[str, Any]) -> None:
    """Merge ``stringData`` into ``data``, check ``data`` is base64, default ``type``."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    data = obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise_invalid("Secret", "", name, [("FieldValueInvalid", "Invalid value: must be a map of strings", "data")])
    causes = []
    for key, value in data.items():
        if not isinstance(value, str):
            causes.append(("FieldValueInvalid", "Invalid value: must be a base64 string", f"data[{key}]"))
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            causes.append(("FieldValueInvalid", "Invalid value: illegal base64 data", f"data[{key}]"))
    string_data = obj.pop("stringData", None)
    if string_data is not None:
        if not isinstance(string_data, dict):
            causes.append(("FieldValueInvalid", "Invalid value: must be a map of strings", "stringData"))
        else:
            for key, value in string_data.items():
                if not isinstance(value, str):
                    causes.append(("FieldValueInvalid", "Invalid value: must be a string", f"stringData[{key}]"))
                    continue
                data[key] = base64.b64encode(value.encode()).decode()
    raise_invalid("Secret", "", name, causes)
    obj["data"] = data
    if not isinstance(obj.get("type"), str) or not obj.get("type"):
        obj["type"] = "Opaque"


def referenced_by(processset: dict[str, Any], secret: str) -> bool:
    """Whether a ProcessSet's environment takes a value from Secret ``secret``."""
    env = (processset.get("spec") or {}).get("env") or []
    for item in env if isinstance(env, list) else []:
        ref = ((item.get("valueFrom") or {}).get("secretKeyRef") or {}) if isinstance(item, dict) else {}
        if isinstance(ref, dict) and ref.get("name") == secret:
            return True
    return False
