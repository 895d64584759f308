"""``evaluate_model``'s ``means_only`` ablates the -KL ranking: refused, naming ``similarity``, when a vector twin is
ranked by its own dot product (as ``kl-retrievers evaluate --means-only`` refuses it), and the documented squared
L2 distance of the means when ``similarity="neg_kl"`` asks for the twin's -KL ranking."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import RecordingEncoder
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.gaussian import Gaussians

CORPUS = {f"d{i}": {"title": "", "text": f"document {i}"} for i in range(6)}


class Twin(RecordingEncoder):
    """A vector twin (``kl-retrievers train --similarity dot`` records its similarity in its recipe), whose
    Gaussians are fixed per text so that a test can score them by hand."""

    config = SimpleNamespace(extra={"training": {"recipe": {"similarity": "dot"}}})

    def _encode(self, texts: Any, **_: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append(len(texts))
        mean = np.array([[len(t) % 5, sum(map(ord, t)) % 7, 1.0] for t in texts], np.float32)
        return Gaussians(mean, np.full_like(mean, 0.5))

    encode_queries = _encode
    encode_documents = _encode


def _dataset() -> BeirDataset:
    queries = {"q1": "a query", "q2": "another query here"}
    return BeirDataset(Path("."), "test", CORPUS, queries, {"q1": {"d1": 1}, "q2": {"d2": 1}})


def test_means_only_of_a_twin_ranked_by_its_dot_product_is_refused_naming_similarity() -> None:
    pytest.importorskip("ir_measures")
    from kl_retrievers.evaluation import evaluate_model

    twin = Twin()
    for similarity in (None, "dot"):  # the twin's own (similarity=None), or given
        with pytest.raises(ValueError, match=r"means_only=True .* similarity='dot' .* similarity='neg_kl'") as err:
            evaluate_model(
                twin, _dataset(), means_only=True, similarity=similarity, show_progress=False, use_cache=False
            )
        assert "twin" in str(err.value)
    assert twin.calls == [], "refused after encoding"


def test_means_only_with_neg_kl_ranks_a_twin_by_the_squared_distance_of_its_means() -> None:
    pytest.importorskip("ir_measures")
    from kl_retrievers.evaluation import evaluate_model

    twin, ds = Twin(), _dataset()
    result = evaluate_model(twin, ds, k=6, means_only=True, similarity="neg_kl", show_progress=False, use_cache=False)
    assert result.info["score"] == "neg_sq_l2_means" and result.model.endswith("[means only]")
    q = twin.encode_queries(ds.query_texts()).mean.astype(np.float64)
    d = twin.encode_documents(ds.document_texts()).mean.astype(np.float64)
    expected = -((q[:, None, :] - d[None, :, :]) ** 2).sum(axis=2)
    column = {doc_id: j for j, doc_id in enumerate(ds.doc_ids)}
    for i, qid in enumerate(ds.query_ids):
        np.testing.assert_allclose(list(result.run[qid].values()), [expected[i, column[x]] for x in result.run[qid]])
