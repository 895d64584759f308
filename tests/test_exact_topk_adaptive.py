"""The exact top-k's wider pools (:func:`~kl_retrievers.gaussian.refine_top_k`): adaptive, and still exact.

Where the first float32 pool cannot be proven to hold the top ``k``, a wider pool is searched; of it only the rows
the float32 error bound cannot rule out (``approx + bound + shift`` at least the ``k``-th exact score so far), and
not re-scored before, are re-scored in float64, and the pool grows again while its witness is not below that
score. The results must stay those of float64 brute force (:func:`~kl_retrievers.gaussian.float64_top_k`): the
same rows, the same float64 scores bit for bit, ties in ``tie_rank`` order, with a ``rows`` filter and with ``k``
near the number of allowed rows. The hard data are means far from the centre (``centre`` 0: as a flat store's
after the documents that set it were deleted) with tiny variances, where the bound is far above the gaps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers import gaussian
from kl_retrievers.gaussian import Gaussians, exact_top_k, float64_top_k, refine_top_k, top_k_rows


def _draw(rng: np.random.Generator, n: int, dim: int, offset: float, spread: float, var: float) -> Gaussians:
    mean = (offset + spread * rng.normal(size=(n, dim))).astype(np.float32)
    return Gaussians(mean, (var * np.exp(rng.normal(0.0, 0.3, size=(n, dim)))).astype(np.float32))


def _case(offset: float, spread: float, var: float, n: int, seed: int = 0) -> tuple[Gaussians, Gaussians]:
    rng = np.random.default_rng(seed)
    docs = _draw(rng, n, 32, offset, spread, var)
    return docs, _draw(rng, 12, 32, offset, spread, var).astype(np.float64)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count what :func:`exact_top_k`'s ``refine_top_k`` asks for: searches, rows re-scored, queries fallen back."""
    seen: dict[str, Any] = {"searches": [], "rows": 0, "fallback": 0, "rescored": []}
    real = gaussian.refine_top_k

    def spy(nq: int, k: int, n_allowed: int, margin: int, cand: Any, rescore: Any, fallback: Any, *rest: Any) -> Any:
        def counted_cand(qi: np.ndarray, c: int) -> Any:
            seen["searches"].append((qi.size, c))
            return cand(qi, c)

        def counted_rescore(qi: np.ndarray, rows: np.ndarray) -> Any:
            seen["rows"] += int((rows >= 0).sum())
            seen["rescored"].append((qi.copy(), rows.copy()))
            return rescore(qi, rows)

        def counted_fallback(qi: np.ndarray) -> Any:
            seen["fallback"] += int(qi.size)
            return fallback(qi)

        return real(nq, k, n_allowed, margin, counted_cand, counted_rescore, counted_fallback, *rest)

    monkeypatch.setattr(gaussian, "refine_top_k", spy)
    return seen


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])  # bit for bit


def test_a_wider_pool_rescores_only_the_rows_the_bound_cannot_rule_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pool fails for some queries; the first wider one (as wide as before) proves them, re-scoring far
    fewer rows than the whole pool, and no row twice."""
    docs, queries = _case(20.0, 0.3, 1e-4, 4000)
    centre = np.zeros(docs.dim)
    want = float64_top_k(queries, docs, 10)
    seen = _spy(monkeypatch)
    _assert_same(exact_top_k(queries, docs, 10, centre=centre), want)
    (n0, c0), (n1, c1) = seen["searches"]
    assert n0 == 12 and n1 >= 3 and seen["fallback"] == 0  # the wider pool was needed, and enough
    whole = n0 * (c0 - 1) + n1 * (c1 - 1)  # the former cost: every row of both pools re-scored
    assert seen["rows"] < 0.6 * whole, (seen["rows"], whole)
    per_query: dict[int, list[int]] = {}
    for qi, rows in seen["rescored"]:
        for q, r in zip(qi.tolist(), rows.tolist(), strict=True):
            per_query.setdefault(q, []).extend(x for x in r if x >= 0)
    assert all(len(set(r)) == len(r) for r in per_query.values())  # no row re-scored twice


def test_the_pool_grows_again_instead_of_scoring_every_row_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the first wider pool is not enough either, a wider one still is: no query is scored on every row."""
    docs, queries = _case(10.0, 0.07, 1e-3, 12000)
    centre = np.zeros(docs.dim)
    want = float64_top_k(queries, docs, 10)
    seen = _spy(monkeypatch)
    _assert_same(exact_top_k(queries, docs, 10, centre=centre), want)
    assert len(seen["searches"]) == 3 and seen["searches"][2][1] <= 12000 // 4 + 1
    assert seen["fallback"] == 0
    assert seen["rows"] < 12 * seen["searches"][2][1]


def test_a_large_batch_is_searched_in_chunks_not_sent_to_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later pool that would hold more than ``_GROW_ELEMENTS`` (queries x rows) is searched and re-scored a chunk
    of ``_GROW_ELEMENTS // rows`` queries at a time: every query gets the pools it gets alone (none is sent to
    float64 scoring of every row because of how many came with it), and the results stay brute force's."""
    docs, queries = _case(10.0, 0.07, 1e-3, 12000)
    centre = np.zeros(docs.dim)
    want = float64_top_k(queries, docs, 10)
    seen = _spy(monkeypatch)
    _assert_same(exact_top_k(queries, docs, 10, centre=centre), want)
    alone = list(seen["searches"])
    n2, c2 = alone[2]  # three searches: 12 x 27, some x 267, n2 x 2129
    assert len(alone) == 3 and n2 >= 3 and seen["fallback"] == 0
    seen.update(searches=[], rows=0, fallback=0, rescored=[])
    monkeypatch.setattr(gaussian, "_GROW_ELEMENTS", 2 * (c2 - 1))  # 2 queries at a time at the last pool
    _assert_same(exact_top_k(queries, docs, 10, centre=centre), want)
    assert seen["fallback"] == 0
    assert seen["searches"][:2] == alone[:2]
    assert seen["searches"][2:] == [(2, c2)] * (n2 // 2) + [(1, c2)] * (n2 % 2)


def test_the_first_pool_costs_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary data: one search, its whole pool re-scored in one call, nothing else."""
    docs, queries = _case(0.0, 1.0, 1.0, 3000)
    seen = _spy(monkeypatch)
    _assert_same(exact_top_k(queries, docs, 10), float64_top_k(queries, docs, 10))
    assert seen["searches"] == [(12, 27)] and seen["fallback"] == 0
    ((qi, rows),) = seen["rescored"]
    assert qi.tolist() == list(range(12)) and rows.shape == (12, 26)


@pytest.mark.parametrize("give_up", [True, False])
@pytest.mark.parametrize("offset, spread, var", [(20.0, 0.3, 1e-4), (10.0, 0.1, 1e-3), (20.0, 0.03, 1e-4)])
def test_exact_with_filters_ties_and_k_near_the_allowed_rows(
    monkeypatch: pytest.MonkeyPatch, offset: float, spread: float, var: float, give_up: bool
) -> None:
    """Against float64 brute force: a rows filter, copies of documents (exact ties), a tie order, every ``k`` up to
    the allowed rows; small pools (wider rounds of 8x from the first pool, up to every allowed row). The first two
    cases need at most two wider pools; the third (means 20 +- 0.03) gives up after the first wider pool where
    ``_rows_above`` says a later one would not be enough, and without that test (``give_up`` False) takes every
    round (``k`` = 1: pools of 17, 136, 1088 and all 1500 rows)."""
    monkeypatch.setattr(gaussian, "_GROW_MIN", 0)
    monkeypatch.setattr(gaussian, "_GROW_SHARE", 1)
    if not give_up:
        monkeypatch.setattr(gaussian, "_rows_above", lambda approx, c, lift: np.zeros(approx.shape[0]))
    seen = _spy(monkeypatch)
    docs, queries = _case(offset, spread, var, 3000, seed=1)
    mean, v = np.array(docs.mean), np.array(docs.var)
    mean[1::7], v[1::7] = mean[0::7][: len(mean[1::7])], v[0::7][: len(v[1::7])]  # copies: exact ties
    docs = Gaussians(mean, v)
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(len(docs), 1500, replace=False))
    tie_rank = rng.permutation(len(docs))
    for centre in (np.zeros(docs.dim), None):
        for k in (1, 10, 100, 1400, 1484, 1499, 1500, 2000):
            got = exact_top_k(queries, docs, k, rows=rows, centre=centre, tie_rank=tie_rank)
            _assert_same(got, float64_top_k(queries, docs, min(k, 1500), rows=rows, tie_rank=tie_rank))
    if spread == 0.03 and not give_up:
        assert [c for _, c in seen["searches"][:4]] == [18, 137, 1089, 1500] and seen["fallback"] == 0
    elif spread == 0.03:
        assert seen["fallback"] > 0


def _float32_scores(rng: np.random.Generator, exact: np.ndarray, bound: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """float32 scores within ``0.9 * bound`` of ``exact - shift``, the noise drawn anew on every call."""
    noise = rng.uniform(-0.9, 0.9, size=exact.shape) * bound[:, None]
    return (exact - shift[:, None] + noise).astype(np.float32)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("small_pools", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_refine_matches_brute_force_on_random_pools(
    monkeypatch: pytest.MonkeyPatch, seed: int, small_pools: bool, chunked: bool
) -> None:
    """The callbacks' contract on random data (bounds from tiny to far above the spread; ties; k up to n_allowed;
    float32 scores that differ from one search to the next, as FAISS's may; ``small_pools``: wider pools of 8x
    from the first, up to every row, so that every round is taken; ``chunked``: every wider pool searched one
    query at a time): the result is brute force's, no row is re-scored twice, and no query searched more than
    ``1 + _GROW_ROUNDS`` times."""
    if small_pools:
        monkeypatch.setattr(gaussian, "_GROW_MIN", 0)
        monkeypatch.setattr(gaussian, "_GROW_SHARE", 1)
    if chunked:
        monkeypatch.setattr(gaussian, "_GROW_ELEMENTS", 1)
    rng = np.random.default_rng(seed)
    nq, n = int(rng.integers(1, 9)), int(rng.integers(1, 3000))
    k = int(rng.integers(1, n + 1)) if rng.random() < 0.3 else int(rng.integers(1, min(n, 60) + 1))
    bound = 10.0 ** rng.uniform(-2, 2.5, size=nq)
    shift = rng.normal(0, 100, size=nq)
    exact = rng.integers(0, int(rng.integers(2, 400)), size=(nq, n)).astype(np.float64) * 0.5  # many ties
    tie_rank = rng.permutation(n)
    rescored: list[set[int]] = [set() for _ in range(nq)]
    calls: list[tuple[np.ndarray, int]] = []

    def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append((qi.copy(), c))
        approx = _float32_scores(rng, exact[qi], bound[qi], shift[qi])
        lab = np.lexsort((np.broadcast_to(np.arange(n), approx.shape), -approx), axis=1)[:, :c]
        return lab, np.take_along_axis(approx, lab, 1), bound[qi]

    def rescore(qi: np.ndarray, lab: np.ndarray) -> np.ndarray:
        for q, r in zip(qi.tolist(), lab.tolist(), strict=True):
            new = [x for x in r if x >= 0]
            assert not rescored[q] & set(new) and len(set(new)) == len(new)
            rescored[q] |= set(new)
        return np.where(lab >= 0, np.take_along_axis(exact[qi], np.maximum(lab, 0), 1), -np.inf)

    def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k_rows(exact[qi], np.tile(np.arange(n), (qi.size, 1)), k, tie_rank)

    got = refine_top_k(nq, k, n, int(rng.integers(0, 20)), candidates, rescore, fallback, shift, tie_rank)
    _assert_same(got, fallback(np.arange(nq)))
    searched = np.bincount(np.concatenate([qi for qi, _ in calls]), minlength=nq)
    assert searched.max() <= 1 + gaussian._GROW_ROUNDS
    if chunked:
        assert all(qi.size == 1 for qi, _ in calls[1:])
    else:
        assert len(calls) <= 1 + gaussian._GROW_ROUNDS


def test_refine_rescores_only_new_rows_above_the_line() -> None:
    """One query, exact score ``-r`` for row ``r``, bound 30: the first pool (rows 0-9, k 3) leaves the witness
    within the bound; the wider pool re-scores only rows 10 to 32 (``-r + 30 >= -2``), each once."""
    n, k = 1000, 3
    exact = -np.arange(n, dtype=np.float64)
    calls: list[list[int]] = []

    def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.tile(np.arange(c), (qi.size, 1)),
            np.tile(exact[:c].astype(np.float32), (qi.size, 1)),
            np.full(1, 30.0),
        )

    def rescore(qi: np.ndarray, lab: np.ndarray) -> np.ndarray:
        calls.append([int(x) for x in lab[0] if x >= 0])
        return np.where(lab >= 0, exact[np.maximum(lab, 0)], -np.inf)

    def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("no float64 scoring of every row")

    rows, scores = refine_top_k(1, k, n, 7, candidates, rescore, fallback, np.zeros(1), np.arange(n))
    assert calls == [list(range(10)), list(range(10, 33))]
    assert rows.tolist() == [[0, 1, 2]] and scores.tolist() == [[0.0, -1.0, -2.0]]


def test_flat_store_with_a_far_centre_rescores_fewer_rows_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flat store's search (FAISS candidates, a tombstone mask) takes the same wider pools: its centre set by a
    document at 0, deleted since, every query needs a wider pool, which re-scores far fewer rows than all of it."""
    from kl_retrievers.index import KLStore
    from kl_retrievers.store import _engines

    docs, queries = _case(20.0, 0.3, 1e-4, 4000, seed=3)
    store = KLStore(index_type="flat")
    store.add(gaussians=Gaussians(np.zeros((1, docs.dim)), np.ones((1, docs.dim))), ids=["outlier"])  # the centre
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(len(docs))])
    store.delete(["outlier"])
    want_rows, want_scores = float64_top_k(queries, docs, 10)
    seen: dict[str, Any] = {"searches": [], "rows": 0}
    real = _engines.refine_top_k

    def spy(nq: int, k: int, n_allowed: int, margin: int, cand: Any, rescore: Any, *rest: Any) -> Any:
        def counted_cand(qi: np.ndarray, c: int) -> Any:
            seen["searches"].append((qi.size, c))
            return cand(qi, c)

        def counted_rescore(qi: np.ndarray, rows: np.ndarray) -> Any:
            seen["rows"] += int((rows >= 0).sum())
            return rescore(qi, rows)

        return real(nq, k, n_allowed, margin, counted_cand, counted_rescore, *rest)

    monkeypatch.setattr(_engines, "refine_top_k", spy)
    got = store.search_batch(queries, k=10)
    for q, hits in enumerate(got):
        assert [h.id for h in hits] == [f"d{r}" for r in want_rows[q]]
        assert np.array_equal(np.array([h.score for h in hits]), want_scores[q])  # bit for bit
    (n0, c0), (n1, c1) = seen["searches"]
    assert n1 >= 3
    assert seen["rows"] < 0.6 * (n0 * (c0 - 1) + n1 * (c1 - 1)), seen
