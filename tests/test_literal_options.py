"""Option strings of the public API are ``Literal`` aliases, one definition each, read by the runtime checks.

(a) Each alias's values are exactly what the runtime check accepts: every value is accepted, a typo is refused
with a ``ValueError``, and the tuples (and CLI choices) that list the values equal the alias's ``get_args``.
(b) A type checker refuses a typo: ``tests/typing_cases/literal_typos.py`` (checked by ``make typecheck``) marks each
typo'd option with a ``type: ignore`` that ``warn_unused_ignores`` turns into an error once mypy accepts the typo.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest

# (module, alias, the module attribute listing the allowed values: a tuple, or a dict keyed by them)
_LISTED = [
    ("kl_retrievers.store._base", "IndexType", "INDEX_TYPES"),
    ("kl_retrievers.store.faiss", "Compression", "COMPRESSIONS"),
    ("kl_retrievers.store.faiss", "Refine", "REFINES"),
    ("kl_retrievers.store.milvus", "MilvusMetric", "METRICS"),
    ("kl_retrievers.store.milvus", "MilvusCompression", "COMPRESSIONS"),
    ("kl_retrievers.hybrid", "FusionMode", "FUSION_MODES"),
    ("kl_retrievers.hybrid", "Normalization", "NORMALIZATIONS"),
    ("kl_retrievers._config", "Similarity", "SIMILARITIES"),
    ("kl_retrievers._config", "Pooling", "_POOLINGS"),
    ("kl_retrievers.calibration", "CalibratorKind", "CALIBRATOR_KINDS"),
    ("kl_retrievers._adapters", "RelevanceName", "RELEVANCE_FUNCTIONS"),
    ("kl_retrievers.pretrained", "Backend", "BACKENDS"),
    ("kl_retrievers.onnx", "Quantization", "QUANTIZATIONS"),
    ("kl_retrievers.training.losses", "Loss", "LOSSES"),
]


def _module(name: str) -> Any:
    if name in ("kl_retrievers.store.milvus", "kl_retrievers.training.losses"):
        pytest.importorskip("torch" if "training" in name else "pymilvus")
    return importlib.import_module(name)


@pytest.mark.parametrize(("module", "alias", "listed"), _LISTED, ids=[a for _, a, _ in _LISTED])
def test_each_alias_lists_the_values_its_runtime_check_reads(module: str, alias: str, listed: str) -> None:
    mod = _module(module)
    values = getattr(mod, listed)
    keys = tuple(values) if isinstance(values, dict) else values
    assert tuple(k for k in keys if k is not None) == get_args(getattr(mod, alias))


def _accepts() -> list[tuple[str, str, Callable[[Any], object]]]:
    """(module, alias, a call that checks one value of it at run time) for the aliases of a public parameter."""
    from kl_retrievers._adapters import resolve_relevance
    from kl_retrievers._config import GaussianEncoderConfig
    from kl_retrievers.calibration import ConfidenceCalibrator, recommended_min_confidence
    from kl_retrievers.hybrid import FusionConfig, normalize_scores
    from kl_retrievers.store import KLStore

    cases: list[tuple[str, str, Callable[[Any], object]]] = [
        ("kl_retrievers.store._base", "IndexType", lambda v: KLStore(index_type=v)),
        ("kl_retrievers.store.faiss", "Compression", lambda v: KLStore(index_type="hnsw", compression=v)),
        ("kl_retrievers.store.faiss", "Refine", lambda v: KLStore(index_type="ivf", compression="pq", refine=v)),
        ("kl_retrievers.hybrid", "FusionMode", lambda v: FusionConfig(mode=v)),
        ("kl_retrievers.hybrid", "FusionMode", lambda v: FusionConfig().for_call(v)),
        ("kl_retrievers.hybrid", "Normalization", lambda v: FusionConfig(normalization=v)),
        ("kl_retrievers.hybrid", "Normalization", lambda v: normalize_scores([1.0, 2.0], v)),
        ("kl_retrievers._config", "Pooling", lambda v: GaussianEncoderConfig(dim=4, pooling=v)),
        ("kl_retrievers.calibration", "CalibratorKind", lambda v: ConfidenceCalibrator(["max_score"], kind=v)),
        ("kl_retrievers.calibration", "CalibratorKind", lambda v: recommended_min_confidence(retriever=v)),
        ("kl_retrievers._adapters", "RelevanceName", resolve_relevance),
    ]
    try:
        import torch

        from kl_retrievers.training.losses import lambdarank_loss, score_matrix
        from kl_retrievers.training.trainer import TrainConfig
    except ImportError:
        return cases
    q, d = torch.ones(2, 3), torch.ones(4, 3)
    return [
        *cases,
        ("kl_retrievers._config", "Similarity", lambda v: TrainConfig(similarity=v)),
        ("kl_retrievers._config", "Similarity", lambda v: score_matrix(q, q, d, d, v)),
        ("kl_retrievers.training.losses", "Loss", lambda v: TrainConfig(loss=v)),
        ("kl_retrievers.training.losses", "RankBy", lambda v: lambdarank_loss(q, q, rank_by=v)),
    ]


def test_the_runtime_checks_accept_each_value_and_refuse_a_typo() -> None:
    for module, alias, call in _accepts():
        values = get_args(getattr(importlib.import_module(module), alias))
        for value in values:
            call(value)  # accepted
        with pytest.raises(ValueError, match=re.escape(repr(values[0] + "x"))):
            call(values[0] + "x")


def _choices(parser: argparse.ArgumentParser, flag: str) -> tuple[Any, ...]:
    """The ``choices`` of ``flag`` in ``parser`` or any of its subcommands."""
    for action in parser._actions:
        if flag in action.option_strings:
            return tuple(action.choices or ())
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if found := _choices(sub, flag):
                    return found
    return ()


def _all_choices(parser: argparse.ArgumentParser, flag: str) -> set[tuple[Any, ...]]:
    """Every distinct ``choices`` of ``flag`` in ``parser`` and its subcommands (one flag, one list everywhere)."""
    found: set[tuple[Any, ...]] = set()
    for action in parser._actions:
        if flag in action.option_strings:
            found.add(tuple(action.choices or ()))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _all_choices(sub, flag)
    return found


def test_the_cli_choices_are_the_aliases_values() -> None:
    """The light CLI modules spell some lists out (importing the alias's module would load numpy for ``--help``):
    each must equal its alias."""
    from kl_retrievers.cli import build_parser
    from kl_retrievers.evaluate_cli import _NORMALIZATIONS, HYBRID_MODES
    from kl_retrievers.hybrid import FusionMode, Normalization
    from kl_retrievers.pretrained import Backend
    from kl_retrievers.store._base import IndexType
    from kl_retrievers.store.faiss import Compression, Refine

    assert get_args(FusionMode) == HYBRID_MODES  # spelled out there, so that the parser need not import hybrid
    assert get_args(Normalization) == _NORMALIZATIONS
    parser = build_parser()
    for flag, values in (
        ("--index-type", get_args(IndexType)),
        ("--compression", get_args(Compression)),
        ("--refine", get_args(Refine)),
        ("--model-backend", get_args(Backend)),
    ):
        assert _all_choices(parser, flag) == {values}, flag
    pytest.importorskip("torch")
    from kl_retrievers._config import Pooling, Similarity
    from kl_retrievers.training.cli import add_train_command
    from kl_retrievers.training.losses import Loss

    parser = argparse.ArgumentParser()
    add_train_command(parser.add_subparsers())
    assert _choices(parser, "--similarity") == get_args(Similarity)
    assert _choices(parser, "--pooling") == get_args(Pooling)
    assert _choices(parser, "--loss") == get_args(Loss)


_TYPOS = Path(__file__).parent / "typing_cases" / "literal_typos.py"


def test_the_typing_cases_flag_each_typo_and_mypy_reports_unused_ignores() -> None:
    """The mypy half lives in ``make typecheck``: each typo line of ``typing_cases/literal_typos.py`` carries one
    ``type: ignore`` (unused, hence an error, once mypy accepts the typo) next to its correct twin; pin that layout and
    the ``warn_unused_ignores`` override, so that neither can be dropped silently."""
    lines = [line.strip() for line in _TYPOS.read_text(encoding="utf-8").splitlines()]
    calls = [line for line in lines if re.match(r"^[A-Za-z_.]+\(", line)]
    typos, oks = calls[0::2], calls[1::2]
    assert len(typos) == len(oks) >= 28
    for typo, ok in zip(typos, oks, strict=True):
        assert re.search(r"  # type: ignore\[[a-z-]+\]$", typo), typo
        assert typo.count("type: ignore") == 1, typo
        assert "type: ignore" not in ok, ok
        assert typo.split("(")[0] == ok.split("(")[0], (typo, ok)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10 (the floor) has no tomllib, and tomli is a dependency of neither the package nor its tests
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    root = Path(__file__).resolve().parents[1]
    mypy = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert "tests" in mypy["files"]
    overrides = [o for o in mypy.get("overrides", []) if o.get("module") == "typing_cases.literal_typos"]
    assert overrides and overrides[0].get("warn_unused_ignores") is True
    assert (_TYPOS.parent / "__init__.py").is_file()  # mypy names the module typing_cases.literal_typos
