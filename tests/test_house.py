"""The house (../shared/design/HOUSE.md, docs): no two modules of src/grace_lit import each other, directly or
through others. Every import statement counts, a function's own included: a cycle hidden in a function still
ties the two modules' jobs together."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "grace_lit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports: ``from a.b import c`` names a.b.c where that is a module, else
    a.b; relative imports resolved against the file's package."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports(path, known) - {name} for name, path in files.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, None when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_three_modules_and_none_in_a_tree():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_names_the_module_imported_from_a_package():
    edges = graph()
    assert "grace_lit.plots" in edges["grace_lit.report"]  # imported inside main(), only when plotting
    assert "grace_lit.conformal" in edges["grace_lit.calibration"]
    assert "grace_lit.data.windows" in edges["grace_lit.predict"]  # from grace_lit.data.windows import ...


def test_no_two_modules_import_each_other_directly_or_through_others():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_conformal_core_is_ground():
    """The forms import nothing of the package but its errors: no run directories, no Lightning."""
    assert graph()["grace_lit.conformal"] == {"grace_lit.errors"}
    assert "lightning" not in (PACKAGE / "conformal.py").read_text()


def test_the_interval_study_is_an_entry_point_nothing_imports():
    assert not [name for name, edges in graph().items() if "grace_lit.intervals" in edges]
