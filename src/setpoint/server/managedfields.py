"""Field ownership (``metadata.managedFields``) and server-side apply.

Every tracked write records which manager set which fields, as sets of field paths in
Kubernetes' ``FieldsV1`` form (``{"f:spec": {"f:size": {}}}``). Server-side apply
(``PATCH`` with ``application/apply-patch+yaml``) uses them: an applier owns exactly the fields
of its last applied configuration; changing a field that another manager owns is a conflict
(409, naming the managers and fields) unless the request says ``force=true``, which takes the
fields over; a field the applier stops applying is removed when nobody else owns it.

The shape of an object comes from its kind's schema, as in Kubernetes: objects with
``properties`` are structs (a field each), ``additionalProperties`` maps are granular,
lists are atomic unless ``x-kubernetes-list-type`` says ``map`` (items keyed by
``x-kubernetes-list-map-keys``) or ``set``; where the schema says nothing (preserved unknown
fields) objects are granular and lists atomic.

Tracking costs a walk of the object per write, so it is done for writes that name a
``fieldManager`` and for objects that already carry managed fields; plain writes of untracked
objects (agents, benchmarks) pay nothing. An object applied for the first time after untracked
writes attributes its existing fields to the manager ``before-first-apply``, as Kubernetes does
when managed fields were reset.
"""

from __future__ import annotations

import json
from typing import Any

from setpoint.server.errors import Conflict
from setpoint.server.objects import now

Path = tuple[str, ...]
Schema = dict[str, Any] | None

BEFORE_FIRST_APPLY = "before-first-apply"
_PRESENT = object()  # the value of a map or list item that is a member itself

_STR = {"type": "string"}
_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "labels": {"type": "object", "additionalProperties": _STR},
        "annotations": {"type": "object", "additionalProperties": _STR},
        "finalizers": {"type": "array", "items": _STR, "x-kubernetes-list-type": "set"},
        "ownerReferences": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"],
            "items": {"type": "object", "properties": {
                k: _STR for k in ("apiVersion", "kind", "name", "uid")} | {
                "controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"}}},
        },
    },
}


# ---- shapes ------------------------------------------------------------------------------------

def _child(schema: Schema, key: str) -> Schema:
    if schema is None:
        return None
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        sub = props[key]
        return sub if isinstance(sub, dict) else None
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _is_struct(schema: Schema) -> bool:
    """A struct's own path is not a member, only its fields are (when it has any)."""
    return schema is None or bool(schema.get("properties")) or (
        "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"))


def _list_type(schema: Schema) -> str:
    if schema is None:
        return "atomic"
    t = schema.get("x-kubernetes-list-type")
    return t if t in ("map", "set") else "atomic"


def _items(schema: Schema) -> Schema:
    if schema is None:
        return None
    items = schema.get("items")
    return items if isinstance(items, dict) else None


def _map_keys(schema: Schema) -> list[str]:
    keys = (schema or {}).get("x-kubernetes-list-map-keys") or []
    return [k for k in keys if isinstance(k, str)]


def _key_element(item: Any, keys: list[str]) -> str:
    if not isinstance(item, dict):
        return "v:" + json.dumps(item, separators=(",", ":"))
    return "k:" + json.dumps({k: item[k] for k in sorted(keys) if k in item}, separators=(",", ":"),
                             sort_keys=True)


def _value_element(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"), sort_keys=True)


# ---- the fields of an object -----------------------------------------------------------------------

def _walk(value: Any, schema: Schema, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and (schema is None or schema.get("x-kubernetes-map-type") != "atomic"):
        if not _is_struct(schema):
            out[path] = _PRESENT  # a granular map is a member itself
        elif not value and path:
            out[path] = value  # an empty struct is a leaf
            return
        for k, v in value.items():
            _walk(v, _child(schema, k), (*path, f"f:{k}"), out)
        return
    if isinstance(value, list):
        lt = _list_type(schema)
        if lt == "map":
            keys, items = _map_keys(schema), _items(schema)
            for item in value:
                p = (*path, _key_element(item, keys))
                out[p] = _PRESENT
                if isinstance(item, dict):
                    for k, v in item.items():
                        _walk(v, _child(items, k), (*p, f"f:{k}"), out)
            return
        if lt == "set":
            for item in value:
                out[(*path, _value_element(item))] = item
            return
    out[path] = value


def fields(obj: dict[str, Any], schema: Schema, subresource: str, status_split: bool) -> dict[Path, Any]:
    """Field path -> value for the managed part of ``obj`` (metadata's system fields, apiVersion
    and kind are not managed; with a status subresource, /status manages only status and the
    object everything else)."""
    out: dict[Path, Any] = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if status_split and (key == "status") != (subresource == "status"):
            continue
        if key == "metadata":
            if subresource == "status" or not isinstance(value, dict):
                continue
            for mk in ("labels", "annotations", "finalizers", "ownerReferences"):
                if mk in value:
                    _walk(value[mk], _META_SCHEMA["properties"][mk], ("f:metadata", f"f:{mk}"), out)
            continue
        _walk(value, _child(schema, key), (f"f:{key}",), out)
    return out


# ---- FieldsV1 ------------------------------------------------------------------------------------

def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    trie: dict[str, Any] = {}
    for path in sorted(paths):
        node = trie
        for element in path:
            node = node.setdefault(element, {})
    # A member that also has members below it says so with ".".
    for path in paths:
        node = trie
        for element in path:
            node = node[element]
        if node and "." not in node:
            node["."] = {}
    return trie


def from_fields_v1(trie: Any, path: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(trie, dict):
        return out
    for key, sub in trie.items():
        if key == ".":
            out.add(path)
        elif isinstance(sub, dict) and not sub:
            out.add((*path, key))
        else:
            out |= from_fields_v1(sub, (*path, key))
    return out


def path_string(path: Path) -> str:
    """structured-merge-diff's rendering: ``.spec.ports[name="http"].port``."""
    out = []
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            out.append("." + rest)
        elif kind == "k":
            try:
                keys = json.loads(rest)
                out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]")
            except ValueError:
                out.append(f"[{rest}]")
        elif kind == "v":
            out.append(f"[={rest}]")
        else:
            out.append(f"[{rest}]")
    return "".join(out)


# ---- entries -------------------------------------------------------------------------------------

class Entry:
    __slots__ = ("api_version", "fields", "manager", "operation", "subresource", "time")

    def __init__(self, manager: str, operation: str, api_version: str, subresource: str,
                 fields: set[Path], time: str) -> None:
        self.manager = manager
        self.operation = operation
        self.api_version = api_version
        self.subresource = subresource
        self.fields = fields
        self.time = time

    def same_manager(self, other: Entry) -> bool:
        return (self.manager, self.operation, self.subresource) == (
            other.manager, other.operation, other.subresource)

    def describe(self) -> str:
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation,
                               "apiVersion": self.api_version, "time": self.time,
                               "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def decode_entries(obj: dict[str, Any]) -> list[Entry]:
    """The entries as stored. Writes validate them, but objects stored before that check may
    hold anything: what is not an entry is skipped, and so is the path of the object itself
    (a top-level ``"."``), which no field operation can use."""
    managed = obj.get("metadata", {}).get("managedFields")
    out: list[Entry] = []
    for e in managed if isinstance(managed, list) else []:
        if not isinstance(e, dict) or not isinstance(e.get("manager"), str):
            continue
        fields = {p for p in from_fields_v1(e.get("fieldsV1")) if p}
        out.append(Entry(e["manager"], str(e.get("operation", "Update")), str(e.get("apiVersion", "")),
                         str(e.get("subresource", "")), fields, str(e.get("time", ""))))
    return out


def _store(obj: dict[str, Any], entries: list[Entry]) -> None:
    kept = [e.encode() for e in entries if e.fields]
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def manager_from_user_agent(user_agent: str) -> str:
    """Kubernetes' default manager: the User-Agent up to the first '/' (``kubectl``)."""
    name = user_agent.split("/", 1)[0].strip()
    return name[:128] or "unknown"


# ---- updates ------------------------------------------------------------------------------------

def track_update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, api_version: str,
                 schema: Schema, subresource: str, status_split: bool) -> None:
    """Record a non-apply write by ``manager``: it owns what it changed; fields it removed are
    no one's any more. Sets ``new``'s managedFields in place."""
    entries = decode_entries(old) if old is not None else []
    before = fields(old, schema, subresource, status_split) if old is not None else {}
    after = fields(new, schema, subresource, status_split)
    changed = {p for p, v in after.items() if p not in before or before[p] != v}
    removed = set(before) - set(after)
    if not changed and not removed:
        _store(new, entries)
        return
    me = Entry(manager, "Update", api_version, subresource, set(), now())
    for e in entries:
        if e.same_manager(me) and e.api_version == api_version:
            me = e
        else:
            e.fields -= changed | removed
    me.fields = (me.fields | changed) - removed
    me.time = now()
    if me not in entries:
        entries.append(me)
    _store(new, entries)


# ---- apply --------------------------------------------------------------------------------------

def _merge(live: Any, cfg: Any, schema: Schema) -> Any:
    if isinstance(cfg, dict) and isinstance(live, dict) and (
            schema is None or schema.get("x-kubernetes-map-type") != "atomic"):
        out = dict(live)
        for k, v in cfg.items():
            if v is None:
                continue
            out[k] = _merge(live.get(k), v, _child(schema, k))
        return out
    if isinstance(cfg, list) and isinstance(live, list):
        lt = _list_type(schema)
        if lt == "map":
            keys, items = _map_keys(schema), _items(schema)
            by_key = {_key_element(i, keys): i for i in cfg}
            merged = []
            for item in live:
                k = _key_element(item, keys)
                merged.append(_merge(item, by_key.pop(k), items) if k in by_key else item)
            merged.extend(by_key.values())
            return merged
        if lt == "set":
            return live + [i for i in cfg if i not in live]
    return cfg


def _remove(obj: Any, path: Path, schema: Schema) -> None:
    """Remove the member at ``path`` (a field, a map entry, a list item) if present."""
    if not path:
        return
    head, rest = path[0], path[1:]
    kind, _, name = head.partition(":")
    if kind == "f" and isinstance(obj, dict):
        if not rest:
            obj.pop(name, None)
        elif name in obj:
            _remove(obj[name], rest, _child(schema, name))
        return
    if isinstance(obj, list):
        keys = _map_keys(schema)
        for i, item in enumerate(obj):
            element = _key_element(item, keys) if kind == "k" else _value_element(item)
            if element == head:
                if not rest:
                    del obj[i]
                else:
                    _remove(item, rest, _items(schema))
                return


def _section(obj: dict[str, Any], subresource: str, status_split: bool) -> dict[str, Any]:
    """The part of an applied configuration that this endpoint manages."""
    if not status_split:
        return obj
    if subresource == "status":
        return {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "status")} | {
            "metadata": {}}
    return {k: v for k, v in obj.items() if k != "status"}


def apply(live: dict[str, Any] | None, config: dict[str, Any], manager: str, api_version: str,
          schema: Schema, subresource: str, status_split: bool, force: bool) -> dict[str, Any]:
    """The object after ``manager`` applies ``config`` to ``live`` (None: a create). Raises a
    409 Conflict naming every conflicting manager and field unless ``force``."""
    config = _section(config, subresource, status_split)
    if live is None:
        result = {k: v for k, v in config.items()}
        result["metadata"] = dict(config.get("metadata") or {})
        applied = set(fields(result, schema, subresource, status_split))
        result["metadata"].pop("managedFields", None)
        _store(result, [Entry(manager, "Apply", api_version, subresource, applied, now())])
        return result
    entries = decode_entries(live)
    live_fields = fields(live, schema, subresource, status_split)
    if not entries and live_fields:
        entries = [Entry(BEFORE_FIRST_APPLY, "Update", api_version, subresource, set(live_fields), now())]
    me = Entry(manager, "Apply", api_version, subresource, set(), now())
    others = []
    for e in entries:
        if e.same_manager(me):
            me = e
        else:
            others.append(e)
    cfg_meta = {k: v for k, v in (config.get("metadata") or {}).items()
                if k in ("labels", "annotations", "finalizers", "ownerReferences")}
    cfg = {k: v for k, v in config.items() if k not in ("apiVersion", "kind", "metadata")}
    merged: dict[str, Any] = _merge({k: v for k, v in live.items() if k != "metadata"}, cfg, schema)
    merged["metadata"] = _merge(live["metadata"], cfg_meta, _META_SCHEMA)
    applied = set(fields({**cfg, "metadata": cfg_meta}, schema, subresource, status_split))
    after = fields(merged, schema, subresource, status_split)
    changed = {p for p in applied if p in after and (p not in live_fields or live_fields[p] != after[p])}
    conflicts = [(p, e) for e in others if e.subresource == subresource for p in sorted(e.fields & changed)]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for p, e in conflicts:
        e.fields.discard(p)
    # Fields this manager applied before and applies no more go, unless someone else owns them.
    owned_by_others = set().union(*(e.fields for e in others)) if others else set()
    # Shallow paths first: removing a list item or map entry takes its fields with it (and a
    # key field must not be removed from an item that stays).
    for p in sorted(me.fields - applied - owned_by_others, key=len):
        if p[0] == "f:metadata":
            _remove(merged["metadata"], p[1:], _META_SCHEMA)
        else:
            _remove(merged, p, schema)
    me.fields = applied
    me.api_version = api_version
    me.time = now()
    entries = [*others, me]
    _store(merged, entries)
    return merged


def conflict_error(conflicts: list[tuple[Path, Entry]]) -> Conflict:
    causes = [("FieldManagerConflict", f"conflict with {e.describe()}", path_string(p)) for p, e in conflicts]
    if len(conflicts) == 1:
        p, e = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {e.describe()}: {path_string(p)}"
    else:
        by_manager: dict[str, list[str]] = {}
        for p, e in conflicts:
            by_manager.setdefault(e.describe(), []).append(path_string(p))
        lines = []
        for m in sorted(by_manager):
            lines.append(f"conflicts with {m}:")
            lines.extend(f"- {p}" for p in by_manager[m])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return Conflict(message, causes=causes)
