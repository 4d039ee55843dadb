"""The layers of docs/architecture.md hold: no module imports a higher layer, and no import cycle exists.

Every `import downsize...` counts, at module level or inside a function: a deferred import still ties the
two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "downsize"

# the table in docs/architecture.md; keep both in step
LAYERS = {
    "errors": 0,
    "types": 0,
    "config": 1,
    "shapes": 1,
    "prompting": 1,
    "splits": 1,
    "copying": 1,
    "contracts": 1,
    "sites": 1,
    "artifacts": 1,
    "pricing": 1,
    "store": 2,
    "backends": 2,
    "importers": 3,
    "curate": 3,
    "discover": 3,
    "decide": 3,
    "calls": 3,
    "train": 4,
    "evaluate": 4,
    "select": 4,
    "route": 5,
    "gateway": 6,
    "demo": 6,
    "flywheel": 6,
    "report": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every downsize module a file imports: `from a.b import c` is module a.b.c when that exists, else a.b."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("downsize")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("downsize"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path, set(modules)):
            # `from downsize.x import y` may name a submodule y or a name in x: resolve to a known module
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != name and imported != "downsize":
                targets.add(imported)
        edges[name] = targets
    return edges


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in graph() if m != "downsize" and layer(m) is None)
    assert not unplaced, f"add these to LAYERS here and to docs/architecture.md: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{src} (L{layer(src)}) imports {dst} (L{layer(dst)})"
        for src, targets in graph().items()
        for dst in targets
        if src != "downsize" and (layer(dst) or 0) > (layer(src) or 0)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_architecture_page_names_every_layer() -> None:
    """docs/architecture.md's table lists each top-level module or package in the layer this test enforces."""
    page = (PACKAGE.parent.parent / "docs" / "architecture.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| L")]
    for name, level in LAYERS.items():
        row = next((r for r in rows if r.startswith(f"| L{level} ")), "")
        assert f"`{name}" in row, f"docs/architecture.md: layer L{level} does not name `{name}`"
