"""A training run's RetrievalEvaluator refuses, when built, a split where no given query has a judgement with a
grade above 0: every evaluation would fail (empty qrels) or score 0 whatever the weights (judgements only of other
queries, only empty judgement sets, or only grades of 0 or below)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kl_retrievers.datasets import BeirDataset

pytest.importorskip("torch")
pytest.importorskip("ir_measures")

CORPUS = {"d1": {"title": "", "text": "Cats purr."}, "d2": {"title": "", "text": "Dogs bark."}}
QUERIES = {"q1": "why do cats purr", "q2": "why do dogs bark"}


def _dataset(qrels: dict[str, dict[str, int]]) -> BeirDataset:
    return BeirDataset(Path("."), "test", CORPUS, dict(QUERIES), qrels)


@pytest.mark.parametrize(
    ("qrels", "counts"),
    [
        ({}, "2 queries given, 0 with a grade above 0, 0 of them among the queries"),
        ({"q9": {"d1": 1}}, "2 queries given, 1 with a grade above 0, 0 of them among the queries"),
        ({"q1": {}, "q2": {}}, "2 queries given, 0 with a grade above 0, 0 of them among the queries"),
        ({"q1": {}, "q9": {"d2": 1}}, "2 queries given, 1 with a grade above 0, 0 of them among the queries"),
        ({"q1": {"d1": 0}, "q2": {"d2": 0}}, "2 queries given, 0 with a grade above 0, 0 of them among the queries"),
        ({"q1": {"d1": -1, "d2": 0}}, "2 queries given, 0 with a grade above 0, 0 of them among the queries"),
        ({"q1": {"d1": 0}, "q9": {"d2": 2}}, "2 queries given, 1 with a grade above 0, 0 of them among the queries"),
    ],
)
def test_refused_when_no_given_query_is_judged(qrels: dict[str, dict[str, int]], counts: str) -> None:
    from kl_retrievers.training.trainer import RetrievalEvaluator

    with pytest.raises(ValueError, match="no query has a judgement with a grade above 0") as err:
        RetrievalEvaluator(_dataset(qrels), similarity="neg_kl")
    assert counts in str(err.value)


def test_individually_empty_judgement_sets_are_kept_beside_a_judged_query() -> None:
    from kl_retrievers.training.trainer import RetrievalEvaluator

    qrels = {"q1": {"d1": 1}, "q2": {}}
    evaluator = RetrievalEvaluator(_dataset(qrels), similarity="neg_kl")
    assert evaluator.dataset.qrels == qrels  # q2 stays (it scores 0, as load_beir keeps it)


def test_a_query_with_one_grade_above_0_beside_grades_of_0_is_judged() -> None:
    from kl_retrievers.training.trainer import RetrievalEvaluator

    qrels = {"q1": {"d1": 0, "d2": 1}, "q2": {"d2": 0}}
    evaluator = RetrievalEvaluator(_dataset(qrels), similarity="neg_kl")
    assert evaluator.dataset.qrels == qrels
