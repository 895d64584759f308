"""A ``d~`` whose Gaussian's first value overflows to ``-inf`` (``mu^2 / var`` beyond float64) matches no first value.

Its tolerance is infinite too (``inf <= inf``), so without a finiteness check any first value passed:
:func:`kl_retrievers.gaussian.first_coordinate_mismatches` reports the row, and the LangChain and LlamaIndex
adapters (through ``_adapters.first_value_mismatch``) refuse it, naming the ``-inf`` the Gaussian gives.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import kl_retrievers.langchain as lc
from kl_retrievers.gaussian import document_gaussians_from_vectors, first_coordinate_mismatches, kl_document_vectors

#: k = 1: var = -1 / (2 * -0.005) = 100, mu = 1e154 * 100 = 1e156, mu^2 / var overflows
OVERFLOWING = [123.0, -0.005, 1e154]


def _rows() -> np.ndarray:
    """An ordinary ``d~`` (row 0) and the overflowing one (row 1)."""
    g = document_gaussians_from_vectors(np.array([[0.0, -0.5, 2.0]]))
    return np.vstack([kl_document_vectors(g).astype(np.float64), np.array([OVERFLOWING])])


def test_an_overflowing_expected_value_is_a_mismatch() -> None:
    d = _rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow is handled, not warned about
        bad, first = first_coordinate_mismatches(d, document_gaussians_from_vectors(d))
    assert bad.tolist() == [1]
    assert np.isfinite(first[0]) and first[1] == -np.inf


@pytest.mark.parametrize("value", [123.0, -1e308, 0.0])
def test_no_first_value_matches_an_overflowing_gaussian(value: float) -> None:
    d = np.array([[value, *OVERFLOWING[1:]]])
    assert first_coordinate_mismatches(d, document_gaussians_from_vectors(d))[0].tolist() == [0]


def test_both_adapters_refuse_the_row() -> None:
    d = _rows()
    with pytest.raises(ValueError, match=r"vectors\[1\] is not one: its first value is 123, .* has -inf there"):
        lc._check_first_values(d, document_gaussians_from_vectors(d), "vectors")
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import document_gaussians_from_embeddings

    with pytest.raises(ValueError, match=r"first coordinate does not match .*position 1: 123, .* has -inf there"):
        document_gaussians_from_embeddings(d)


@pytest.mark.parametrize("first", [-np.inf, np.inf, np.nan])
def test_langchain_names_a_non_finite_first_value_as_such(first: float) -> None:
    d = _rows()
    d[1, 0] = first  # the Gaussian gives -inf there too: the message must not read "-inf, but ... -inf"
    with pytest.raises(ValueError, match=r"vectors\[1\] is not one: its first value is [-a-z]+, not a finite number; "):
        lc._check_first_values(d, document_gaussians_from_vectors(d), "vectors")
    ordinary = _rows()[:1].copy()
    ordinary[0, 0] = first
    with pytest.raises(ValueError, match=r"value is [-a-z]+, not a finite number; the Gaussian .* -2 there \(1 such"):
        lc._check_first_values(ordinary, document_gaussians_from_vectors(ordinary), "vectors")
