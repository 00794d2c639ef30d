"""The package's shape: its tree, its import cycles and its largest modules.

``python -m benchmarks structure`` (or ``make bench ARGS=structure``) prints them. Every
import counts, the lazy ones inside functions and those under ``TYPE_CHECKING`` too: an
import of ``nansearch.a.b`` is an edge to that module, and ``from nansearch.a import X``
is an edge to ``nansearch.a.X`` when X is a module, else to the package ``nansearch.a``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nansearch"
LIMIT = 400  # lines a module may reach before it wants splitting along a seam


@dataclass
class Structure:
    modules: dict[str, Path]
    graph: dict[str, set[str]]
    cycles: list[list[str]] = field(default_factory=list)

    def lines(self, name: str) -> int:
        return len(self.modules[name].read_text().splitlines())

    def largest(self, count: int = 5) -> list[tuple[int, str]]:
        return sorted(((self.lines(n), n) for n in self.modules), reverse=True)[:count]


def module_names(package: Path) -> dict[str, Path]:
    root = package.parent
    mods = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph(package: Path = PACKAGE) -> Structure:
    mods = module_names(package)
    top = package.name

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str | None] = set()
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.split(".")[0] == top}
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: from . import x, from .a import b
                    parts = base.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    module = ".".join([*parts, module] if module else parts)
                if module.split(".")[0] != top:
                    continue
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    deps.add(full if full in mods else owner(module))
        deps -= {None, name, top}  # the top package only re-exports
        graph[name] = {d for d in deps if d is not None}
    return Structure(mods, graph, strongly_connected(graph))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import one another, directly or round a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def tree(structure: Structure) -> str:
    """One line per package: its modules and their sizes in lines."""
    packages: dict[str, list[str]] = {}
    for name, path in structure.modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        if path.name != "__init__.py":
            packages.setdefault(package, []).append(name)
        else:
            packages.setdefault(package, [])
    out = []
    for package in sorted(packages):
        mods = ", ".join(
            f"{n.rpartition('.')[2]} {structure.lines(n)}" for n in sorted(packages[package])
        )
        out.append(f"{package.replace('.', '/')}/: {mods}")
    return "\n".join(out)


def run() -> str:
    structure = import_graph()
    lines = [tree(structure), "", f"import cycles: {len(structure.cycles)}"]
    for group in structure.cycles:
        lines.append("  " + " <-> ".join(group))
    over = [n for n in structure.modules if structure.lines(n) > LIMIT]
    lines.append(
        "largest modules: " + ", ".join(f"{n} ({size} lines)" for size, n in structure.largest())
    )
    lines.append(f"modules over {LIMIT} lines: {len(over)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
