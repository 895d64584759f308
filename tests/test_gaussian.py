from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from conftest import random_gaussians
from kl_retrievers import (
    Gaussians,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    neg_kl,
    neg_kl_matrix,
)


def torch_reference(q: Gaussians, d: Gaussians) -> torch.Tensor:
    """-KL for all pairs from torch.distributions."""
    qt, dt = q.torch(), d.torch()
    p = Independent(Normal(qt.mean[:, None, :], qt.var[:, None, :].sqrt()), 1)
    r = Independent(Normal(dt.mean[None, :, :], dt.var[None, :, :].sqrt()), 1)
    return -kl_divergence(p, r)


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_neg_kl_matrix_matches_torch_distributions(dtype: type, tol: float) -> None:
    q = random_gaussians(7, 32, seed=1, dtype=dtype)
    d = random_gaussians(11, 32, seed=2, dtype=dtype)
    ref = torch_reference(q.astype(np.float64), d.astype(np.float64)).numpy()
    ours = neg_kl_matrix(q, d)
    assert ours.dtype == dtype
    rel = np.abs(ours - ref) / np.abs(ref)
    assert rel.max() < tol
    # torch in, torch out, same numbers
    ours_t = neg_kl_matrix(q.torch(), d.torch())
    assert isinstance(ours_t, torch.Tensor)
    np.testing.assert_allclose(ours_t.numpy(), ours, rtol=tol)


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_neg_kl_rowwise_and_broadcast(dtype: type, tol: float) -> None:
    q = random_gaussians(5, 16, seed=3, dtype=dtype)
    d = random_gaussians(5, 16, seed=4, dtype=dtype)
    full = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))
    np.testing.assert_allclose(neg_kl(q, d), np.diag(full), rtol=tol)
    np.testing.assert_allclose(neg_kl(q[0:1], d), full[0], rtol=tol)
    ref = torch_reference(q[2:3].astype(np.float64), d.astype(np.float64)).numpy()[0]
    np.testing.assert_allclose(neg_kl(q[2:3], d), ref, rtol=tol)


def test_identical_gaussians_score_zero_and_kl_is_nonnegative() -> None:
    g = random_gaussians(6, 8, seed=5)
    np.testing.assert_allclose(neg_kl(g, g), 0.0, atol=1e-12)
    assert (neg_kl_matrix(g, g) <= 1e-12).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inner_product_rewrite_is_exact(dtype: type) -> None:
    q = random_gaussians(9, 48, seed=6, dtype=dtype)
    d = random_gaussians(13, 48, seed=7, dtype=dtype)
    qv, dv, c = kl_query_vectors(q), kl_document_vectors(d), kl_query_constant(q)
    assert qv.shape == (9, 2 * 48 + 1) and dv.shape == (13, 2 * 48 + 1) and c.shape == (9,)
    rewrite = qv.astype(np.float64) @ dv.astype(np.float64).T + c.astype(np.float64)[:, None]
    exact = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))
    if dtype == np.float64:
        assert (np.abs(rewrite - exact) / np.abs(exact)).max() < 1e-10
    else:  # float32 inputs: the error is that of float32 rounding of the transformed vectors
        assert (np.abs(rewrite - exact) / np.abs(exact)).max() < 1e-4
    # ranking per query identical to exact -KL
    np.testing.assert_array_equal(np.argsort(-rewrite, axis=1)[:, :5], np.argsort(-exact, axis=1)[:, :5])


def test_rewrite_torch_matches_numpy() -> None:
    q = random_gaussians(3, 8, seed=8)
    d = random_gaussians(4, 8, seed=9)
    np.testing.assert_allclose(kl_query_vectors(q.torch()).numpy(), kl_query_vectors(q))
    np.testing.assert_allclose(kl_document_vectors(d.torch()).numpy(), kl_document_vectors(d))
    np.testing.assert_allclose(kl_query_constant(q.torch()).numpy(), kl_query_constant(q))


def test_unit_variance_ranks_like_negative_squared_l2() -> None:
    rng = np.random.default_rng(10)
    mq, md = rng.normal(size=(4, 16)), rng.normal(size=(50, 16))
    q, d = Gaussians(mq, np.ones_like(mq)), Gaussians(md, np.ones_like(md))
    scores = neg_kl_matrix(q, d)
    sq = ((mq[:, None, :] - md[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(scores, -0.5 * sq, rtol=1e-12)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1), np.argsort(sq, axis=1))


def test_variance_matters_for_ranking() -> None:
    # Same mean distance, a wider document distribution covers the query better.
    q = Gaussians(np.zeros((1, 2)), np.full((1, 2), 2.0))
    d = Gaussians(np.ones((2, 2)), np.array([[0.5, 0.5], [2.0, 2.0]]))
    s = neg_kl_matrix(q, d)[0]
    assert s[1] > s[0]


@pytest.mark.parametrize(
    ("mean", "var", "message"),
    [
        (np.zeros((2, 3)), np.array([[1.0, 0.0, 1.0], [1, 1, 1]]), "var must be > 0"),
        (np.zeros((2, 3)), -np.ones((2, 3)), "non-positive"),
        (np.array([[np.nan, 0, 0]]), np.ones((1, 3)), "mean must be finite"),
        (np.zeros((1, 3)), np.array([[np.inf, 1, 1]]), "var must be finite"),
        (np.zeros((2, 3)), np.ones((2, 4)), r"mean \(2, 3\) and var \(2, 4\)"),
    ],
)
def test_bad_gaussians_raise(mean: np.ndarray, var: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Gaussians(mean, var)


def test_dimension_mismatch_names_both_shapes() -> None:
    q, d = random_gaussians(2, 4), random_gaussians(3, 5)
    with pytest.raises(ValueError, match=r"queries \(2, 4\) and documents \(3, 5\)"):
        neg_kl_matrix(q, d)
    with pytest.raises(ValueError, match="same dimension"):
        neg_kl(q, d)
    with pytest.raises(ValueError, match="neg_kl_matrix"):
        neg_kl(random_gaussians(2, 4), random_gaussians(3, 4))
    with pytest.raises(TypeError, match="both be numpy or both torch"):
        neg_kl_matrix(q, random_gaussians(3, 4).torch())


def test_batch_helpers() -> None:
    g = random_gaussians(5, 3, seed=11)
    assert len(g) == 5 and g.dim == 3
    assert len(g[1:3]) == 2
    assert Gaussians(np.zeros(3), np.ones(3)).mean.shape == (1, 3)
    both = Gaussians.concat([g[:2], g[2:]])
    np.testing.assert_array_equal(both.mean, g.mean)
    np.testing.assert_allclose(g.uncertainty(), np.log(g.var).mean(axis=1))
    assert g.torch().is_torch and not g.torch().numpy().is_torch
    assert Gaussians(np.zeros((2, 2), dtype=np.int64), np.ones((2, 2))).mean.dtype == np.float64
    with pytest.raises(ValueError, match="empty list"):
        Gaussians.concat([])


def test_empty_document_set_gives_empty_matrix() -> None:
    q = random_gaussians(2, 4)
    assert neg_kl_matrix(q, q[:0]).shape == (2, 0)


def test_large_matrix_uses_blocks_and_agrees_with_rewrite() -> None:
    q = random_gaussians(3, 64, seed=12)
    d = random_gaussians(5000, 64, seed=13)
    exact = neg_kl_matrix(q, d)
    rewrite = kl_query_vectors(q) @ kl_document_vectors(d).T + kl_query_constant(q)[:, None]
    np.testing.assert_allclose(exact, rewrite, rtol=1e-10)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_bad_values_are_located_by_row_and_column(lib: str) -> None:
    """A NaN or a non-positive variance in a big batch: the message says where the first one is."""
    mean, var = np.zeros((50, 8)), np.ones((50, 8))
    mean[31, 5] = np.nan
    convert: Any = (lambda a: a) if lib == "numpy" else torch.from_numpy
    with pytest.raises(ValueError, match=r"mean must be finite; found 1 .*\(first at row 31, column 5: nan\)"):
        Gaussians(convert(mean), convert(var))
    mean[31, 5] = 0.0
    var[7, 2], var[40, 0] = -3.0, 0.0
    with pytest.raises(ValueError, match=r"found 2 non-positive value\(s\) \(min -3; first at row 7, column 2: -3\)"):
        Gaussians(convert(mean), convert(var))


def test_a_store_locates_bad_values_in_unvalidated_gaussians() -> None:
    from kl_retrievers.store import KLStore

    mean, var = np.zeros((4, 3)), np.ones((4, 3))
    var[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"variances must be finite.*\(first at row 2, column 1: inf\)"):
        KLStore(dim=3).add(gaussians=Gaussians(mean, var, validate=False))
    var[2, 1] = 0.0
    with pytest.raises(ValueError, match=r"variances must be > 0 \(first at row 2, column 1: 0\)"):
        KLStore(dim=3).add(gaussians=Gaussians(mean, var, validate=False))
