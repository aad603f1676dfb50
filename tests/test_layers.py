"""Imports point down the layers (docs/architecture.md): a module may import only from the
packages its layer is allowed to. Read from the source with ``ast``, so imports made inside
functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import setpoint

ROOT = Path(setpoint.__file__).resolve().parent

# Modules any layer may import: names both ends of a protocol agree on, and nothing else.
SHARED_MODULES = {"setpoint.transfer.subjects", "setpoint.transfer.digest"}

# What each top-level part of the package may import from setpoint (besides itself).
BASE = {"types", "tasks", "backoff", "files", "stackgraph", "crdgen", "codegen", "__init__"}
ALLOWED: dict[str, set[str]] = {
    "types": set(),
    "tasks": set(),
    "backoff": set(),
    "files": set(),
    "stackgraph": set(),
    "crdgen": set(),
    "codegen": set(),
    "__init__": set(),
    "crds": set(),
    "testing": BASE,
    "transfer": BASE | {"client"},
    "store": BASE,
    "server": BASE | {"store", "crds"},
    "client": BASE,
    "kinds": BASE | {"client"},
    "agent": BASE | {"client", "transfer"},
    "drivers": BASE | {"agent", "client", "transfer"},
    "templates": BASE | {"agent", "client", "transfer"},
    "controllers": BASE | {"drivers", "templates", "agent", "client", "crds", "transfer"},
    "node": BASE | {"controllers", "drivers", "templates", "agent", "client", "crds", "transfer"},
    "cli": BASE | {"node", "controllers", "drivers", "templates", "agent", "client", "crds", "server", "store",
                   "transfer"},
    "__main__": {"cli"},
}


def _part(module_path: Path) -> str:
    rel = module_path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _module_or_init(name: str) -> str:
    return name if (ROOT / name).is_dir() or (ROOT / f"{name}.py").exists() else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "setpoint":  # from setpoint import x: a module, or a name in __init__
                found += [(node.lineno, f"setpoint.{_module_or_init(a.name)}") for a in node.names]
    return found


def test_every_part_has_a_layer() -> None:
    parts = {_part(p) for p in ROOT.rglob("*.py")}
    assert parts <= set(ALLOWED), f"parts without a layer in this test: {sorted(parts - set(ALLOWED))}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        part = _part(path)
        for line, module in _imports(path):
            names = module.split(".")
            if names[0] != "setpoint" or module in SHARED_MODULES:
                continue
            if len(names) < 2:
                names.append("__init__")
            target = names[1]
            if target != part and target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {part} imports {module}")
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)
