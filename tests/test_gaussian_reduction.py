"""The reduction to L2 in kl_retrievers.gaussian: exactness, the norm bound, the offset and the inversion."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_gaussians
from kl_retrievers.gaussian import (
    Gaussians,
    document_gaussians_from_vectors,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    neg_kl_matrix,
    reduce_document_vectors,
    reduce_query_vectors,
    reduction_norm_bound,
    reduction_offset,
    shift_document_vectors,
)
from kl_retrievers.llama_index import document_gaussians_from_embeddings

K = 8


def _data(seed: int = 0, shift: float = 3.0) -> tuple[Gaussians, Gaussians]:
    docs = random_gaussians(200, K, seed=seed)
    queries = random_gaussians(12, K, seed=seed + 1)
    # means away from 0: the first coordinate of d~ is large and shared, as with real encoders
    return Gaussians(docs.mean + shift, docs.var), Gaussians(queries.mean + shift, queries.var)


def test_inversion_round_trips_from_d_tilde_shifted_and_reduced_vectors() -> None:
    docs = random_gaussians(50, K, seed=3)
    dvec = np.asarray(kl_document_vectors(docs))
    back = document_gaussians_from_vectors(dvec)
    np.testing.assert_allclose(back.mean, docs.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.var, docs.var, rtol=1e-12)
    # the offset touches only the first coordinate and the reduction only appends: same Gaussians
    offset = reduction_offset(dvec)
    reduced = reduce_document_vectors(
        dvec, offset, reduction_norm_bound(dvec, offset, 1.1), width=2 * K + 4, dtype=np.float64
    )
    back = document_gaussians_from_vectors(reduced, K)
    np.testing.assert_allclose(back.mean, docs.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.var, docs.var, rtol=1e-12)
    # float32 storage (what FAISS and Milvus hold) gives float32-accurate Gaussians
    back32 = document_gaussians_from_vectors(reduced.astype(np.float32), K)
    np.testing.assert_allclose(back32.var, docs.var, rtol=1e-6)
    np.testing.assert_allclose(back32.mean, docs.mean, rtol=1e-5, atol=1e-6)
    # ... and the llama_index adapter's inversion is this one (plus its first-coordinate check)
    adapter = document_gaussians_from_embeddings(dvec)
    np.testing.assert_array_equal(adapter.mean, document_gaussians_from_vectors(dvec).mean)
    np.testing.assert_array_equal(adapter.var, document_gaussians_from_vectors(dvec).var)


def test_inversion_rejects_what_is_no_document_vector() -> None:
    dvec = np.asarray(kl_document_vectors(random_gaussians(3, K, seed=4)))
    with pytest.raises(ValueError, match="odd length"):
        document_gaussians_from_vectors(np.zeros((2, 2 * K + 2)))
    with pytest.raises(ValueError, match="width >= 2k \\+ 1 = 17"):
        document_gaussians_from_vectors(dvec[:, :-1], K)
    query_like = np.asarray(kl_query_vectors(random_gaussians(2, K, seed=5)))
    with pytest.raises(ValueError, match="must be < 0"):
        document_gaussians_from_vectors(query_like)
    with pytest.raises(TypeError, match="numpy"):
        document_gaussians_from_vectors(random_gaussians(2, K).torch().mean)


@pytest.mark.parametrize("use_offset", [True, False])
def test_l2_on_reduced_vectors_is_monotone_in_the_inner_product(use_offset: bool) -> None:
    docs, queries = _data()
    dvec = np.asarray(kl_document_vectors(docs))
    qvec = np.asarray(kl_query_vectors(queries))
    offset = reduction_offset(dvec) if use_offset else 0.0
    bound = reduction_norm_bound(dvec, offset, headroom=1.2)
    xd = reduce_document_vectors(dvec, offset, bound, dtype=np.float64)
    xq = reduce_query_vectors(qvec, bound, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(xd, axis=1), bound, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), bound, rtol=1e-12)
    l2 = ((xq[:, None, :] - xd[None, :, :]) ** 2).sum(axis=2)
    ip = qvec @ dvec.T
    # the identity ||x_q - x_d||^2 = 2 M^2 - 2 (M / ||q~||) (<q~, d~> - o), exactly
    scale = bound / np.linalg.norm(qvec, axis=1, keepdims=True)
    np.testing.assert_allclose(l2, 2 * bound**2 - 2 * scale * (ip - offset), rtol=1e-9, atol=1e-9 * bound**2)
    # hence the L2 order is the inner-product order, which is the -KL order
    exact = np.asarray(neg_kl_matrix(queries, docs))
    np.testing.assert_allclose(ip + np.asarray(kl_query_constant(queries))[:, None], exact, rtol=1e-9, atol=1e-9)
    for q in range(len(queries)):
        np.testing.assert_array_equal(np.argsort(l2[q], kind="stable")[:20], np.argsort(-exact[q], kind="stable")[:20])


def test_offset_shrinks_the_norms_and_changes_no_inner_product_difference() -> None:
    docs, queries = _data(seed=6, shift=4.0)
    dvec = np.asarray(kl_document_vectors(docs))
    offset = reduction_offset(dvec)
    assert offset == pytest.approx(float(dvec[:, 0].mean()))
    shifted = shift_document_vectors(dvec, offset)
    assert shifted is not dvec and dvec[0, 0] != shifted[0, 0]  # the input is left alone
    np.testing.assert_array_equal(shifted[:, 1:], dvec[:, 1:])
    assert reduction_norm_bound(dvec, offset) < 0.6 * reduction_norm_bound(dvec)
    qvec = np.asarray(kl_query_vectors(queries))
    np.testing.assert_allclose(qvec @ shifted.T, qvec @ dvec.T - offset, rtol=1e-12, atol=1e-9)
    assert shift_document_vectors(dvec, 0.0) is dvec


def test_norm_bound_and_its_checks() -> None:
    dvec = np.array([[-4.0, 0.0, 3.0], [-5.0, 0.0, 1.0]])
    assert reduction_norm_bound(dvec) == pytest.approx(np.sqrt(26.0))
    assert reduction_norm_bound(dvec, offset=-4.0, headroom=2.0) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="headroom must be >= 1"):
        reduction_norm_bound(dvec, headroom=0.5)
    with pytest.raises(ValueError, match="at least one"):
        reduction_norm_bound(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one"):
        reduction_offset(np.zeros((0, 3)))
    # a row above M must raise M for every row, never be clamped into a wrong ranking
    with pytest.raises(ValueError, match="exceeds the norm bound M=5"):
        reduce_document_vectors(dvec, 0.0, 5.0)
    with pytest.raises(ValueError, match="finite number > 0"):
        reduce_document_vectors(dvec, 0.0, float("nan"))
    with pytest.raises(ValueError, match="width must be at least 4"):
        reduce_query_vectors(np.ones((1, 3)), 5.0, width=3)
    out = reduce_document_vectors(dvec, -4.0, 5.0, width=6)
    assert out.dtype == np.float32 and out.shape == (2, 6) and not out[:, 4:].any()
