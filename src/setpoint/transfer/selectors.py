"""Label and field selectors applied by the agent, for the one transport whose source cannot
filter: the command stream carries every object of a kind, and an agent keeps only its share.

The grammar is Kubernetes': labels ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``,
``k``, ``!k``, joined by commas; fields ``path=v``, ``path==v``, ``path!=v`` on dotted paths
(``spec.nodeName``, ``metadata.namespace``). The server validates selectors on every other
request, so an agent's selector was already checked when it listed; this only evaluates it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from setpoint.types import Object

Predicate = Callable[[Object], bool]

_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for c in selector:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _requirement(term: str, value_of: Callable[[Object, str], str | None]) -> Predicate:
    m = _SET.match(term)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda o: value_of(o, key) in values
        return lambda o: value_of(o, key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, _, value = (s.strip() for s in term.partition(op))
            if op == "!=":
                return lambda o: value_of(o, key) != value
            return lambda o: value_of(o, key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda o: value_of(o, key) is None
    return lambda o: value_of(o, term) is not None


def _label(obj: Object, key: str) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    value = labels.get(key)
    return value if isinstance(value, str) else None


def _field(obj: Object, path: str) -> str | None:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    if cur is None:
        return ""  # Kubernetes compares absent fields as empty
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def predicate(label_selector: str | None, field_selector: str | None) -> Predicate | None:
    """None when there is nothing to filter."""
    reqs = [_requirement(t, _label) for t in _split(label_selector or "")]
    reqs += [_requirement(t, _field) for t in _split(field_selector or "")]
    if not reqs:
        return None
    return lambda o: all(r(o) for r in reqs)
