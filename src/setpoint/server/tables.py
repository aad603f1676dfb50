"""Tables (``as=Table``): the server-side printing that ``kubectl get`` shows.

A kind's columns are the CRD's ``additionalPrinterColumns`` (or ``Age`` when it names none),
after the ``Name`` column, exactly as kube-apiserver builds them; built-in kinds have the columns
Kubernetes prints for them. The column JSONPaths are compiled into small getter functions once
per CRD change (:func:`table_spec` memoises them on the resource type), so a request only runs
the getters.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from setpoint.server.errors import BadRequest
from setpoint.server.resources import ResourceType

Getter = Callable[[Any], list[Any]]
Cell = Callable[[dict[str, Any], float], Any]

NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically. "
    "Name is primarily intended for creation idempotence and configuration definition. Cannot be "
    "updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients "
    "may not set this value. It is represented in RFC3339 form and is in UTC."
)


# ---- JSONPath (the subset CRD printer columns use) ------------------------------------------

_TOKEN = re.compile(
    r"""\.\.?(?P<name>[A-Za-z0-9_\-/]+)          # .field
      | \[['"](?P<quoted>[^'"]+)['"]\]          # ['field']
      | \[(?P<index>-?\d+)\]                    # [0]
      | \[\*\]|\.\*                             # [*] .*
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<op>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\s*\)\]
    """,
    re.VERBOSE,
)


def _step_field(name: str) -> Getter:
    def step(v: Any) -> list[Any]:
        return [v[name]] if isinstance(v, dict) and name in v else []
    return step


def _step_index(i: int) -> Getter:
    def step(v: Any) -> list[Any]:
        if isinstance(v, list) and -len(v) <= i < len(v):
            return [v[i]]
        return []
    return step


def _step_all(v: Any) -> list[Any]:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return list(v.values())
    return []


def _step_filter(path: str, op: str, raw: str) -> Getter:
    keys = path.split(".")
    if raw[:1] in "\"'":
        want: Any = raw[1:-1]
    else:
        try:
            want = json.loads(raw)
        except ValueError:
            want = raw

    def value(item: Any) -> Any:
        for k in keys:
            if not isinstance(item, dict) or k not in item:
                return _ABSENT
            item = item[k]
        return item

    def step(v: Any) -> list[Any]:
        if not isinstance(v, list):
            return []
        out = []
        for item in v:
            have = value(item)
            if have is _ABSENT:
                continue
            if (have == want) == (op == "=="):
                out.append(item)
        return out
    return step


_ABSENT = object()


@functools.lru_cache(maxsize=1024)
def compile_jsonpath(path: str) -> Callable[[Any], Any]:
    """A getter for a simple JSONPath (``.spec.size``, ``.status.conditions[?(@.type=="Ready")].status``);
    it returns the first result, or None. Raises ValueError for what it does not understand."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    steps: list[Getter] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if m.group("name") is not None:
            steps.append(_step_field(m.group("name")))
        elif m.group("quoted") is not None:
            steps.append(_step_field(m.group("quoted")))
        elif m.group("index") is not None:
            steps.append(_step_index(int(m.group("index"))))
        elif m.group("fpath") is not None:
            steps.append(_step_filter(m.group("fpath"), m.group("op"), m.group("fval")))
        else:
            steps.append(_step_all)
        pos = m.end()

    def get(obj: Any) -> Any:
        current = [obj]
        for step in steps:
            nxt: list[Any] = []
            for v in current:
                nxt.extend(step(v))
            current = nxt
            if not current:
                return None
        return current[0]
    return get


# ---- cells ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _epoch(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: ``45s``, ``3m12s``, ``5h``, ``2d3h``, ``3y``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(ts: Any, now: float) -> str:
    if not isinstance(ts, str) or not ts:
        return "<unknown>"
    epoch = _epoch(ts)
    if epoch is None:
        return "<invalid>"
    return human_duration(now - epoch)


def _string_cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _typed_cell(col_type: str, value: Any, now: float) -> Any:
    """apiextensions' cellForJSONValue."""
    if value is None:
        return None
    if col_type == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            return int(value)
        return None
    if col_type == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if col_type == "boolean":
        return value if isinstance(value, bool) else None
    if col_type == "date":
        return age(value, now) if isinstance(value, str) else None
    return None


def _column_cell(col: dict[str, Any]) -> Cell:
    try:
        getter = compile_jsonpath(str(col.get("jsonPath", "")))
    except ValueError:
        def missing(obj: dict[str, Any], now: float) -> Any:
            return None
        return missing
    col_type = str(col.get("type", "string"))
    if col_type == "string":
        def string_cell(obj: dict[str, Any], now: float) -> Any:
            return _string_cell(getter(obj))
        return string_cell

    def typed(obj: dict[str, Any], now: float) -> Any:
        return _typed_cell(col_type, getter(obj), now)
    return typed


# ---- specs -------------------------------------------------------------------------------------


class TableSpec:
    """Column definitions and the functions that compute a row's cells."""

    __slots__ = ("cells", "columns")

    def __init__(self, columns: list[dict[str, Any]], cells: list[Cell]) -> None:
        self.columns = columns
        self.cells = cells

    def row(self, obj: dict[str, Any], now: float) -> list[Any]:
        return [cell(obj, now) for cell in self.cells]


def _name(obj: dict[str, Any], now: float) -> Any:
    return obj.get("metadata", {}).get("name", "")


def _created(obj: dict[str, Any], now: float) -> Any:
    return age(obj.get("metadata", {}).get("creationTimestamp"), now)


def _name_column() -> dict[str, Any]:
    return {"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION,
            "priority": 0}


def _col(name: str, description: str, type_: str = "string", priority: int = 0,
         format_: str = "") -> dict[str, Any]:
    return {"name": name, "type": type_, "format": format_, "description": description,
            "priority": priority}


def _path(path: str) -> Cell:
    getter = compile_jsonpath(path)

    def cell(obj: dict[str, Any], now: float) -> Any:
        return _string_cell(getter(obj)) or ""
    return cell


def _event_last_seen(obj: dict[str, Any], now: float) -> Any:
    series = obj.get("series") or {}
    for ts in (series.get("lastObservedTime") if isinstance(series, dict) else None,
               obj.get("lastTimestamp"), obj.get("eventTime"),
               obj.get("metadata", {}).get("creationTimestamp")):
        if isinstance(ts, str) and ts:
            return age(ts, now)
    return "<unknown>"


def _event_first_seen(obj: dict[str, Any], now: float) -> Any:
    for ts in (obj.get("firstTimestamp"), obj.get("eventTime"),
               obj.get("metadata", {}).get("creationTimestamp")):
        if isinstance(ts, str) and ts:
            return age(ts, now)
    return "<unknown>"


def _event_object(obj: dict[str, Any], now: float) -> Any:
    ref = obj.get("involvedObject") or {}
    if not isinstance(ref, dict):
        return ""
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def _event_source(obj: dict[str, Any], now: float) -> Any:
    source = obj.get("source") or {}
    component = (source.get("component") if isinstance(source, dict) else "") or obj.get(
        "reportingComponent", "")
    host = source.get("host", "") if isinstance(source, dict) else ""
    return f"{component}, {host}" if host else str(component or "")


def _event_count(obj: dict[str, Any], now: float) -> Any:
    series = obj.get("series")
    if isinstance(series, dict) and isinstance(series.get("count"), int):
        return series["count"]
    count = obj.get("count")
    return count if isinstance(count, int) else 1


def _builtin_spec(rtype: ResourceType) -> TableSpec | None:
    key = (rtype.group, rtype.plural)
    age_col = _col("Age", CREATION_DESCRIPTION)
    if key == ("", "namespaces"):
        return TableSpec(
            [_name_column(), _col("Status", "The status of the namespace"), age_col],
            [_name, _path(".status.phase"), _created])
    if key == ("", "events"):
        return TableSpec(
            [_col("Last Seen", "Time when this Event was last seen"),
             _col("Type", "Type of this event (Normal, Warning), new types could be added in the future."),
             _col("Reason", "Reason why this event was generated; short, machine understandable string."),
             _col("Object", "The object this Event is about."),
             _col("Subobject", "The subobject the event is about (the field path).", priority=1),
             _col("Source", "The component reporting this event.", priority=1),
             _col("Message", "A human-readable description of the status of this operation."),
             _col("First Seen", "Time when this Event was first seen", priority=1),
             _col("Count", "The number of times this event has occurred.", type_="integer", priority=1),
             {**_name_column(), "priority": 1}],
            [_event_last_seen, _path(".type"), _path(".reason"), _event_object,
             _path(".involvedObject.fieldPath"), _event_source, _path(".message"), _event_first_seen,
             _event_count, _name])
    if key == ("coordination.k8s.io", "leases"):
        return TableSpec(
            [_name_column(), _col("Holder", "The holder of the lease"), age_col],
            [_name, _path(".spec.holderIdentity"), _created])
    if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        def created_at(obj: dict[str, Any], now: float) -> Any:
            return obj.get("metadata", {}).get("creationTimestamp", "")
        return TableSpec(
            [_name_column(), _col("Created At", CREATION_DESCRIPTION, type_="date")],
            [_name, created_at])
    return None


def _crd_spec(rtype: ResourceType, version: str) -> TableSpec:
    columns = rtype.printer_columns.get(version) or rtype.printer_columns.get(rtype.storage_version)
    if not columns:
        columns = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                    "description": CREATION_DESCRIPTION}]
    defs = [_name_column()]
    cells: list[Cell] = [_name]
    for col in columns:
        if not isinstance(col, dict):
            continue
        desc = col.get("description") or (
            f"Custom resource definition column (in JSONPath format): {col.get('jsonPath', '')}")
        defs.append({"name": str(col.get("name", "")), "type": str(col.get("type", "string")),
                     "format": str(col.get("format", "")), "description": desc,
                     "priority": int(col.get("priority", 0) or 0)})
        cells.append(_column_cell(col))
    return TableSpec(defs, cells)


def table_spec(rtype: ResourceType, version: str) -> TableSpec:
    """The kind's columns, built once per resource type (a CRD change builds a new type)."""
    memo_key = ("table", version)
    spec = rtype.memo.get(memo_key)
    if spec is None:
        spec = _builtin_spec(rtype) if rtype.builtin else None
        if spec is None:
            spec = _crd_spec(rtype, version)
        rtype.memo[memo_key] = spec
    assert isinstance(spec, TableSpec)
    return spec


# ---- responses ---------------------------------------------------------------------------------


def include_object(value: str | None) -> str:
    if value in (None, "", "Metadata"):
        return "Metadata"
    if value in ("Object", "None"):
        return value
    raise BadRequest(f'Unable to convert to Table as requested: includeObject: Unsupported value: '
                     f'"{value}": supported values: "None", "Metadata", "Object"')


def _row_object(obj: dict[str, Any], raw: bytes | None, include: str, table_version: str) -> Any:
    if include == "Object":
        return msgspec.Raw(raw) if raw is not None else obj
    if include == "None":
        return None
    meta = obj.get("metadata", {})
    return {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{table_version}",
            "metadata": meta}


def table(
    spec: TableSpec,
    items: list[tuple[dict[str, Any], bytes | None]],
    *,
    table_version: str,
    include: str,
    resource_version: str = "",
    continue_token: str = "",
    headers: bool = True,
) -> dict[str, Any]:
    now = time.time()
    meta: dict[str, Any] = {}
    if resource_version:
        meta["resourceVersion"] = resource_version
    if continue_token:
        meta["continue"] = continue_token
    rows = []
    for obj, raw in items:
        row: dict[str, Any] = {"cells": spec.row(obj, now)}
        ro = _row_object(obj, raw, include, table_version)
        if ro is not None:
            row["object"] = ro
        rows.append(row)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{table_version}", "metadata": meta,
            "columnDefinitions": spec.columns if headers else [], "rows": rows}
