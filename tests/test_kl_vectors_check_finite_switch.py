"""``kl_query_vectors`` and ``kl_document_vectors`` take ``check_finite=False``, as ``neg_kl`` does.

Their finiteness check (``bool(torch.isfinite(vectors).all())``) reads a bool back to the host, which waits for a
GPU's work on every call. It stays on by default; ``check_finite=False`` skips it and returns the vectors as they
are. Only CPU tensors here: the switch, not the synchronisation, is what is tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, kl_document_vectors, kl_query_vectors


def _overflowing(backend: str) -> tuple[Gaussians, Gaussians]:
    """Float32 Gaussians whose q~ (a mean of 1e20: mu^2) and d~ (a variance of 1e-45: 1 / var) overflow."""
    queries = Gaussians(np.full((1, 2), 1e20, np.float32), np.ones((1, 2), np.float32))
    documents = Gaussians(np.ones((1, 2), np.float32), np.full((1, 2), 1e-45, np.float32))
    if backend == "torch":
        pytest.importorskip("torch")
        return queries.torch(), documents.torch()
    return queries, documents


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_check_finite_false_returns_the_vectors_as_they_are(backend: str) -> None:
    queries, documents = _overflowing(backend)
    for rewrite, g, side in ((kl_query_vectors, queries, "query"), (kl_document_vectors, documents, "document")):
        with pytest.raises(ValueError, match=f"{side} 0 cannot be scored in float32"):
            rewrite(g)  # the default checks
        with np.errstate(all="ignore"):
            got: Any = rewrite(g, check_finite=False)
        values = np.asarray(got.numpy() if backend == "torch" else got)
        assert values.shape == (1, 5) and not np.isfinite(values).all()
    fine = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
    fine = fine.torch() if backend == "torch" else fine
    for rewrite in (kl_query_vectors, kl_document_vectors):
        assert np.array_equal(np.asarray(rewrite(fine, check_finite=False)), np.asarray(rewrite(fine)))


@pytest.mark.parametrize("rewrite", [kl_query_vectors, kl_document_vectors])
def test_check_finite_must_be_a_bool(rewrite: Any) -> None:
    g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(TypeError, match="check_finite must be a bool; got 'no'"):
        rewrite(g, check_finite="no")
    assert rewrite(g, check_finite=np.bool_(False)).shape == (1, 5)
