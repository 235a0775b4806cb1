"""The layers import one way: each package imports only the packages below it, and no
two modules import each other, directly or through others.

From the bottom: ``domain`` < ``projections`` < ``schema`` < ``app`` < ``bench``. Every
import counts, also one inside a function or under ``TYPE_CHECKING``: each is a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("domain", "projections", "schema", "app", "bench")


def modules(root: Path) -> dict[str, Path]:
    """Every module of the layered packages under ``root``, by dotted name."""
    found: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, module) for each module of ``known`` that ``name`` (at ``path``) imports."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{source}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:  # ``from m import name``: the module m
                target = target.rpartition(".")[0]
            if target and target != name:
                yield node.lineno, target


def graph(root: Path) -> dict[str, dict[str, int]]:
    """For each module, the modules it imports and the line of the first import."""
    known = modules(root)
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges[name] = {}
        for line, target in imported(name, path, known):
            edges[name].setdefault(target, line)
    return edges


def upward_imports(root: Path) -> list[str]:
    rank = {package: n for n, package in enumerate(LAYERS)}
    return [
        f"{name} (line {line}) imports {target}"
        for name, targets in graph(root).items()
        for target, line in targets.items()
        if rank[target.split(".")[0]] > rank[name.split(".")[0]]
    ]


def circles(root: Path) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    edges = graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in edges:
        if module not in index:
            visit(module)
    return found


def test_no_package_imports_a_layer_above_its_own() -> None:
    assert upward_imports(ROOT) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(ROOT) == []


def test_the_checks_find_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    files = {
        "domain/__init__.py": "",
        "domain/rules.py": "from app.settings import LIMIT\n",
        "projections/__init__.py": "",
        "schema/__init__.py": "",
        "app/__init__.py": "",
        "app/settings.py": "from . import wiring\nLIMIT = 1\n",
        "app/wiring.py": "def late():\n    from app.settings import LIMIT\n",
        "bench/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert upward_imports(tmp_path) == ["domain.rules (line 1) imports app.settings"]
    assert circles(tmp_path) == [["app.settings", "app.wiring"]]
