"""A small kopf operator for Widgets, run by tests/compat/test_kopf.py as ``kopf run --standalone``.

Every handler call is appended to the file named by $OPERATOR_LOG, so the test can see what ran,
and how often, across operator restarts.
"""

from __future__ import annotations

import json
import os
from typing import Any

import kopf

LOG = os.environ["OPERATOR_LOG"]


def record(what: str, name: str, **extra: Any) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps({"what": what, "name": name, **extra}) + "\n")
        f.flush()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True  # the same as `kopf run --standalone`
    settings.watching.server_timeout = 60
    settings.posting.loggers = True  # handler outcomes ("Handler 'created' succeeded") become Events
    record("startup", "")


@kopf.on.create("example.com", "v1", "widgets")
def created(spec: dict[str, Any], name: str, patch: kopf.Patch, body: kopf.Body, **_: Any) -> dict[str, Any]:
    record("create", name, size=spec.get("size"))
    kopf.info(body, reason="Reconciled", message=f"size is {spec.get('size')}")
    patch.status["observed"] = spec.get("size")
    return {"size": spec.get("size")}


@kopf.on.update("example.com", "v1", "widgets")
def updated(spec: dict[str, Any], name: str, patch: kopf.Patch, **_: Any) -> None:
    record("update", name, size=spec.get("size"))
    patch.status["observed"] = spec.get("size")


@kopf.on.delete("example.com", "v1", "widgets")
def deleted(name: str, **_: Any) -> None:
    record("delete", name)
