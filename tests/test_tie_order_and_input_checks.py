"""Audit of the scoring core, each fix with a test that fails on the previous code.

- Exactly tied documents came out in an order that depended on the path a store query took (the
  FAISS flat path gave the highest row first, HNSW / IVF the lowest, the exact path before an index
  is built and the float64 fallback argpartition's order), and the exact path was not a prefix
  across ``k``. Every path now ranks ties the same way (the higher row, i.e. the later added
  document, first), and the public :func:`exact_top_k` / :func:`float64_top_k` default to row order.
- ``exact_top_k(rows=...)`` read a boolean mask as rows 0 / 1, returned duplicated rows several
  times, wrapped ``-1`` and truncated floats: ``rows`` is now checked.
- ``Gaussians`` dropped the imaginary part of complex arrays and parsed strings as numbers.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kl_retrievers.gaussian as gaussian
import kl_retrievers.store._engines as engines
from kl_retrievers.gaussian import Gaussians, exact_top_k, float64_top_k, neg_kl_rows
from kl_retrievers.store import KLStore

N, DIM = 2000, 4
TIED = np.array([5, *range(100, 110), 1500, 1999])  # identical documents


def _tied_corpus() -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, int]]]:
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(N, DIM)).astype(np.float32)
    var = np.exp(rng.normal(size=(N, DIM)) * 0.3).astype(np.float32)
    mean[TIED], var[TIED] = mean[5], var[5]
    ids = [f"id{i:04d}" for i in range(N)]
    metas = [{"g": 0 if i % 7 else 1} for i in range(N)]
    return mean, var, ids, metas


def _query(mean: np.ndarray, var: np.ndarray) -> Gaussians:
    return Gaussians(mean[5:6].astype(np.float64) + 0.01, var[5:6].astype(np.float64))


def _expected(mean: np.ndarray, var: np.ndarray, q: Gaussians, allowed: np.ndarray) -> list[int]:
    """Allowed rows by float64 score, ties the higher row first."""
    docs = Gaussians(mean.astype(np.float64), var.astype(np.float64))
    scores = neg_kl_rows(q, docs, allowed[None, :])[0]
    return [int(r) for r in allowed[np.lexsort((-allowed, -scores))]]


def _store(index_type: str, **kw: object) -> KLStore:
    mean, var, ids, metas = _tied_corpus()
    store = KLStore(index_type=index_type, **kw)  # type: ignore[arg-type]
    store.add(gaussians=Gaussians(mean, var), ids=ids, metadatas=metas)
    return store


STORES = {
    "flat": {"index_type": "flat"},
    "hnsw": {"index_type": "hnsw", "rescore_pool": 50, "rescore_factor": 2},
    "ivf": {"index_type": "ivf", "nlist": 4, "nprobe": 4, "rescore_pool": 50, "rescore_factor": 2},
    "ivf_unbuilt": {"index_type": "ivf", "nlist": 1024},  # fewer than 8 * nlist documents: exact path
    "hnsw_whole_pool": {"index_type": "hnsw", "rescore_pool": 5000},  # every row allowed: exact path
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_tied_documents_rank_the_same_way_on_every_store_path(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    mean, var, _, _ = _tied_corpus()
    q = _query(mean, var)
    store = _store(**STORES[name])  # type: ignore[arg-type]
    built = store._engine.index is not None
    assert built == (name in ("flat", "hnsw", "ivf", "hnsw_whole_pool"))
    want = _expected(mean, var, q, np.arange(N))
    assert set(want[: TIED.size]) == set(TIED.tolist())
    assert want[:3] == [1999, 1500, 109]
    for k in (1, 3, 7, 12, 13, 14, 20):
        got = [int(h.id[2:]) for h in store.search(q, k=k)]
        assert got == want[:k], (name, k)


@pytest.mark.parametrize("name", ["flat", "ivf", "ivf_unbuilt"])
def test_tied_documents_under_a_filter_rank_the_same_way(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    mean, var, _, metas = _tied_corpus()
    q = _query(mean, var)
    # the ivf store sends a filter allowing few rows to its exact path
    store = _store(**STORES[name], exact_threshold=N)  # type: ignore[arg-type]
    allowed = np.array([i for i, m in enumerate(metas) if m["g"] == 0])
    want = _expected(mean, var, q, allowed)
    for k in (2, 5, 11, 12, 15):
        got = [int(h.id[2:]) for h in store.search(q, k=k, filter={"g": 0})]
        assert got == want[:k], (name, k)


def test_forced_float64_fallback_ranks_ties_as_the_faiss_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    mean, var, _, _ = _tied_corpus()
    q = _query(mean, var)
    store = _store("flat")
    pooled = [[h.id for h in store.search(q, k=k)] for k in (3, 12, 14)]
    # an infinite float32 error bound proves nothing: every query is scored in float64 on every row
    monkeypatch.setattr(engines, "float32_score_bound", lambda qv, *a, **kw: np.full(len(qv), np.inf))
    monkeypatch.setattr(gaussian, "float32_score_bound", lambda qv, *a, **kw: np.full(len(qv), np.inf))
    fallback = [[h.id for h in store.search(q, k=k)] for k in (3, 12, 14)]
    assert fallback == pooled
    unbuilt = _store(**STORES["ivf_unbuilt"])  # type: ignore[arg-type]
    assert [[h.id for h in unbuilt.search(q, k=k)] for k in (3, 12, 14)] == pooled
    want = _expected(mean, var, q, np.arange(N))
    assert [int(i[2:]) for i in pooled[2]] == want[:14]


def test_exact_path_is_a_prefix_across_k_with_many_ties(caplog: pytest.LogCaptureFixture) -> None:
    """The audit's case: 200 of 500 documents identical to the query, an IVF store not built yet."""
    caplog.set_level(logging.ERROR)
    rng = np.random.default_rng(0)
    n = 500
    mean, var = rng.normal(size=(n, 3)), np.ones((n, 3))
    mean[rng.choice(n, 200, replace=False)] = mean[0]
    ids = [f"{i:03d}" for i in range(n)]
    q = Gaussians(mean[:1], var[:1])
    flat, ivf = KLStore(index_type="flat"), KLStore(index_type="ivf", nlist=1024)
    for store in (flat, ivf):
        store.add(gaussians=Gaussians(mean, var), ids=ids)
    deep_flat = [h.id for h in flat.search(q, k=120)]
    deep_ivf = [h.id for h in ivf.search(q, k=120)]
    assert deep_flat == deep_ivf
    assert deep_flat[:4] == ["498", "493", "492", "490"]  # the FAISS flat path's order, kept
    for k in (26, 27, 34, 35, 119):
        assert [h.id for h in ivf.search(q, k=k)] == deep_ivf[:k]
        assert [h.id for h in flat.search(q, k=k)] == deep_flat[:k]


def test_public_top_k_defaults_to_row_order_and_is_prefix_stable() -> None:
    rng = np.random.default_rng(0)
    n = 500
    mean, var = rng.normal(size=(n, 3)), np.ones((n, 3))
    tied = np.sort(rng.choice(n, 200, replace=False))
    mean[tied] = mean[0]
    docs, q = Gaussians(mean, var), Gaussians(mean[:1], var[:1])
    order = np.unique(np.r_[0, tied])  # every row identical to the query, lower row first
    deep_exact = exact_top_k(q, docs, 80)[0][0]
    deep_f64 = float64_top_k(q, docs, 80)[0][0]
    assert deep_exact.tolist() == deep_f64.tolist() == order[:80].tolist()
    for k in range(1, 80):
        assert exact_top_k(q, docs, k)[0][0].tolist() == deep_exact[:k].tolist(), k
        assert float64_top_k(q, docs, k)[0][0].tolist() == deep_f64[:k].tolist(), k


def test_float64_top_k_orders_ties_across_blocks_by_tie_rank() -> None:
    """Many ties spread over several streamed blocks: the result is the full sort by (score, rank)."""
    rng = np.random.default_rng(3)
    n = 10000
    mean = rng.integers(0, 3, size=(n, 2)).astype(np.float64)  # 9 distinct documents, many copies each
    docs = Gaussians(mean, np.ones((n, 2)))
    q = Gaussians(np.array([[0.4, 0.6], [2.0, 1.0]]), np.ones((2, 2)))
    rank = rng.permutation(n)
    scores = neg_kl_rows(q, docs, np.broadcast_to(np.arange(n), (2, n)).copy())
    for k in (1, 50, 1111, 3000):
        rows, got = float64_top_k(q, docs, k, tie_rank=rank)
        for i in range(2):
            want = np.lexsort((rank, -scores[i]))[:k]
            assert rows[i].tolist() == want.tolist(), (k, i)
            assert np.array_equal(got[i], scores[i][want])


# ------------------------------------------------------------------------------ rows checked
def _small() -> tuple[Gaussians, Gaussians]:
    rng = np.random.default_rng(0)
    docs = Gaussians(rng.normal(size=(50, 4)), np.ones((50, 4)))
    return docs[:1], docs


@pytest.mark.parametrize("fn", [exact_top_k, float64_top_k])
def test_rows_boolean_mask_is_read_as_its_true_rows(fn: object) -> None:
    q, docs = _small()
    mask = np.zeros(50, dtype=bool)
    mask[[3, 17, 40]] = True
    got = fn(q, docs, 3, rows=mask)  # type: ignore[operator]
    want = fn(q, docs, 3, rows=np.flatnonzero(mask))  # type: ignore[operator]
    assert sorted(got[0][0].tolist()) == [3, 17, 40]
    assert got[0].tolist() == want[0].tolist()
    assert np.array_equal(got[1], want[1])


@pytest.mark.parametrize("fn", [exact_top_k, float64_top_k])
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.array([3, 3, 3, 4, 5]), "row 3 is given more than once"),
        (np.array([-1, 2]), "in [0, 50); got -1"),
        (np.array([2, 50]), "in [0, 50); got 50"),
        (np.array([1.7, 2.2]), "dtype float64"),
        (np.ones(49, dtype=bool), "one entry per document (50); got 49"),
        (np.array([[1, 2]]), "1-D"),
        (np.array(["1", "2"]), "dtype <U1"),
    ],
)
def test_bad_rows_are_refused_naming_the_value(fn: object, rows: np.ndarray, message: str) -> None:
    q, docs = _small()
    with pytest.raises(ValueError, match="rows") as err:
        fn(q, docs, 5, rows=rows)  # type: ignore[operator]
    assert message in str(err.value)


def test_valid_rows_in_any_order_and_empty_rows_still_work() -> None:
    q, docs = _small()
    r1, s1 = exact_top_k(q, docs, 3, rows=np.array([9, 2, 30, 4], dtype=np.int32))
    r2, s2 = exact_top_k(q, docs, 3, rows=[2, 4, 9, 30])  # type: ignore[arg-type]
    assert r1.tolist() == r2.tolist() and np.array_equal(s1, s2)
    assert exact_top_k(q, docs, 3, rows=np.array([], dtype=np.int64))[0].shape == (1, 0)
    assert exact_top_k(q, docs, 3, rows=[])[0].shape == (1, 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ dtypes checked
@pytest.mark.parametrize(
    ("mean", "var", "dtype"),
    [
        (np.array([[1 + 5j, 2j]]), np.ones((1, 2)), "complex128"),
        (np.array([["1", "2"]]), np.array([["1e-3", "1"]]), "<U1"),
        (np.zeros((1, 2)), np.array([["1", "2"]]), "<U1"),
        (np.array([[None, 1]]), np.ones((1, 2)), "object"),
        (np.array([[1.0, 2.0]], dtype=object), np.ones((1, 2)), "object"),
    ],
)
def test_gaussians_refuse_non_real_numpy_dtypes(mean: np.ndarray, var: np.ndarray, dtype: str) -> None:
    with pytest.raises(TypeError, match="bool, integer or floating") as err:
        Gaussians(mean, var)
    assert f"dtype {dtype}" in str(err.value)


def test_gaussians_refuse_complex_tensors_and_keep_real_ones() -> None:
    with pytest.raises(TypeError, match="complex64"):
        Gaussians(torch.zeros(1, 2, dtype=torch.complex64), torch.ones(1, 2))
    assert Gaussians(np.zeros((1, 2), dtype=np.int32), np.ones((1, 2), dtype=bool)).mean.dtype == np.float64
    assert Gaussians(torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2)).mean.dtype == torch.float32
    assert Gaussians([[0.0, 1.0]], [[1.0, 2.0]]).var.dtype == np.float64  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fast path of check_float32_scorable
@settings(max_examples=200, deadline=None)
@given(
    log_scale=st.floats(min_value=-40, max_value=40),
    log_var=st.floats(min_value=-40, max_value=40),
    spread=st.floats(min_value=0, max_value=20),
    dim=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_check_float32_scorable_fast_path_agrees_with_the_full_check(
    log_scale: float, log_var: float, spread: float, dim: int, seed: int
) -> None:
    """The bound that skips the full rewrite must never accept what the full check refuses."""
    from kl_retrievers import gaussian as gm

    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(5, dim)) * 10.0**log_scale
    var = np.exp(rng.normal(size=(5, dim)) * spread) * 10.0**log_var
    g = Gaussians(mean, var)

    def outcome(bound: float) -> str | None:
        old = gm._FAST_CHECK_BOUND
        gm._FAST_CHECK_BOUND = bound
        try:
            gm.check_float32_scorable(g, "document")
        except ValueError as exc:
            return str(exc)
        finally:
            gm._FAST_CHECK_BOUND = old
        return None

    assert outcome(gm._FAST_CHECK_BOUND) == outcome(0.0)  # 0.0: never the fast path


def test_compiled_filters_return_real_bools() -> None:
    """compile_filter promises metadata -> bool: a one-condition filter returned what == gave."""
    from kl_retrievers.filters import compile_filter

    for spec in ({"a": 1}, {"a": {"$ne": 1}}, {"a": [1, 2]}, {"a": {"$gte": 1}}):
        pred = compile_filter(spec)
        assert pred is not None
        assert type(pred({"a": np.int64(1)})) is bool, spec
    with pytest.raises(ValueError, match="ambiguous"):  # as before: an array value has no single truth value
        compile_filter({"a": 1})({"a": np.array([1, 2])})  # type: ignore[misc]


def test_keys_that_collide_as_json_are_named_as_json_spells_them() -> None:
    store = KLStore()
    g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(TypeError, match=r"same once written as JSON strings: \['true'\]"):
        store.add(gaussians=g, ids=["x"], metadatas=[{True: 1, "true": 2}])
