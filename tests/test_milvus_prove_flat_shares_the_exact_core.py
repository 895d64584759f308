"""A ``prove_flat`` Milvus search is ``gaussian.refine_top_k``'s (issue #23: one exact top-k core).

Before, ``MilvusKLStore`` had its own candidate-pool loop (one 8x wider pool, then every matching row scored). Now its
flat search is the candidates of :func:`kl_retrievers.gaussian.refine_top_k` (adaptive wider pools, proof by the
float32 bound, float64 fallback), with Milvus' own error bound: the results are the float64 top ``k`` of the
Gaussians recovered from the stored rows, bit for bit :func:`kl_retrievers.gaussian.float64_top_k`'s, on hard data
(means 10 to 20, variances about 1e-4, ``k = 64``) and on ordinary data, with either metric.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store.milvus as milvus_module
from kl_retrievers.gaussian import Gaussians, document_gaussians_from_vectors, float64_top_k
from kl_retrievers.milvus import MilvusKLStore

N = 2000
IDS = [f"d{i:04d}" for i in range(N)]
#: Metadata with one row in 50 kept (40 rows).
KEEP = [{"keep": i % 50 == 0} for i in range(N)]


def _hard(dim: int = 16, nq: int = 12) -> tuple[Gaussians, Gaussians]:
    """Means 10 to 20, variances about 1e-4: float32 inner products of d~ cannot rank these alone."""
    rng = np.random.default_rng(11)
    mean = rng.uniform(10, 20, size=(N, dim))
    var = 1e-4 * np.exp(rng.normal(0, 0.3, size=(N, dim)))
    src = rng.integers(0, N, size=nq)
    qm = mean[src] + 0.01 * rng.normal(size=(nq, dim))
    qv = var[src] * np.exp(rng.normal(0, 0.2, size=(nq, dim)))
    return Gaussians(mean, var), Gaussians(qm, qv)


def _ordinary(dim: int = 16, nq: int = 12) -> tuple[Gaussians, Gaussians]:
    rng = np.random.default_rng(12)
    docs = Gaussians(rng.normal(size=(N, dim)), np.exp(rng.normal(0, 0.5, size=(N, dim))))
    pick = rng.integers(0, N, size=nq)
    queries = Gaussians(
        np.asarray(docs.mean)[pick] + 0.3 * rng.normal(size=(nq, dim)),
        np.asarray(docs.var)[pick] * np.exp(rng.normal(0, 0.2, size=(nq, dim))),
    )
    return docs, queries


def _flat_store(tmp_path: Path, **settings: Any) -> MilvusKLStore:
    """A flat Milvus Lite store with ``prove_flat`` at ``tmp_path/kl.db`` (``settings``: its other settings)."""
    return MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", prove_flat=True, **settings)


def _assert_results(got: list[list[Any]], want: list[list[str]], scores: Any = None) -> None:
    """``got`` holds the ids ``want`` (and the scores ``scores``, bit for bit, when given), in their order."""
    assert [[h.id for h in row] for row in got] == want
    if scores is not None:
        np.testing.assert_array_equal([[h.score for h in row] for row in got], scores)


def _float64_truth(store: MilvusKLStore, queries: Gaussians, ids: list[str], k: int) -> tuple[list[list[str]], Any]:
    """The float64 top ``k`` of the Gaussians recovered from the stored rows, in the store's centred frame."""
    rows = store.client.query(store.collection_name, filter=f"id in {json.dumps(ids)}", output_fields=["vector"])
    by_id = {r["id"]: r["vector"] for r in rows}
    stored = document_gaussians_from_vectors(np.asarray([by_id[i] for i in ids], dtype=np.float64), queries.dim)
    q64 = store._query_centred(queries)
    top, scores = float64_top_k(q64, stored, k)
    return [[ids[j] for j in row] for row in top], scores


@pytest.mark.parametrize("metric", ["IP", "L2"])
@pytest.mark.parametrize("data", ["hard", "ordinary"])
def test_prove_flat_is_the_float64_top_k_through_refine_top_k(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metric: str, data: str
) -> None:
    docs, queries = _hard() if data == "hard" else _ordinary()
    ids = IDS
    calls: list[int] = []
    real = milvus_module.refine_top_k

    def spy(nq: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(nq)
        return real(nq, *args, **kwargs)

    monkeypatch.setattr(milvus_module, "refine_top_k", spy)
    with _flat_store(tmp_path, metric=metric, rescore_pool=10, rescore_factor=1) as store:
        store.add(gaussians=docs, ids=ids)
        got = store.search_batch(queries, k=64)
        want, scores = _float64_truth(store, queries, ids, 64)
    assert calls == [len(queries)]  # the shared core ranked them
    _assert_results(got, want, scores)


def test_a_filter_and_k_above_the_matching_rows(tmp_path: Path) -> None:
    docs, queries = _hard(nq=4)
    ids = IDS
    metas = KEEP  # 40 rows match
    with _flat_store(tmp_path, rescore_pool=10) as store:
        store.add(gaussians=docs, ids=ids, metadatas=metas)
        got = store.search_batch(queries, k=64, filter={"keep": True})
        kept = [i for i, m in zip(ids, metas, strict=True) if m["keep"]]
        want, _ = _float64_truth(store, queries, kept, 40)
    _assert_results(got, want)
    assert all(h.metadata == {"keep": True} for row in got for h in row)


def test_above_exact_threshold_the_best_rows_scored_come_back_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Hard data, a pool of ``k``: not provable, and 2000 rows match, above ``exact_threshold``: a warning, and per
    query the best ``k`` of the rows re-scored (the first pool and the wider pools' rows the bound kept)."""
    docs, queries = _hard(nq=3)
    ids = IDS
    rescored: list[tuple[np.ndarray, np.ndarray]] = []  # (queries, float64 scores) of every re-scoring
    real = milvus_module.refine_top_k

    def spy(nq: int, k: int, n: Any, margin: int, candidates: Any, rescore: Any, *rest: Any) -> Any:
        def scored(qi: np.ndarray, rows: np.ndarray) -> Any:
            scores = rescore(qi, rows)
            rescored.append((qi.copy(), np.asarray(scores).copy()))
            return scores

        return real(nq, k, n, margin, candidates, scored, *rest)

    monkeypatch.setattr(milvus_module, "refine_top_k", spy)
    with _flat_store(tmp_path, metric="L2", rescore_pool=1, rescore_factor=1, exact_threshold=10) as store:
        store.add(gaussians=docs, ids=ids)
        with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
            got = store.search_batch(queries, k=64)
    assert "rows match, above exact_threshold=10: those results may miss documents" in caplog.text
    for i, row in enumerate(got):
        seen = np.concatenate([s[list(qi).index(i)] for qi, s in rescored if i in qi])
        best = np.sort(np.unique(seen[np.isfinite(seen)]))[::-1][:64]
        np.testing.assert_array_equal([h.score for h in row], best)


def test_exact_ties_come_back_later_added_first(tmp_path: Path) -> None:
    """Three copies of one Gaussian tie exactly; k = 2 keeps the two added last, as KLStore would."""
    docs, _ = _ordinary(dim=4)
    twin = Gaussians(np.repeat(np.asarray(docs.mean)[:1], 3, axis=0), np.repeat(np.asarray(docs.var)[:1], 3, axis=0))
    with _flat_store(tmp_path, rescore_pool=1, rescore_factor=1) as store:
        store.add(gaussians=docs[1:200], ids=[f"o{i}" for i in range(199)])
        for i, name in enumerate("bac"):
            store.add(gaussians=twin[i : i + 1], ids=[name])
        got = store.search(twin[:1], k=2)
    assert [h.id for h in got] == ["c", "a"]
    assert got[0].score == got[1].score


@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_a_pool_at_max_topk_is_proven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, metric: str
) -> None:
    """One Milvus search returns at most ``MAX_TOPK`` rows (here 64): a pool of ``MAX_TOPK - 1`` and its witness.

    Before, the pool was ``MAX_TOPK`` rows, so the search for it and the best row left out always came back one
    row short: no such pool was ever proven, and every query went to the fallback (here, above
    ``exact_threshold``, a "may miss documents" warning).
    """
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 64)
    docs, queries = _ordinary(nq=6)
    ids = IDS
    limits: list[int] = []
    # k = 8: a pool of 80 rows, capped
    with _flat_store(tmp_path, metric=metric, rescore_pool=10, rescore_factor=10, exact_threshold=10) as store:
        store.add(gaussians=docs, ids=ids)
        real = store._client.search

        def spy(*args: Any, **kwargs: Any) -> Any:
            limits.append(kwargs["limit"])
            return real(*args, **kwargs)

        monkeypatch.setattr(store._client, "search", spy)
        with caplog.at_level(logging.INFO, logger="kl_retrievers.store.milvus"):
            got = store.search_batch(queries, k=8)
        want, scores = _float64_truth(store, queries, ids, 8)
    assert limits == [64]  # one search of the capped pool (63 rows) and its witness proved every query
    assert "not provably enough" not in caplog.text
    _assert_results(got, want, scores)


@pytest.mark.parametrize("matching", ["all", "40 of them"])
def test_a_proven_first_pool_costs_one_search_no_count_and_one_rescoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, matching: str
) -> None:
    """The first pool and its witness are searched before anything is counted: a pool that proves its queries, or a
    search that comes back short (every matching row: their number), needs no ``count(*)`` request; the first pool
    is re-scored in float64 once, for the bound and the proof alike (before: a count per batch, two re-scorings)."""
    docs, queries = _ordinary(nq=6)
    ids = IDS
    metas = KEEP
    filter = {"keep": True} if matching != "all" else None
    counts: list[str] = []
    rescorings: list[tuple[int, ...]] = []
    real_rows = milvus_module.neg_kl_rows

    def rows_spy(queries: Gaussians, documents: Gaussians, rows: np.ndarray) -> Any:
        rescorings.append(rows.shape)
        return real_rows(queries, documents, rows)

    monkeypatch.setattr(milvus_module, "neg_kl_rows", rows_spy)
    with _flat_store(tmp_path, rescore_pool=10, rescore_factor=10) as store:
        store.add(gaussians=docs, ids=ids, metadatas=metas)
        real_count = store._count

        def count_spy(filter: str = "") -> int:
            counts.append(filter)
            return real_count(filter)

        monkeypatch.setattr(store, "_count", count_spy)
        got = store.search_batch(queries, k=8, filter=filter)
        kept = [i for i, m in zip(ids, metas, strict=True) if filter is None or m["keep"]]
        want, _ = _float64_truth(store, queries, kept, 8)
    assert counts == []
    assert rescorings == [(len(queries), 80 if filter is None else 40)]
    _assert_results(got, want)
