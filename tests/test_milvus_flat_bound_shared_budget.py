"""``prove_flat``'s error bound shares the ``KL`` budget among the dimensions.

A row scoring ``-kl`` or more has ``sum_j (x_j - 1 - log x_j + (mu_q - mu_d)_j^2 / var_d) <= 2 kl``;
``_flat_error_bound`` spent the whole ``2 kl`` in every dimension, so at dimension 384 its inner-product bound was
about 30 times too wide for the gaps it had to prove (4.3 against 0.12 at ``kl = 50``) and proved no pool of
ordinary data: every query was searched again with 8 times the pool, then scanned. Still a bound: checked against
the float32 scores of adversarial rows (the whole budget in one dimension's variance or mean, spread over all,
means far from the origin), each of its two terms (:func:`_flat_magnitude_bound`: ``sum_j |q~_j d~_j|`` and the error of
the stored first coordinate) against the rows' own, the first nearly reached, and the searches still equal a float64
brute force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store.milvus as milvus_module
from kl_retrievers.gaussian import (
    Gaussians,
    document_gaussians_from_vectors,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    neg_kl_matrix,
)
from kl_retrievers.store import MilvusKLStore
from kl_retrievers.store.milvus import _flat_error_bound, _flat_magnitude_bound


def _ratio_spending(s: float, above: bool) -> float:
    """The ratio ``x`` (above or below 1) with ``x - 1 - log x = s`` (bisection)."""
    lo, hi = (1.0, 2.0 * s + 2.0) if above else (1e-300, 1.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi) if above else float(np.sqrt(lo * hi))
        if (mid - 1.0 - np.log(mid) > s) == above:
            hi = mid
        else:
            lo = mid
    return lo if above else hi


def _adversarial_rows(query: Gaussians, kl: float, rng: np.random.Generator) -> Gaussians:
    """Rows at ``KL <= kl`` from ``query`` that spend the budget in one place or everywhere."""
    qm, qv = np.asarray(query.mean)[0], np.asarray(query.var)[0]
    dim = qm.size
    means, variances = [], []
    budget = 2.0 * kl * 0.999
    for j in rng.choice(dim, size=min(dim, 6), replace=False):
        # all of it in one variance (below 1: at most e^-61, whose 1 / var_d float32 still holds as a normal number)
        for x in (_ratio_spending(budget, True), _ratio_spending(min(budget, 60.0), False)):
            v = qv.copy()
            v[j] = qv[j] / x  # x = var_q / var_d
            means.append(qm.copy())
            variances.append(v)
        m = qm.copy()  # all of it in one mean, away from the origin
        m[j] += np.sign(qm[j]) * np.sqrt(budget * qv[j])
        means.append(m)
        variances.append(qv.copy())
    for share in (0.1, 0.9):  # spread over every dimension
        up, down = _ratio_spending(share * budget / dim, True), _ratio_spending(min(share * budget / dim, 60.0), False)
        v = qv / np.where(rng.random(dim) < 0.5, up, down)
        means.append(qm + np.sign(qm) * np.sqrt((1.0 - share) * budget * v / dim))
        variances.append(v)
    rows = Gaussians(np.asarray(means), np.asarray(variances))
    assert np.all(-np.asarray(neg_kl_matrix(query, rows))[0] <= kl)
    return rows


def _query(dim: int, offset: float, scale: float) -> Gaussians:
    rng = np.random.default_rng(dim)
    return Gaussians(offset + rng.normal(0, 0.3, (1, dim)), scale * np.exp(rng.normal(0, 0.5, (1, dim))))


def _terms(query: Gaussians, kl: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """For adversarial rows at ``KL <= kl``: the float32 rows Milvus holds, the float64 scores the store reports,
    and per row ``sum_j |q~_j d~_j|`` and the error of the stored first coordinate (what the two terms of
    :func:`_flat_magnitude_bound` bound)."""
    dim = np.asarray(query.mean).shape[1]
    stored = np.asarray(kl_document_vectors(_adversarial_rows(query, kl, rng)), dtype=np.float32)
    recovered = document_gaussians_from_vectors(stored.astype(np.float64), dim)
    reported = np.asarray(neg_kl_matrix(query, recovered))[0]
    d = np.asarray(kl_document_vectors(recovered), dtype=np.float64)  # the row as the store re-scores it
    magnitude = np.abs(d * np.asarray(kl_query_vectors(query), dtype=np.float64)[0]).sum(axis=1)
    first = np.abs(stored[:, 0].astype(np.float64) - d[:, 0])
    return stored, reported, magnitude, first


#: (dim, offset of the query means, scale of its variances): a variance scale of 1e4 makes the |log var| terms,
#: which every row shares, most of the magnitude: the bound is then nearly reached.
QUERIES = [(8, 0.0, 1.0), (384, 0.0, 1.0), (384, 30.0, 1.0), (384, 0.0, 1e4), (8, 0.0, 1e4)]


@pytest.mark.parametrize(("dim", "offset", "scale"), QUERIES)
def test_the_bound_covers_the_float32_scores_of_adversarial_rows(dim: int, offset: float, scale: float) -> None:
    query = _query(dim, offset, scale)
    rng = np.random.default_rng(dim)
    for kl in (0.01, 0.5, 50.0, 500.0):
        stored, reported, magnitude, first = _terms(query, kl, rng)
        magnitude_bound, first_bound, centred = _flat_magnitude_bound(query, np.array([kl]))
        assert magnitude.max() <= magnitude_bound[0], (kl, magnitude.max(), magnitude_bound)  # each term
        assert first.max() <= first_bound[0], (kl, first.max(), first_bound)
        assert centred[0] == 0.0  # no centre: an inner-product collection's rows are centred before storing
        q32 = np.asarray(kl_query_vectors(query), dtype=np.float32)[0]
        shift = float(np.asarray(kl_query_constant(query))[0])
        bound = float(_flat_error_bound(query, np.array([kl]))[0])
        for scores in (stored @ q32, np.cumsum(stored * q32, axis=1, dtype=np.float32)[:, -1]):  # two orders
            error = np.abs(scores.astype(np.float64) + shift - reported)
            assert error.max() <= bound, (kl, error.max(), bound)


@pytest.mark.parametrize(("dim", "at_least"), [(384, 0.99), (8, 0.95)])
def test_the_magnitude_term_is_nearly_reached(dim: int, at_least: float) -> None:
    """Sharp: the rows' own ``sum_j |q~_j d~_j|`` comes within 1% (dim 384) of the bound, so a slip that made the
    bound smaller would fail above; the first coordinate's error within a factor of 3."""
    query = _query(dim, 0.0, 1e4)
    _, _, magnitude, first = _terms(query, 0.01, np.random.default_rng(dim))
    magnitude_bound, first_bound, _ = _flat_magnitude_bound(query, np.array([0.01]))
    assert at_least * magnitude_bound[0] <= magnitude.max() <= magnitude_bound[0]
    assert first_bound[0] / 3 <= first.max() <= first_bound[0]


def test_the_bound_shares_the_budget_at_large_dimension() -> None:
    rng = np.random.default_rng(0)
    query = Gaussians(rng.normal(0, 0.3, (1, 384)), np.exp(rng.normal(0, 0.5, (1, 384))))
    # before: 0.46, 4.3 and 43 (the budget spent in every dimension); now 0.035, 0.12 and 0.89
    assert np.all(_flat_error_bound(query, np.array([5.0, 50.0, 500.0])) < [0.05, 0.2, 1.2])
    assert np.all(np.diff(_flat_error_bound(query, np.array([0.1, 1.0, 10.0, 100.0]))) > 0)


def test_a_flat_inner_product_search_at_dimension_384_is_proven_without_widening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    dim, n = 384, 2000
    docs = Gaussians(rng.normal(0, 0.3, (n, dim)), np.exp(rng.normal(0, 0.5, (n, dim))))
    pick = rng.integers(0, n, 10)
    queries = Gaussians(
        np.asarray(docs.mean)[pick] + rng.normal(0, 0.1, (10, dim)),
        np.asarray(docs.var)[pick] * np.exp(rng.normal(0, 0.1, (10, dim))),
    )
    ids = [f"d{i:04d}" for i in range(n)]
    pools: list[int] = []  # the pool sizes refine_top_k asked Milvus for
    fallbacks: list[int] = []
    real = milvus_module.refine_top_k

    def spy(nq: int, k: int, n: int, margin: int, candidates: Any, rescore: Any, fallback: Any, *rest: Any) -> Any:
        def asked(qi: np.ndarray, c: int) -> Any:
            pools.append(c)
            return candidates(qi, c)

        def scanned(qi: np.ndarray) -> Any:
            fallbacks.append(qi.size)
            return fallback(qi)

        return real(nq, k, n, margin, asked, rescore, scanned, *rest)

    monkeypatch.setattr(milvus_module, "refine_top_k", spy)
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", prove_flat=True) as store:
        store.add(gaussians=docs, ids=ids)
        got = [[h.id for h in row] for row in store.search_batch(queries, k=10)]
    assert pools == [101] and fallbacks == []  # before: all 10 pools unproven, searched again, then every row scored
    exact = np.asarray(neg_kl_matrix(queries, docs))
    assert got == [[ids[j] for j in np.argsort(-row, kind="stable")[:10]] for row in exact]
