"""The program's modules import one another one way: no import cycle between any two of components/."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import ROOT


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def program_imports() -> dict[str, set[str]]:
    """components module -> the components modules it imports, at the top or inside a function."""
    modules = {module_name(p): p for p in sorted((ROOT / "components").rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import name` imports the module pkg.name where there is one, else pkg itself.
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                             for a in node.names)  # fmt: skip
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the modules on it from the first one met, that one again at the end."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            loop = path[path.index(name) :]
            if sorted(loop) not in [sorted(c[:-1]) for c in found]:
                found.append([*loop, name])
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = program_imports()
    assert "components.config" in graph["components.artifacts"]  # from components.config import ClusterConfig
    assert "components.versions" in graph["components.downloads"]  # from components import versions
    assert "components.config.values" in graph["components.config.loader"]  # a sibling, by its full name
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_program_modules() -> None:
    assert cycles(program_imports()) == []
