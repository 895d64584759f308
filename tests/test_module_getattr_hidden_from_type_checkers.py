"""A module-level ``__getattr__`` (PEP 562) is hidden from type checkers in every module of the package.

mypy reads a visible module ``__getattr__(name: str) -> Any`` as "every name exists, typed ``Any``", so a typo
such as ``from kl_retrievers.evaluation import evaluate_modle`` passed it. The package's pattern
(``kl_retrievers/__init__.py``): the function sits under ``if not TYPE_CHECKING:`` and the names it serves are
imported under ``if TYPE_CHECKING:``. Checked on the source (a cold mypy run takes about a minute).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import kl_retrievers

PACKAGE = Path(kl_retrievers.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _is_not_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_type_checking(test.operand)


def _visible_getattrs(body: list[ast.stmt]) -> list[int]:
    """Lines of the module-level ``def __getattr__`` a type checker sees (any not under ``if not TYPE_CHECKING``)."""
    found = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "__getattr__":
            found.append(node.lineno)
        elif isinstance(node, ast.If):
            if not _is_not_type_checking(node.test):
                found += _visible_getattrs(node.body)
            if not _is_type_checking(node.test):  # the else of `if TYPE_CHECKING:` is hidden too
                found += _visible_getattrs(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _visible_getattrs(part)
    return found


def _type_checker_names(tree: ast.Module) -> set[str]:
    """Module-level names a type checker sees: imports, definitions and assignments, also under ``if TYPE_CHECKING``."""
    names: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).partition(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Try) or (isinstance(node, ast.If) and not _is_not_type_checking(node.test)):
                walk(node.body)

    walk(tree.body)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_getattr_is_visible_to_type_checkers(path: Path) -> None:
    lines = _visible_getattrs(ast.parse(path.read_text(encoding="utf-8")).body)
    assert not lines, (
        f"{path.relative_to(PACKAGE.parent)}:{lines[0]}: a module-level __getattr__ that type checkers see lets "
        "any misspelt name through as Any: put it under `if not TYPE_CHECKING:` and import the names it serves "
        "under `if TYPE_CHECKING:` (as kl_retrievers/__init__.py does)"
    )


@pytest.mark.parametrize(
    ("module", "served"),
    [
        ("kl_retrievers.evaluation", "_MOVED_TO_CLI"),
        ("kl_retrievers.evaluate_cli", "_FROM_EVALUATION"),
        ("kl_retrievers.training", "_LAZY"),
        ("kl_retrievers", "_LAZY"),
    ],
)
def test_the_names_a_module_getattr_serves_are_visible_to_type_checkers(module: str, served: str) -> None:
    mod = importlib.import_module(module)
    path = Path(mod.__file__ or "")
    seen = _type_checker_names(ast.parse(path.read_text(encoding="utf-8")))
    names = set(getattr(mod, served))
    assert names, served
    assert names <= seen, sorted(names - seen)
    assert set(getattr(mod, "__all__", ())) <= seen, sorted(set(mod.__all__) - seen)


def test_the_served_names_still_resolve_at_run_time() -> None:
    from kl_retrievers.evaluate_cli import metric_cutoff
    from kl_retrievers.evaluation import add_evaluate_command, run_evaluate
    from kl_retrievers.training import TrainConfig

    assert metric_cutoff("recall@100") == 100
    assert run_evaluate.__module__ == add_evaluate_command.__module__ == "kl_retrievers.evaluate_cli"
    assert TrainConfig.__module__ == "kl_retrievers.training.trainer"
    for module in ("kl_retrievers.evaluation", "kl_retrievers.evaluate_cli", "kl_retrievers.training"):
        with pytest.raises(AttributeError, match="evaluate_modle"):
            _ = importlib.import_module(module).evaluate_modle


def test_encoder_protocol_of_the_public_evaluation_functions_is_exported() -> None:
    """``GaussianEncoderLike`` types the ``encoder`` of ``evaluate_model`` / ``encode_dataset``: it is public."""
    from kl_retrievers import evaluation

    assert "GaussianEncoderLike" in evaluation.__all__
    assert evaluation.GaussianEncoderLike.__module__ == "kl_retrievers.evaluation"
