"""Ties at the depth cut: a run keeps the tied documents that ``evaluate_run`` (and trec_eval) rank first.

``evaluate_run`` ranks tied scores by document id, descending. A run cut at depth ``k`` must hold the
same documents as the first ``k`` of a deeper run under that rule, or ``@k`` metrics depend on the
depth (BM25 on NFCorpus test: R@100 0.239176 at depth 100 against 0.239189 at depth 1000 before).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.baselines import bm25_run
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.evaluation import evaluate_run, retrieve_exact
from kl_retrievers.gaussian import Gaussians, exact_top_k, float64_top_k
from kl_retrievers.runs import inner_product_run, tie_ranks, top_k


def reference_top(scores: np.ndarray, ids: list[str], k: int) -> list[list[int]]:
    """Columns by score descending, tied scores by id descending (the trec_eval order), first ``k``."""
    out = []
    for row in scores:
        cols = sorted(range(len(ids)), key=lambda j: ids[j], reverse=True)  # ids descending, then a stable
        cols.sort(key=lambda j: -row[j])  # sort by score keeps that order among ties
        out.append(cols[:k])
    return out


def shuffled_ids(n: int, seed: int) -> list[str]:
    """Ids whose string order differs from the row order (so "first row" and "largest id" disagree)."""
    rng = np.random.default_rng(seed)
    return [f"d{int(v)}" for v in rng.permutation(n) * 7 + 3]


def test_tie_ranks_order_ids_descending_as_strings() -> None:
    ranks = tie_ranks(["d10", "d9", "d2", "e"])
    assert [["d10", "d9", "d2", "e"][i] for i in np.argsort(ranks)] == ["e", "d9", "d2", "d10"]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_keeps_the_tied_columns_trec_eval_ranks_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 4, size=(7, n)).astype(np.float32)  # many ties at every cut
    ids = shuffled_ids(n, seed)
    ranks = tie_ranks(ids)
    for k in (1, 5, 17, 59, 60, 80):
        idx, vals = top_k(scores, k, ranks)
        assert idx.tolist() == reference_top(scores, ids, k)
        np.testing.assert_array_equal(vals, np.take_along_axis(scores, idx, 1))


def test_top_k_checks_the_tie_rank_shape() -> None:
    with pytest.raises(ValueError, match=r"tie_rank has shape \(2,\); expected \(3,\)"):
        top_k(np.zeros((1, 3)), 2, np.arange(2))


def test_inner_product_run_at_depth_k_is_a_prefix_of_a_deeper_run() -> None:
    rng = np.random.default_rng(0)
    docs = rng.integers(0, 3, size=(40, 2)).astype(np.float32)  # 9 distinct vectors, many duplicates
    queries = rng.integers(1, 3, size=(6, 2)).astype(np.float32)
    ids, qids = shuffled_ids(40, 1), [f"q{i}" for i in range(6)]
    shallow = inner_product_run(queries, docs, qids, ids, 10)
    deep = inner_product_run(queries, docs, qids, ids, 40)
    for i, q in enumerate(qids):
        assert set(shallow[q]) == {ids[j] for j in reference_top(queries[i : i + 1] @ docs.T, ids, 10)[0]}
        assert set(shallow[q]) == set(list(_ranked(deep[q]))[:10])
    qrels = {q: {ids[j]: 1 for j in range(0, 40, 3)} for q in qids}
    assert evaluate_run(qrels, shallow, ["ndcg@10"])[0] == evaluate_run(qrels, deep, ["ndcg@10"])[0]


def _ranked(run: dict[str, float]) -> list[str]:
    """A query's documents in evaluate_run's order."""
    return [d for _, d in sorted(((s, d) for d, s in run.items()), reverse=True)]


def duplicated_gaussians(n_distinct: int, copies: int, seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = np.repeat(rng.normal(size=(n_distinct, 3)), copies, axis=0)
    var = np.repeat(rng.uniform(0.5, 2.0, size=(n_distinct, 3)), copies, axis=0)
    order = rng.permutation(len(mean))
    return Gaussians(mean[order], var[order])


def neg_kl_reference(q: Gaussians, d: Gaussians) -> np.ndarray:
    qm, qv, dm, dv = (np.asarray(a, dtype=np.float64) for a in (q.mean, q.var, d.mean, d.var))
    return -0.5 * (
        np.log(dv).sum(1)[None, :]
        - np.log(qv).sum(1)[:, None]
        - q.dim
        + (qv[:, None, :] / dv[None, :, :]).sum(2)
        + ((qm[:, None, :] - dm[None, :, :]) ** 2 / dv[None, :, :]).sum(2)
    )


@pytest.mark.parametrize("margin", [0, 16])
def test_exact_top_k_breaks_ties_at_the_cut_by_tie_rank(margin: int) -> None:
    docs = duplicated_gaussians(12, 5, seed=3)  # every document has four exact copies
    queries = Gaussians(np.random.default_rng(4).normal(size=(5, 3)), np.ones((5, 3)))
    ids = shuffled_ids(len(docs), 5)
    ref = neg_kl_reference(queries, docs)
    for k in (3, 7, 23):
        rows, scores = exact_top_k(queries, docs, k, margin=margin, tie_rank=tie_ranks(ids))
        want = reference_top(np.round(ref, 9), ids, k)
        assert rows.tolist() == want, k
        np.testing.assert_allclose(scores, np.take_along_axis(ref, rows, 1), rtol=1e-12, atol=1e-12)


def test_float64_top_k_keeps_ties_across_its_blocks() -> None:
    """The float64 path merges blocks of 4,096 rows; a tie spread over blocks must still be decided by rank."""
    n = 9000
    mean = np.zeros((n, 2))
    mean[:, 0] = np.where(np.arange(n) % 3 == 0, 1.0, 5.0)  # 3,000 rows tied at the best score, in every block
    docs = Gaussians(mean, np.ones((n, 2)))
    queries = Gaussians(np.zeros((2, 2)), np.ones((2, 2)))
    ids = shuffled_ids(n, 6)
    rows, _ = float64_top_k(queries, docs, 50, tie_rank=tie_ranks(ids))
    tied = [j for j in range(n) if j % 3 == 0]
    want = sorted(tied, key=lambda j: ids[j], reverse=True)[:50]
    assert rows.tolist() == [want, want]


def test_retrieve_exact_at_depth_k_is_a_prefix_of_a_deeper_run() -> None:
    docs = duplicated_gaussians(10, 4, seed=7)
    queries = Gaussians(np.random.default_rng(8).normal(size=(4, 3)), np.ones((4, 3)))
    ids, qids = shuffled_ids(len(docs), 9), ["a", "b", "c", "d"]
    deep = retrieve_exact(queries, docs, qids, ids, k=len(docs))
    for k in (2, 6, 13):
        shallow = retrieve_exact(queries, docs, qids, ids, k=k)
        for q in qids:
            assert set(shallow[q]) == set(_ranked(deep[q])[:k]), (q, k)


def test_bm25_run_at_depth_k_keeps_the_tied_documents_a_deeper_run_ranks_first() -> None:
    corpus = {f"d{i:02d}": {"title": "", "text": "apple pie recipe"} for i in range(12)}  # 12 identical texts
    corpus.update({f"x{i}": {"title": "", "text": f"unrelated words {i}"} for i in range(5)})
    dataset = BeirDataset(Path("."), "test", corpus, {"q": "apple recipe"}, {"q": {"d00": 1, "d11": 1}})
    shallow = bm25_run(dataset, 4, show_progress=False)
    deep = bm25_run(dataset, 100, show_progress=False)
    assert sorted(shallow["q"]) == ["d08", "d09", "d10", "d11"]  # the four largest ids win the tie
    assert set(shallow["q"]) == set(_ranked(deep["q"])[:4])
    assert len(deep["q"]) == 12  # zero-score documents are left out, as before
    assert bm25_run(dataset, 4, show_progress=False) == shallow


def test_bm25_run_query_with_no_corpus_word_returns_nothing() -> None:
    corpus = {"d1": {"title": "", "text": "apple pie"}, "d2": {"title": "", "text": "banana bread"}}
    dataset = BeirDataset(Path("."), "test", corpus, {"q": "zebra"}, {"q": {"d1": 1}})
    assert bm25_run(dataset, 10, show_progress=False) == {"q": {}}
