"""One check of bool flags serves every layer: ``gaussian`` (the lowest) as well as ``_io`` and the stores.

``gaussian.py`` kept its own copy of ``_io.check_bool`` (``_io`` imports ``gaussian``, so ``gaussian`` could not
import ``_io``). The check now lives in ``kl_retrievers/_checks.py``, which imports only the standard library, so
any module imports it; the messages and what is accepted (a bool or numpy's) are those of ``_io.check_bool``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import kl_retrievers
from kl_retrievers import Gaussians, neg_kl, neg_kl_matrix


def test_every_layer_uses_the_one_check() -> None:
    from kl_retrievers import _checks, _io, gaussian, hybrid
    from kl_retrievers.store import faiss

    for module in (_io, gaussian, hybrid, faiss):
        assert module.check_bool is _checks.check_bool, module.__name__
    assert not hasattr(gaussian, "_check_bool")


def test_the_shared_module_imports_only_the_standard_library() -> None:
    source = Path(kl_retrievers.__file__).with_name("_checks.py").read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").partition(".")[0])
    assert imported <= {"__future__", "typing"}, imported


@pytest.mark.parametrize("score", [neg_kl, neg_kl_matrix])
def test_check_finite_is_refused_in_the_shared_words(score: object) -> None:
    from kl_retrievers._checks import check_bool

    g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    for flag in ("no", 1, None, np.array([True])):
        with pytest.raises(TypeError) as shared:
            check_bool(flag, "check_finite")
        with pytest.raises(TypeError, match="^check_finite must be a bool; got ") as got:
            score(g, g, check_finite=flag)  # type: ignore[operator]
        assert str(got.value) == str(shared.value)
    for ok in (True, np.bool_(False), np.True_):
        check_bool(ok, "check_finite")
        assert score(g, g, check_finite=ok).shape[0] == 1  # type: ignore[operator]
