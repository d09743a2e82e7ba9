"""Dependencies between agentflow's parts point one way (docs/design.md §2).

Every `import agentflow.X` / `from agentflow.X import ...` in the package, at module level
or inside a function, is checked against the allowed direction below. A new import that
points up the list (nodes importing graph, models importing nodes, the scorers importing
nodes, ...) fails here with the file and line, before it becomes an import-order cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agentflow"

LEAVES = {"prompts", "state", "extract"}
# part -> the parts it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "prompts": set(),
    "state": set(),
    "extract": {"prompts"},
    "models": LEAVES,
    "tools": LEAVES,
    "nodes": LEAVES | {"tools"},
    "graph": LEAVES | {"tools", "models", "nodes"},
    "factory": LEAVES | {"tools", "models", "nodes", "graph"},
    "evals": LEAVES | {"tools", "models", "graph", "factory"},
    "trainer": LEAVES | {"tools", "models", "graph", "factory", "evals"},
    "server": LEAVES | {"tools", "models", "nodes", "graph", "factory"},
    "cli": LEAVES | {"tools", "models", "nodes", "graph", "factory", "evals", "trainer", "__init__"},
    "__init__": {"graph", "state"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_parts(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "agentflow":  # `from agentflow import prompts` names a part;
                # `from agentflow import build_agentflow` the package's top-level API
                names = [f"agentflow.{a.name if a.name in ALLOWED else '__init__'}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "agentflow" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_part_is_classified():
    parts = {_part(p) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(ALLOWED), f"unclassified parts of agentflow: {sorted(parts - set(ALLOWED))}"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        for line, target in _imported_parts(ast.parse(path.read_text(), str(path))):
            if target != part and target not in ALLOWED.get(part, set()):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({part} -> {target})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_layer_order_has_no_cycle():
    seen: dict[str, int] = {}

    def visit(part: str, stack: tuple[str, ...]) -> None:
        assert part not in stack, f"cycle: {' -> '.join(stack + (part,))}"
        if seen.get(part):
            return
        for dep in ALLOWED[part]:
            visit(dep, stack + (part,))
        seen[part] = 1

    for part in ALLOWED:
        visit(part, ())
