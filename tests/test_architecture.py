"""The architecture rules of docs/architecture.md, read from the code.

Imports are read with :mod:`ast` (in-function imports included), so a rule
broken by a lazy import fails here too:

* ``r2vcal`` never imports ``pipelines``;
* no import cycle inside ``r2vcal`` or inside ``pipelines``;
* the longest chain of imports between ``pipelines`` modules has at most
  :data:`MAX_PIPELINES_DEPTH` modules;
* no private name (``_x``, dunders aside) is imported from another module or
  read as ``module._x``: shared helpers live in private modules under public
  names;
* no function is longer than :data:`MAX_FUNCTION_LINES` lines (its
  docstring left out).
"""

from __future__ import annotations

import ast
import functools
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("r2vcal", "pipelines")
MAX_PIPELINES_DEPTH = 6
MAX_FUNCTION_LINES = 120


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "tasks" in path.relative_to(ROOT / pkg).parts:
                continue  # task data run inside containers, not package code
            out[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def _resolve(module: str, level: int, current: str, is_pkg: bool) -> str:
    if not level:
        return module
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


@functools.cache
def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """Per module: ``(imported module, imported name or None, line)``."""
    mods = _modules()
    out: dict[str, list[tuple[str, str | None, int]]] = {}
    for name, (path, tree) in mods.items():
        is_pkg = path.name == "__init__.py"
        found: list[tuple[str, str | None, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, None, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(node.module or "", node.level, name, is_pkg)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    # ``from pkg import module`` imports the module itself
                    found.append(
                        (sub, None, node.lineno)
                        if sub in mods
                        else (src, a.name, node.lineno)
                    )
        out[name] = [f for f in found if f[0].split(".")[0] in PACKAGES]
    return out


def _graph(pkg: str) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods if m.split(".")[0] == pkg}
    for m in graph:
        for target, _, _ in _imports()[m]:
            if target in graph and target != m:
                graph[m].add(target)
    return graph


def test_r2vcal_never_imports_pipelines():
    bad = [
        f"{m} line {line}: imports {target}"
        for m, found in _imports().items()
        if m.startswith("r2vcal")
        for target, _, line in found
        if target.split(".")[0] == "pipelines"
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_cycles(pkg):
    try:
        tuple(TopologicalSorter(_graph(pkg)).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle in {pkg}: {' -> '.join(exc.args[1])}")


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (as a list of modules) of an acyclic graph."""

    @functools.cache
    def chain(m: str) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for n in graph[m]:
            c = chain(n)
            if len(c) > len(best):
                best = c
        return (m, *best)

    return list(max((chain(m) for m in graph), key=len, default=()))


def test_pipelines_import_depth():
    # A subpackage (pipelines.envs) counts as one module, as in issue 17.
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for m, targets in _graph("pipelines").items():
        graph.setdefault(top(m), set()).update(top(t) for t in targets)
    for m, targets in graph.items():
        targets.discard(m)
    chain = longest_chain(graph)
    assert len(chain) <= MAX_PIPELINES_DEPTH, " -> ".join(chain)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_cross_modules():
    mods = _modules()
    bad = [
        f"{m} line {line}: {name} from {src}"
        for m, found in _imports().items()
        for src, name, line in found
        if name is not None and _private(name) and src != m
    ]
    for m, (_, tree) in mods.items():
        bound = {}  # local name -> internal module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in mods:
                        bound[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    src = _resolve(
                        node.module or "",
                        node.level,
                        m,
                        mods[m][0].name == "__init__.py",
                    )
                    if f"{src}.{a.name}" in mods:
                        bound[a.asname or a.name] = f"{src}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and bound[node.value.id] != m
                and _private(node.attr)
            ):
                bad.append(f"{m} line {node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function, its docstring left out."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_no_long_functions():
    long = [
        f"{m}:{node.lineno} {node.name} ({function_lines(node)} lines)"
        for m, (_, tree) in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and function_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)
