"""The flat store's first candidate pool: wide enough on embedding-like data, and results unchanged by its size.

The exact flat path (:func:`~kl_retrievers.gaussian.refine_top_k`) re-scores a first pool of ``k + margin``
float32 candidates and widens it (8x, a second FAISS search and float64 re-scoring) where the float32 error
bound cannot prove it holds the top ``k``. On means near the unit sphere with variances near 1 (what the
default model gives: SciFact's encodings) a margin of ``max(8, k // 4)`` was too small for nearly every query
at ``k`` = 50 to 100. The other exact searches of the store share that margin
(``_engines._first_pool_margin``): the exact search of an approximate store without its index (a filter
under ``exact_threshold``; :func:`~kl_retrievers.gaussian.exact_top_k`), and its exact scoring of the rescue
rows (``ApproxEngine._with_rescue``: unreached HNSW copies, documents far out), where ``max(8, k // 4)`` widened
nearly every query on embedding-like data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from kl_retrievers import gaussian
from kl_retrievers.gaussian import Gaussians, float64_top_k
from kl_retrievers.index import KLStore
from kl_retrievers.store import _engines


def _unit_gaussians(rng: np.random.Generator, n: int, dim: int) -> Gaussians:
    """Embedding-like Gaussians: unit-norm random means, variances within about 1e-3 of 1."""
    mean = rng.normal(size=(n, dim))
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    var = 1.0 + 3e-4 * rng.normal(size=(n, dim))
    return Gaussians(mean.astype(np.float32), var.astype(np.float32))


def _store(docs: Gaussians) -> KLStore:
    store = KLStore()
    store.add(["t"] * len(docs), gaussians=docs, ids=[f"d{i:05d}" for i in range(len(docs))])
    return store


def _spy_refine(
    monkeypatch: pytest.MonkeyPatch, margin: Callable[[int], int] | None = None, module: Any = _engines
) -> list[tuple[int, int]]:
    """Record ``(queries, pool width)`` of every candidate search of the flat path (``module`` :mod:`gaussian`:
    of :func:`~kl_retrievers.gaussian.exact_top_k`); optionally force its margin."""
    calls: list[tuple[int, int]] = []
    refine = module.refine_top_k

    def spy(nq: int, k: int, n_allowed: int, m: int, candidates: Callable[..., Any], *rest: Any, **kw: Any) -> Any:
        def counted(qi: np.ndarray, c: int) -> Any:
            calls.append((len(qi), c))
            return candidates(qi, c)

        return refine(nq, k, n_allowed, m if margin is None else margin(k), counted, *rest, **kw)

    monkeypatch.setattr(module, "refine_top_k", spy)
    return calls


@pytest.mark.parametrize("k", [25, 50, 100])
def test_first_pool_is_enough_on_embedding_like_data(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    rng = np.random.default_rng(0)
    store = _store(_unit_gaussians(rng, 3000, 384))
    queries = _unit_gaussians(rng, 20, 384)
    calls = _spy_refine(monkeypatch)
    store.search_batch(queries, k=k)
    widened = sum(n for n, _ in calls[1:])
    assert calls[0][0] == 20
    assert widened <= 2, f"{widened} of 20 queries needed a wider candidate pool at k={k}: {calls}"


@pytest.mark.parametrize("make", ["unit", "gauss"])
def test_results_identical_whatever_the_first_pool(monkeypatch: pytest.MonkeyPatch, make: str) -> None:
    rng = np.random.default_rng(1)
    if make == "unit":
        docs, queries = _unit_gaussians(rng, 2000, 384), _unit_gaussians(rng, 12, 384)
    else:
        docs = Gaussians(
            rng.normal(size=(2000, 48)).astype(np.float32), rng.uniform(0.5, 2.0, size=(2000, 48)).astype(np.float32)
        )
        queries = Gaussians(rng.normal(size=(12, 48)), rng.uniform(0.5, 2.0, size=(12, 48)))
    store = _store(docs)
    expected_rows, expected_scores = float64_top_k(queries, docs, 100)
    for margin in (lambda k: max(8, k // 4), None, lambda k: 0):
        with monkeypatch.context() as m:
            _spy_refine(m, margin)
            got = store.search_batch(queries, k=100)
        for q, hits in enumerate(got):
            assert [h.id for h in hits] == [f"d{r:05d}" for r in expected_rows[q]]
            assert np.array_equal(np.array([h.score for h in hits]), expected_scores[q])  # bit for bit


def _ivf_store(docs: Gaussians) -> KLStore:
    """An IVF store, every other document tagged: a filter on the tag is under ``exact_threshold`` (exact search)."""
    store = KLStore(index_type="ivf", nlist=16)
    n = len(docs)
    store.add(gaussians=docs, ids=[f"d{i:05d}" for i in range(n)], metadatas=[{"t": i % 2 == 0} for i in range(n)])
    assert store.is_built
    return store


def _hnsw_store_with_rescue(docs: Gaussians, rescue: np.ndarray) -> KLStore:
    """An HNSW store whose ``rescue`` rows are scored exactly with every query, as documents far out are."""
    store = KLStore(index_type="hnsw")
    store.add(gaussians=docs, ids=[f"d{i:05d}" for i in range(len(docs))])
    store.search_batch(docs[:1], k=1)  # built
    engine = store._engine
    assert isinstance(engine, _engines.ApproxEngine) and rescue.size <= engine._copies.share * len(docs)
    engine._far = rescue  # (unreached HNSW copies take the same path)
    return store


@pytest.mark.parametrize("k", [10, 50, 100])
def test_first_pool_of_an_exact_search_without_the_index_is_enough(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    rng = np.random.default_rng(2)
    store = _ivf_store(_unit_gaussians(rng, 3000, 384))
    queries = _unit_gaussians(rng, 20, 384)
    calls = _spy_refine(monkeypatch, module=gaussian)
    store.search_batch(queries, k=k, filter={"t": True})
    widened = sum(n for n, _ in calls[1:])
    assert calls and calls[0][0] == 20
    assert widened <= 2, f"{widened} of 20 queries needed a wider candidate pool at k={k}: {calls}"


@pytest.fixture(scope="module")
def rescue_store() -> tuple[KLStore, Gaussians]:
    """An HNSW store of 5,000 embedding-like documents, a tenth of them rescue rows; 20 queries."""
    rng = np.random.default_rng(3)
    docs = _unit_gaussians(rng, 5000, 384)
    return _hnsw_store_with_rescue(docs, np.arange(0, 5000, 10)), _unit_gaussians(rng, 20, 384)


@pytest.mark.parametrize("k", [10, 50, 100])
def test_first_pool_of_the_rescue_rows_is_enough(
    monkeypatch: pytest.MonkeyPatch, rescue_store: tuple[KLStore, Gaussians], k: int
) -> None:
    store, queries = rescue_store
    calls = _spy_refine(monkeypatch, module=gaussian)
    store.search_batch(queries, k=k)
    widened = sum(n for n, _ in calls[1:])
    assert calls and calls[0][0] == 20
    assert widened <= 2, f"{widened} of 20 queries needed a wider candidate pool at k={k}: {calls}"


def test_exact_search_results_identical_whatever_the_first_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    docs, queries = _unit_gaussians(rng, 2000, 384), _unit_gaussians(rng, 12, 384)
    even = np.arange(0, 2000, 2)
    expected_rows, expected_scores = float64_top_k(queries, docs, 100, rows=even)
    store = _ivf_store(docs)
    for margin in (lambda k: max(8, k // 4), None, lambda k: 0):
        with monkeypatch.context() as m:
            _spy_refine(m, margin, module=gaussian)
            got = store.search_batch(queries, k=100, filter={"t": True})
        for q, hits in enumerate(got):
            assert [h.id for h in hits] == [f"d{r:05d}" for r in expected_rows[q]]
            assert np.array_equal(np.array([h.score for h in hits]), expected_scores[q])  # bit for bit


def test_rescue_results_identical_whatever_the_first_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    docs, queries = _unit_gaussians(rng, 2000, 384), _unit_gaussians(rng, 12, 384)
    rescue = np.arange(0, 2000, 10)
    store = _hnsw_store_with_rescue(docs, rescue)
    expected_rows, expected_scores = float64_top_k(queries, docs, 100, rows=rescue)
    results = []
    for margin in (lambda k: max(8, k // 4), None, lambda k: 0):
        with monkeypatch.context() as m:
            _spy_refine(m, margin, module=gaussian)
            got = store.search_batch(queries, k=100)
        results.append([[(h.id, h.score) for h in hits] for hits in got])
        for q, hits in enumerate(got):  # the rescue rows' exact top, as float64 scores them, is in every result
            mine = {h.id: h.score for h in hits if int(h.id[1:]) % 10 == 0}
            best = {f"d{r:05d}": s for r, s in zip(expected_rows[q], expected_scores[q], strict=True)}
            assert mine == {i: s for i, s in best.items() if s >= hits[-1].score}
    assert results[0] == results[1] == results[2]
