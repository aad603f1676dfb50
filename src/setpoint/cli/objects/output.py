"""Tables, printer columns, JSONPath, ages: how objects are shown."""


from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from setpoint.cli.objects.common import BUILTIN_GROUPS, CRD_GROUP, CRD_RESOURCE, usage_error
from setpoint.cli.objects.discovery import KindInfo
from setpoint.cli.objects.session import Session
from setpoint.client import (
    APIStatusError,
)
from setpoint.server import tables
from setpoint.types import Object

# ---- get -----------------------------------------------------------------------------------------

class Output(enum.StrEnum):
    table = "table"
    wide = "wide"
    yaml = "yaml"
    json = "json"
    name = "name"


@dataclass
class Column:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0


# Columns of the kinds the server defines itself (custom resources get their CRD's columns).
BUILTIN_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "namespaces"): [Column("Status", ".status.phase")],
    ("", "events"): [Column("Type", ".type"), Column("Reason", ".reason"),
                     Column("Object", ".involvedObject.name"), Column("Message", ".message")],
    ("coordination.k8s.io", "leases"): [Column("Holder", ".spec.holderIdentity")],
    (CRD_GROUP, "customresourcedefinitions"): [Column("Created At", ".metadata.creationTimestamp")],
}

_PATH_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_$\-]+)"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\[['"](?P<quoted>[^'"]*)['"]\]"""
    r"""|\[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<op>==|!=)\s*(?:(?P<q>["'])(?P<sval>.*?)(?P=q)|(?P<nval>[^)\s]+))\s*\)\]"""
)


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Values at a JSONPath in the subset printer columns use: ``.a.b``, ``.a[0].b``, ``.a[*]``,
    ``.a['b.c']`` and filters ``[?(@.type=="Ready")]``."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = expr.removeprefix("$")
    values = [obj]
    pos = 0
    while pos < len(expr):
        m = _PATH_TOKEN.match(expr, pos)
        if m is None:
            return []
        pos = m.end()
        out: list[Any] = []
        for v in values:
            if m.group("field") is not None or m.group("quoted") is not None:
                key = m.group("field") if m.group("field") is not None else m.group("quoted")
                if isinstance(v, dict) and key in v:
                    out.append(v[key])
            elif m.group("index") is not None:
                if isinstance(v, list):
                    if m.group("index") == "*":
                        out.extend(v)
                    else:
                        i = int(m.group("index"))
                        if -len(v) <= i < len(v):
                            out.append(v[i])
                elif isinstance(v, dict) and m.group("index") == "*":
                    out.extend(v.values())
            else:
                want = m.group("sval") if m.group("sval") is not None else m.group("nval")
                for item in v if isinstance(v, list) else []:
                    got = jsonpath(item, "." + m.group("fpath"))
                    text = _scalar(got[0]) if got else None
                    if (text == want) == (m.group("op") == "=="):
                        out.append(item)
        values = out
    return values


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def age(timestamp: Any, now: datetime | None = None) -> str:
    """kubectl's short human durations (45s, 3m20s, 5h, 2d3h, 400d): the server's own formatter,
    the one its Table answers use, so that ``setpoint get`` and ``kubectl get`` agree."""
    return tables.age(timestamp, (now or datetime.now(UTC)).timestamp())


def cell(obj: Object, col: Column) -> str:
    values = jsonpath(obj, col.json_path)
    if not values:
        return "<none>"
    if col.type == "date":
        return age(values[0])
    return ",".join(_scalar(v) for v in values)


async def printer_columns(session: Session, info: KindInfo) -> list[Column]:
    """The CRD's additionalPrinterColumns for the version served; built-in kinds' own columns."""
    builtin = BUILTIN_COLUMNS.get((info.group, info.plural))
    if builtin is not None or info.group in BUILTIN_GROUPS:
        return builtin or []
    try:
        crd = await session.client.get(CRD_RESOURCE, f"{info.plural}.{info.group}")
    except APIStatusError:
        return []
    for v in (crd.get("spec") or {}).get("versions") or []:
        if isinstance(v, dict) and v.get("name") == info.resource.version:
            return [Column(str(c.get("name", "")), str(c.get("jsonPath", "")), str(c.get("type", "string")),
                           int(c.get("priority") or 0))
                    for c in v.get("additionalPrinterColumns") or [] if isinstance(c, dict)]
    return []


def split_refs(kind: str, names: list[str]) -> tuple[str, list[str]]:
    """``get widget w1 w2`` or ``get widget/w1``: the kind and the names."""
    if "/" in kind and not names:
        k, _, n = kind.partition("/")
        if not k or not n:
            raise usage_error(f"expected KIND/NAME, got {kind!r}")
        return k, [n]
    if "/" in kind:
        raise usage_error("there is no need to give names when using KIND/NAME")
    return kind, names


