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
    ids = [f"d{i:04d}" for i in range(N)]
    calls: list[int] = []
    real = milvus_module.refine_top_k

    def spy(nq: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(nq)
        return real(nq, *args, **kwargs)

    monkeypatch.setattr(milvus_module, "refine_top_k", spy)
    with MilvusKLStore(
        uri=str(tmp_path / "kl.db"),
        index_type="flat",
        metric=metric,  # type: ignore[arg-type]
        prove_flat=True,
        rescore_pool=10,
        rescore_factor=1,
    ) as store:
        store.add(gaussians=docs, ids=ids)
        got = store.search_batch(queries, k=64)
        want, scores = _float64_truth(store, queries, ids, 64)
    assert calls == [len(queries)]  # the shared core ranked them
    assert [[h.id for h in row] for row in got] == want
    np.testing.assert_array_equal([[h.score for h in row] for row in got], scores)


def test_a_filter_and_k_above_the_matching_rows(tmp_path: Path) -> None:
    docs, queries = _hard(nq=4)
    ids = [f"d{i:04d}" for i in range(N)]
    metas = [{"keep": i % 50 == 0} for i in range(N)]  # 40 rows match
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", prove_flat=True, rescore_pool=10) as store:
        store.add(gaussians=docs, ids=ids, metadatas=metas)
        got = store.search_batch(queries, k=64, filter={"keep": True})
        kept = [i for i, m in zip(ids, metas, strict=True) if m["keep"]]
        want, _ = _float64_truth(store, queries, kept, 40)
    assert [[h.id for h in row] for row in got] == want
    assert all(h.metadata == {"keep": True} for row in got for h in row)


def test_above_exact_threshold_the_best_rows_scored_come_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs, queries = _hard(nq=3)
    ids = [f"d{i:04d}" for i in range(N)]
    with MilvusKLStore(
        uri=str(tmp_path / "kl.db"),
        index_type="flat",
        metric="L2",
        prove_flat=True,
        rescore_pool=1,
        rescore_factor=1,
        exact_threshold=10,
    ) as store:
        store.add(gaussians=docs, ids=ids)
        truth, _ = _float64_truth(store, queries, ids, 64)
        with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
            got = store.search_batch(queries, k=64)
    assert all(len(row) == 64 for row in got)
    unproven = "may miss documents (raise exact_threshold" in caplog.text
    assert unproven or [[h.id for h in row] for row in got] == truth


def test_exact_ties_come_back_later_added_first(tmp_path: Path) -> None:
    """Three copies of one Gaussian tie exactly; k = 2 keeps the two added last, as KLStore would."""
    docs, _ = _ordinary(dim=4)
    twin = Gaussians(np.repeat(np.asarray(docs.mean)[:1], 3, axis=0), np.repeat(np.asarray(docs.var)[:1], 3, axis=0))
    with MilvusKLStore(
        uri=str(tmp_path / "kl.db"), index_type="flat", prove_flat=True, rescore_pool=1, rescore_factor=1
    ) as store:
        store.add(gaussians=docs[1:200], ids=[f"o{i}" for i in range(199)])
        for i, name in enumerate("bac"):
            store.add(gaussians=twin[i : i + 1], ids=[name])
        got = store.search(twin[:1], k=2)
    assert [h.id for h in got] == ["c", "a"]
    assert got[0].score == got[1].score
