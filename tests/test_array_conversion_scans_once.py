"""Converting a caller's list to an array scans it for torch tensors only when it can hold them, once.

``_real_numpy`` looked at every number of a flat list (``any(_is_torch(row) for row in x)``), and LangChain's
``add_embeddings`` converted each row apart: 5,000 rows of 769 floats took 2.5x as long (0.26 s -> 0.70 s). A flat
list of numbers is not scanned, and ``add_embeddings`` converts all rows at once (row by row only to name a bad row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers import gaussian
from kl_retrievers.gaussian import Gaussians, _real_numpy, kl_document_vectors


def test_a_flat_list_of_numbers_is_not_scanned_for_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")  # the scan only runs once torch is loaded
    looked = []

    def counting(x: Any) -> bool:
        looked.append(x)
        return isinstance(x, torch.Tensor)

    monkeypatch.setattr(gaussian, "_is_torch", counting)
    assert _real_numpy([0.5] * 1000, "scores").shape == (1000,)
    assert len(looked) < 10  # the list and the array, not each number
    rows = _real_numpy([torch.ones(3, dtype=torch.bfloat16), torch.zeros(3)], "vectors")  # rows still converted
    assert rows.dtype == np.float32 and rows.tolist() == [[1.0] * 3, [0.0] * 3]


def test_add_embeddings_converts_all_rows_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers import langchain
    from kl_retrievers.langchain import KLVectorStore

    rng = np.random.default_rng(0)
    var = rng.uniform(0.5, 2.0, size=(50, 4))
    dvec = np.asarray(kl_document_vectors(Gaussians(rng.normal(size=(50, 4)), var)))
    calls = []

    def counting(x: Any, name: str, takes: str = "") -> np.ndarray:
        calls.append(name)
        return _real_numpy(x, name, takes)

    monkeypatch.setattr(langchain, "_real_numpy", counting)
    store = KLVectorStore()
    ids = store.add_embeddings([(f"t{j}", row) for j, row in enumerate(dvec.tolist())])
    assert len(ids) == 50 and calls == ["text_embeddings"]
    np.testing.assert_allclose(store.store.get_gaussians(ids).var, var, rtol=1e-5)
    calls.clear()
    bad: Any = [dvec[0].tolist(), np.array(["-1"] * dvec.shape[1])]
    with pytest.raises(TypeError, match=r"text_embeddings\[1\] has dtype <U"):  # the bad row named
        store.add_embeddings([("a", bad[0]), ("b", bad[1])])
