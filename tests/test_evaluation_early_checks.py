"""Evaluation refuses bad arguments and a missing ``eval`` extra before it encodes anything: ``evaluate_model``
checks its metrics, ``k`` and qrels up front, and a training run's ``RetrievalEvaluator`` checks for ir_measures
when it is built, not at the first evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import RecordingEncoder, block_modules
from kl_retrievers.datasets import BeirDataset

CORPUS = {"d1": {"title": "", "text": "Cats purr."}, "d2": {"title": "", "text": "Dogs bark."}}


def _dataset(qrels: dict[str, dict[str, int]]) -> BeirDataset:
    return BeirDataset(Path("."), "test", CORPUS, {"q1": "why do cats purr"}, qrels)


@pytest.mark.parametrize(
    ("options", "qrels", "message"),
    [
        ({"metrics": ("ndcg@10", "ndcg@5")}, {"q1": {"d1": 1}}, r"unknown metric 'ndcg@5'; choose from .*ndcg@10"),
        ({"k": 0}, {"q1": {"d1": 1}}, r"k must be"),
        ({"k": 2.5}, {"q1": {"d1": 1}}, r"k must be"),
        ({}, {}, r"qrels are empty"),
    ],
)
def test_evaluate_model_checks_its_arguments_before_encoding(
    options: dict[str, Any], qrels: dict[str, dict[str, int]], message: str, tmp_path: Path
) -> None:
    pytest.importorskip("ir_measures")
    from kl_retrievers.evaluation import evaluate_model

    encoder = RecordingEncoder()
    with pytest.raises(ValueError, match=message):
        evaluate_model(encoder, _dataset(qrels), show_progress=False, cache_dir=tmp_path, use_cache=False, **options)
    assert encoder.calls == [], "the corpus was encoded before the bad argument was noticed"


def test_evaluate_model_with_good_arguments_encodes_and_scores(tmp_path: Path) -> None:
    pytest.importorskip("ir_measures")
    from kl_retrievers.evaluation import evaluate_model

    encoder = RecordingEncoder()
    result = evaluate_model(
        encoder, _dataset({"q1": {"d1": 1}}), k=2, metrics=("mrr@10",), show_progress=False, cache_dir=tmp_path
    )
    assert encoder.calls and set(result.aggregate) == {"mrr@10"} and result.info["depth"] == 2


def test_retrieval_evaluator_without_ir_measures_fails_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.trainer import RetrievalEvaluator

    block_modules(monkeypatch, "ir_measures")
    with pytest.raises(ImportError, match=r'pip install "kl-retrievers\[eval\]"') as err:
        RetrievalEvaluator(_dataset({"q1": {"d1": 1}}))
    assert "RetrievalEvaluator" in str(err.value) and err.value.name == "ir_measures"


def test_retrieval_evaluator_with_ir_measures_is_built() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("ir_measures")
    from kl_retrievers.training.trainer import RetrievalEvaluator

    evaluator = RetrievalEvaluator(_dataset({"q1": {"d1": 1}}), metric="mrr@10", k=5)
    assert (evaluator.metric, evaluator.k) == ("mrr@10", 5)
