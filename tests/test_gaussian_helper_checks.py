"""Argument checks and messages of the public helpers of kl_retrievers.gaussian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kl_retrievers import gaussian as G
from kl_retrievers.gaussian import Gaussians


def _docs(n: int = 50, k: int = 4) -> Gaussians:
    rng = np.random.default_rng(0)
    return Gaussians(rng.normal(size=(n, k)), np.exp(rng.normal(size=(n, k))))


def test_inverse_names_nan_precision() -> None:
    with pytest.raises(ValueError, match=r"found 1 bad value\(s\), the first at row 0, coordinate 1: nan"):
        G.document_gaussians_from_vectors(np.array([[0.0, np.nan, 1.0]]))


def test_inverse_names_precision_whose_variance_overflows_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ValueError, match=r"coordinates 1..2 .* far enough from 0.*row 1, coordinate 2: -9\.9\d*e-321"
        ):
            G.document_gaussians_from_vectors(np.array([[0.0, -0.5, -0.5, 1.0, 1.0], [0.0, -0.5, -1e-320, 1.0, 1.0]]))


def test_inverse_names_mean_that_overflows() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"mu / var.*row 0, coordinate 2: 1e\+10"):
            G.document_gaussians_from_vectors(np.array([[0.0, -1e-300, 1e10]]))


def test_inverse_still_exact() -> None:
    g = _docs(5, 3)
    back = G.document_gaussians_from_vectors(G.kl_document_vectors(g))
    np.testing.assert_allclose(back.mean, g.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.var, g.var, rtol=1e-12)


def test_float64_top_k_accepts_torch_gaussians() -> None:
    torch = pytest.importorskip("torch")
    d = _docs()
    expected = G.float64_top_k(d[:2], d, 3)
    got = G.float64_top_k(d[:2].torch(), d.torch(), 3)
    assert isinstance(got[0], np.ndarray) and not isinstance(got[0], torch.Tensor)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1])


def test_float64_top_k_refuses_non_gaussians() -> None:
    with pytest.raises(TypeError, match="documents must be a Gaussians batch; got ndarray"):
        G.float64_top_k(_docs()[:1], np.zeros((3, 4)), 2)  # type: ignore[arg-type]


def test_module_docstring_names_numpy_only_and_torch_functions() -> None:
    doc = G.__doc__ or ""
    assert "Every function here accepts numpy arrays or torch tensors" not in doc
    assert ":func:`exact_top_k`" in doc and "return numpy" in doc


def test_exact_top_k_centre_wrong_length() -> None:
    d = _docs()
    with pytest.raises(ValueError, match=r"centre must be .* shape \(4,\).*got shape \(2,\)"):
        G.exact_top_k(d[:2], d, 3, centre=np.zeros(2))


def test_exact_top_k_centre_not_finite() -> None:
    d = _docs()
    with pytest.raises(ValueError, match="centre must be finite.*nan"):
        G.exact_top_k(d[:2], d, 3, centre=np.full(4, np.nan))


def test_exact_top_k_centre_list_still_accepted() -> None:
    d = _docs()
    rows, _ = G.exact_top_k(d[:2], d, 3, centre=[0, 0, 0, 0])  # type: ignore[arg-type]
    np.testing.assert_array_equal(rows, G.exact_top_k(d[:2], d, 3)[0])


@pytest.mark.parametrize("fn", [G.exact_top_k, G.float64_top_k])
def test_doc_sumlogvar_wrong_length(fn: object) -> None:
    d = _docs()
    with pytest.raises(ValueError, match=r"doc_sumlogvar must hold one real number per document row, shape \(50,\)"):
        fn(d[:2], d, 3, doc_sumlogvar=np.zeros(3))  # type: ignore[operator]


def test_centre_document_vectors_wrong_centre() -> None:
    with pytest.raises(ValueError, match=r"centre must be .* shape \(2,\).*got shape \(3,\)"):
        G.centre_document_vectors(np.ones((1, 5)), np.ones(3))


def test_reduce_query_vectors_zero_row() -> None:
    with pytest.raises(ValueError, match="row 1 has norm 0"):
        G.reduce_query_vectors(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), 4.0)


def test_shift_document_vectors_nan_offset() -> None:
    with pytest.raises(ValueError, match="offset must be a finite real number; got nan"):
        G.shift_document_vectors(np.ones((1, 3)), float("nan"))


def test_means_centre_list_and_bad_shape() -> None:
    np.testing.assert_array_equal(G.means_centre([[1.0, 2.0], [3.0, 6.0]]), [2.0, 4.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mean must be a 2-D array.*got shape \(3,\)"):
        G.means_centre(np.zeros(3))


def test_gaussians_equality_is_identity_and_hashable() -> None:
    a = _docs(3, 2)
    b = Gaussians(a.mean.copy(), a.var.copy())
    assert a == a and a != b
    assert a in [b, a] and b not in [a]
    assert len({a, b, a}) == 2
    assert hash(a) == hash(a)
