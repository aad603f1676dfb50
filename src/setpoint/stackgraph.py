"""Stacks as graphs: the references a Stack's resource templates make (``${resources.vpc.status.vpcId}``,
``${parameters.region}``) and their explicit ``dependsOn``, checked, ordered and filled in.

Pure functions, no I/O: the API server uses them to refuse a Stack with a cycle or a reference to
nothing (422, naming the resources involved), the controller to order creation and destruction and
to fill references from converged objects, the CLI to print the graph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

REF = re.compile(r"\$\{(resources|parameters)\.([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_-]+)*)\}")


class StackError(ValueError):
    """What is wrong with a Stack, with the JSON path of the field at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Graph:
    names: list[str]  # in the order of spec.resources
    deps: dict[str, set[str]] = field(default_factory=dict)  # resource -> what it needs first

    def dependents(self, name: str) -> set[str]:
        return {n for n, d in self.deps.items() if name in d}

    def order(self) -> list[str]:
        """Dependencies first (a topological order, stable by spec order)."""
        done: list[str] = []
        left = list(self.names)
        while left:
            ready = [n for n in left if self.deps[n] <= set(done)]
            done.extend(ready)
            left = [n for n in left if n not in ready]
        return done

    def dot(self, title: str = "stack") -> str:
        lines = [f'digraph "{title}" {{', "  rankdir=LR;"]
        lines += [f'  "{n}";' for n in self.names]
        lines += [f'  "{d}" -> "{n}";' for n in self.names for d in sorted(self.deps[n])]
        return "\n".join(lines) + "\n}\n"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def build(spec: Mapping[str, Any]) -> Graph:
    """The graph of ``spec`` (a Stack's spec); raises StackError for duplicates, references to
    nothing and cycles, naming the resources involved."""
    resources = spec.get("resources") or []
    if not isinstance(resources, list):
        raise StackError("spec.resources", "must be a list")
    parameters = spec.get("parameters") or {}
    names: list[str] = []
    for i, r in enumerate(resources):
        name = r.get("name") if isinstance(r, Mapping) else None
        if not isinstance(name, str) or not name:
            raise StackError(f"spec.resources[{i}].name", "is required")
        if name in names:
            raise StackError(f"spec.resources[{i}].name", f"duplicate resource {name!r}")
        names.append(name)
    graph = Graph(names, {n: set() for n in names})
    for i, r in enumerate(resources):
        name = r["name"]
        for s in _strings(r.get("template")):
            for kind, ref, _ in REF.findall(s):
                if kind == "parameters":
                    if ref not in parameters:
                        raise StackError(f"spec.resources[{i}].template", f"refers to parameter {ref!r}, "
                                         "which spec.parameters does not define")
                elif ref not in graph.deps:
                    raise StackError(f"spec.resources[{i}].template", f"resource {name!r} refers to "
                                     f"resource {ref!r}, which the stack does not define")
                else:
                    graph.deps[name].add(ref)
        for j, d in enumerate(r.get("dependsOn") or []):
            if d not in graph.deps:
                raise StackError(f"spec.resources[{i}].dependsOn[{j}]", f"resource {name!r} depends on "
                                 f"{d!r}, which the stack does not define")
            graph.deps[name].add(d)
    for i, r in enumerate(resources):
        if r["name"] in graph.deps[r["name"]]:
            raise StackError(f"spec.resources[{i}]", f"resource {r['name']!r} refers to itself")
    cycle = _cycle(graph)
    if cycle:
        raise StackError("spec.resources", "a dependency cycle: " + " -> ".join([*cycle, cycle[0]]))
    for name, expr in (spec.get("outputs") or {}).items():
        for kind, ref, _ in REF.findall(str(expr)):
            if kind == "resources" and ref not in graph.deps:
                raise StackError(f"spec.outputs.{name}", f"refers to resource {ref!r}, which the stack does not define")
    return graph


def _cycle(graph: Graph) -> list[str]:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.deps[n]):
            if state.get(d) == 1:
                return path[path.index(d):]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[n] = 2
        path.pop()
        return []

    for n in graph.names:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def lookup(root: Any, dotted: str) -> Any:
    value = root
    for part in [p for p in dotted.split(".") if p]:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(dotted)
    return value


def fill(template: Any, parameters: Mapping[str, Any], objects: Mapping[str, Any]) -> Any:
    """``template`` with every reference replaced: a string that is one reference becomes the
    value itself (a number stays a number); one embedded in text becomes text. Raises KeyError
    for a value not there (yet)."""
    if isinstance(template, Mapping):
        return {k: fill(v, parameters, objects) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, parameters, objects) for v in template]
    if not isinstance(template, str) or "${" not in template:
        return template

    def value(m: re.Match[str]) -> Any:
        kind, ref, rest = m.groups()
        return lookup(parameters[ref], rest) if kind == "parameters" else lookup(objects[ref], rest)

    whole = REF.fullmatch(template)
    if whole:
        return value(whole)
    return REF.sub(lambda m: str(value(m)), template)
