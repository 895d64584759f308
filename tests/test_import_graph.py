"""The package's import graph is one-way: no module imports, even inside a function, one that imports it back.

The graph comes from the source (every ``import`` statement of ``kl_retrievers/**/*.py``, at module
level or inside functions), so a cycle is caught even where lazy imports keep it from failing at
import time. Two kinds of statement are left out, because they never make a module depend on
another: imports under ``if TYPE_CHECKING:`` (never run) and the deferred re-exports listed in
:data:`DEFERRED_REEXPORTS` (a module-level ``__getattr__`` that keeps an old name importable
after it moved to a module that sits on top). The implicit import of a parent package
(``kl_retrievers/__init__.py`` runs before any submodule) is not an edge either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "kl_retrievers"

#: (module, module it names only inside its ``__getattr__``): names kept importable where they were.
DEFERRED_REEXPORTS = {("kl_retrievers.evaluation", "kl_retrievers.evaluate_cli")}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of the package."""
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_not_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_type_checking(test.operand)


def _imports(node: ast.AST, in_getattr: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node`` that can run, and whether it sits in a module ``__getattr__``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:  # the body never runs; an ``else:`` does
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    yield sub, in_getattr
                yield from _imports(sub, in_getattr)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_getattr
        if isinstance(node, ast.Module) and isinstance(child, ast.If) and _is_not_type_checking(child.test):
            # ``if not TYPE_CHECKING: def __getattr__...``: still the module's own ``__getattr__`` (hidden from
            # type checkers so that a misspelt name is an error there)
            for sub in child.body:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    yield sub, in_getattr
                getattr_def = isinstance(sub, ast.FunctionDef) and sub.name == "__getattr__"
                yield from _imports(sub, in_getattr or getattr_def)
            for sub in child.orelse:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    yield sub, in_getattr
                yield from _imports(sub, in_getattr)
            continue
        deferred = in_getattr or (
            isinstance(node, ast.Module) and isinstance(child, ast.FunctionDef) and child.name == "__getattr__"
        )
        yield from _imports(child, deferred)


def _targets(stmt: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules an import statement loads (the nearest module for a name inside one)."""

    def nearest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(stmt, ast.Import):
        found = {nearest(alias.name) for alias in stmt.names}
    else:
        base = stmt.module or ""
        if stmt.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - stmt.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        found = {nearest(f"{base}.{alias.name}") for alias in stmt.names}
    return {name for name in found if name is not None and name != module}


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``(edges, deferred)``: module -> the package modules it imports, and the ``__getattr__``-only edges."""
    files = module_files(package_dir)
    names = set(files)
    edges: dict[str, set[str]] = {name: set() for name in files}
    in_getattr_only: dict[tuple[str, str], bool] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for stmt, in_getattr in _imports(tree):
            for target in _targets(stmt, name, path.name == "__init__.py", names):
                edges[name].add(target)
                key = (name, target)
                in_getattr_only[key] = in_getattr_only.get(key, True) and in_getattr
    deferred = {key for key, only in in_getattr_only.items() if only}
    return edges, deferred


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _describe(component: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(edges[a] & inside))


def test_no_import_cycle_among_package_modules() -> None:
    edges, _ = import_graph(PACKAGE_DIR)
    for module, target in DEFERRED_REEXPORTS:
        edges[module].discard(target)
    found = cycles(edges)
    assert not found, "import cycles (module -> module it imports): " + " | ".join(_describe(c, edges) for c in found)


def test_deferred_reexports_are_the_known_ones_and_only_in_getattr() -> None:
    edges, deferred = import_graph(PACKAGE_DIR)
    back_edges = {(a, b) for a, b in deferred if a in edges[b]}  # a __getattr__ naming a module above it
    assert back_edges <= DEFERRED_REEXPORTS, f"undeclared deferred re-exports: {back_edges - DEFERRED_REEXPORTS}"
    assert deferred >= DEFERRED_REEXPORTS, f"not (only) inside __getattr__: {DEFERRED_REEXPORTS - deferred}"


def test_the_check_sees_function_level_relative_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # lazy, relative: still an edge
    (pkg / "sub" / "__init__.py").write_text("from .c import y\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.sub\n")
    (pkg / "d.py").write_text("def __getattr__(name):\n    from pkg import e\n")
    (pkg / "e.py").write_text("import pkg.d\n")
    edges, deferred = import_graph(pkg)
    assert edges["pkg.b"] == {"pkg.a"} and edges["pkg.sub"] == {"pkg.sub.c"} and edges["pkg.sub.c"] == set()
    assert cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.e"]]
    assert deferred == {("pkg.d", "pkg.e")}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """Each module, imported first in a new process, loads without a partly initialised module."""
    root = PACKAGE_DIR.parent

    def load(module: str) -> tuple[str, int, str]:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], cwd=root, capture_output=True, text=True, timeout=300
        )
        return module, proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [(m, err) for m, rc, err in pool.map(load, sorted(module_files(PACKAGE_DIR))) if rc != 0]
    assert not failed, f"modules that fail to import on their own: {failed}"


@pytest.mark.parametrize("name", ["add_evaluate_command", "run_evaluate"])
def test_moved_cli_names_still_import_from_evaluation(name: str) -> None:
    import kl_retrievers.evaluate_cli
    import kl_retrievers.evaluation

    assert getattr(kl_retrievers.evaluation, name) is getattr(kl_retrievers.evaluate_cli, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = kl_retrievers.evaluation.nope  # type: ignore[attr-defined]
