"""The flat store's first candidate pool: wide enough on embedding-like data, and results unchanged by its size.

The exact flat path (:func:`~kl_retrievers.gaussian.refine_top_k`) re-scores a first pool of ``k + margin``
float32 candidates and widens it (8x, a second FAISS search and float64 re-scoring) where the float32 error
bound cannot prove it holds the top ``k``. On means near the unit sphere with variances near 1 (what the
default model gives: SciFact's encodings) a margin of ``max(8, k // 4)`` was too small for nearly every query
at ``k`` = 50 to 100.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

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


def _spy_refine(monkeypatch: pytest.MonkeyPatch, margin: Callable[[int], int] | None = None) -> list[tuple[int, int]]:
    """Record ``(queries, pool width)`` of every candidate search of the flat path; optionally force its margin."""
    calls: list[tuple[int, int]] = []
    refine = _engines.refine_top_k

    def spy(nq: int, k: int, n_allowed: int, m: int, candidates: Callable[..., Any], *rest: Any, **kw: Any) -> Any:
        def counted(qi: np.ndarray, c: int) -> Any:
            calls.append((len(qi), c))
            return candidates(qi, c)

        return refine(nq, k, n_allowed, m if margin is None else margin(k), counted, *rest, **kw)

    monkeypatch.setattr(_engines, "refine_top_k", spy)
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
