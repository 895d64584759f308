"""The LangChain and LlamaIndex adapters check a ``d~``'s first value with one function and one tolerance.

Both read a document vector back as the Gaussian behind its coordinates ``1..2k`` and compare its first value with
``-1/2 sum(log var + mu^2 / var)``: :func:`kl_retrievers.gaussian.first_coordinate_mismatches`, whose tolerance is
``FIRST_COORDINATE_RTOL`` times the size of the sum's terms (``1/2 sum(|log var| + mu^2 / var) + 1``). The rows
here have terms that cancel within each coordinate (``log var = -mu^2 / var``), where a tolerance on the summed
terms would be far tighter than that size; a NaN first value is refused by both (LlamaIndex's adapter refuses
it as it reads the rows).
"""

from __future__ import annotations

import numpy as np
import pytest

import kl_retrievers.langchain as lc
from kl_retrievers.gaussian import (
    FIRST_COORDINATE_RTOL,
    Gaussians,
    document_gaussians_from_vectors,
    first_coordinate_mismatches,
    kl_document_vectors,
)

pytest.importorskip("llama_index.core")
from kl_retrievers.llama_index import document_gaussians_from_embeddings


def _cancelling_row() -> np.ndarray:
    """One float64 ``d~`` whose 4 coordinates each have ``log var = -10`` and ``mu^2 / var = 10``."""
    var = np.full((1, 4), np.exp(-10.0))
    mean = np.sqrt(10.0 * var)
    return kl_document_vectors(Gaussians(mean, var)).astype(np.float64)


def _terms_size(d: np.ndarray) -> float:
    g = document_gaussians_from_vectors(d)
    return float(0.5 * (np.abs(np.log(g.var)) + g.mean**2 / g.var).sum() + 1.0)


def _langchain_accepts(d: np.ndarray) -> bool:
    try:
        lc._check_first_values(d, document_gaussians_from_vectors(d), "vectors")
    except ValueError as exc:
        assert "vectors[0] is not one: its first value is" in str(exc)
        return False
    return True


def _llama_index_accepts(d: np.ndarray) -> bool:
    try:
        document_gaussians_from_embeddings(d)
    except ValueError as exc:
        assert "the first coordinate does not match" in str(exc) or "must be finite" in str(exc)  # NaN: read first
        return False
    return True


@pytest.mark.parametrize(
    ("shift", "accepted"),
    [(0.0, True), (0.5, True), (2.0, False), (float("nan"), False)],
    ids=["exact", "within-tolerance", "beyond-tolerance", "nan"],
)
def test_both_adapters_accept_and_refuse_the_same_rows(shift: float, accepted: bool) -> None:
    d = _cancelling_row()
    assert _terms_size(d) == pytest.approx(41.0)  # the terms' size; their sum is 0 per coordinate
    tolerance = FIRST_COORDINATE_RTOL * _terms_size(d)
    d[0, 0] = d[0, 0] + shift * tolerance if shift == shift else np.nan
    shared = first_coordinate_mismatches(d, document_gaussians_from_vectors(d))[0].size == 0
    assert shared is accepted
    assert _langchain_accepts(d) is accepted
    assert _llama_index_accepts(d) is accepted
