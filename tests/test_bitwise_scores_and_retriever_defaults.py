"""Bitwise-equal scores and retriever defaults, each with a test that fails on the previous code.

- The float64 fallback of the exact top-k scored with a matrix product while the pooled re-score
  added the same terms one by one, so a document could score different bits on the two paths and a
  near-tie could swap between a shallow and a deep run. Both now use :func:`neg_kl_rows`.
- ``KLRetriever(filter=f).invoke(q, filter=None)`` still applied ``f`` (and ``min_confidence=None``
  kept the retriever's floor): an explicit ``None`` now clears the setting for that call, as
  LangChain's ``VectorStoreRetriever`` merges its per-call ``search_kwargs``.
- A vector twin (``kl-retrievers train --similarity dot``) was saved, and exported to ONNX, with
  ``"score": {"name": "neg_kl"}`` in its config.json; it now names the score it was trained for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store._engines as engines
from kl_retrievers.gaussian import Gaussians, exact_top_k, float64_top_k, neg_kl_rows
from kl_retrievers.index import KLStore


def _docs_and_queries(seed: int = 0, n: int = 3000, dim: int = 64) -> tuple[Gaussians, Gaussians]:
    rng = np.random.default_rng(seed)
    docs = Gaussians(
        rng.normal(size=(n, dim)).astype(np.float32), rng.uniform(0.5, 2.0, size=(n, dim)).astype(np.float32)
    )
    queries = Gaussians(rng.normal(size=(5, dim)), rng.uniform(0.5, 2.0, size=(5, dim)))
    return docs, queries


# ------------------------------------------------------------------ one arithmetic for both paths
@pytest.mark.parametrize("means_only", [False, True])
def test_float64_fallback_scores_the_same_bits_as_the_pooled_rescore(means_only: bool) -> None:
    docs, queries = _docs_and_queries()
    rows, scores = float64_top_k(queries, docs, len(docs), means_only=means_only)
    again = neg_kl_rows(queries, docs, rows, means_only=means_only)
    assert np.array_equal(scores, again)  # bit for bit, not approximately


def test_float64_fallback_with_known_log_variance_sums_gives_the_same_bits() -> None:
    docs, queries = _docs_and_queries(seed=1)
    sumlog = np.log(np.asarray(docs.var, dtype=np.float64)).sum(axis=1)
    allowed = np.arange(0, len(docs), 3)
    r1, s1 = float64_top_k(queries, docs, 50, rows=allowed)
    r2, s2 = float64_top_k(queries, docs, 50, rows=allowed, doc_sumlogvar=sumlog)
    assert np.array_equal(r1, r2) and np.array_equal(s1, s2)
    assert np.isin(r1, allowed).all()


def test_exact_top_k_is_a_bitwise_prefix_of_the_all_document_fallback() -> None:
    docs, queries = _docs_and_queries(seed=2)
    deep_rows, deep_scores = float64_top_k(queries, docs, 40)
    rows, scores = exact_top_k(queries, docs, 10)  # the pooled path
    assert np.array_equal(rows, deep_rows[:, :10])
    assert np.array_equal(scores, deep_scores[:, :10])


def test_store_fallback_and_pooled_search_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    docs, queries = _docs_and_queries(seed=3, n=800, dim=16)
    store = KLStore()
    store.add(gaussians=docs, ids=[str(i) for i in range(len(docs))])
    pooled = store.search_batch(queries, k=7)
    # an infinite float32 error bound proves nothing, so every query takes the float64 fallback
    monkeypatch.setattr(engines, "float32_score_bound", lambda qv, *a, **kw: np.full(len(qv), np.inf))
    fallback = store.search_batch(queries, k=7)
    assert [[(h.id, h.score) for h in row] for row in fallback] == [[(h.id, h.score) for h in row] for row in pooled]


# ------------------------------------------------------------------ LangChain: explicit None clears
def _retriever_setup() -> tuple[Any, Any]:
    from conftest import HYBRID_TEXTS, make_tiny_encoder
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    encoder = make_tiny_encoder(seed=1)
    meta = [{"n": i, "even": i % 2 == 0} for i in range(len(HYBRID_TEXTS))]
    ids = [f"d{i}" for i in range(len(HYBRID_TEXTS))]
    return encoder, KLVectorStore.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), meta, ids=ids)


def test_langchain_retriever_filter_none_clears_the_default_filter() -> None:
    pytest.importorskip("langchain_core")
    from conftest import HYBRID_TEXTS
    from kl_retrievers.langchain import KLRetriever

    _, store = _retriever_setup()
    n = len(HYBRID_TEXTS)
    retriever = KLRetriever(vectorstore=store, k=n, filter={"even": True})
    assert all(d.metadata["even"] for d in retriever.invoke("the moon"))  # the default applies
    assert len(retriever.invoke("the moon", filter=None)) == n  # cleared for this call
    assert len(retriever.invoke("the moon", filter={"n": 1})) == 1  # replaced for this call
    assert all(d.metadata["even"] for d in retriever.invoke("the moon"))  # and the default is kept


def test_langchain_retriever_min_confidence_none_clears_the_floor() -> None:
    pytest.importorskip("langchain_core")
    from conftest import max_score_calibrator
    from kl_retrievers.langchain import KLRetriever

    _, store = _retriever_setup()
    retriever = KLRetriever(vectorstore=store, k=2, calibrator=max_score_calibrator(), min_confidence=0.5)
    assert retriever.invoke("hello world query") == []  # abstains under the retriever's floor
    assert len(retriever.invoke("hello world query", min_confidence=None)) == 2


def test_langchain_hybrid_retriever_filter_none_clears_the_default_filter() -> None:
    pytest.importorskip("langchain_core")
    from conftest import HYBRID_TEXTS
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.langchain import KLHybridRetriever

    encoder, _ = _retriever_setup()
    meta = [{"n": i, "even": i % 2 == 0} for i in range(len(HYBRID_TEXTS))]
    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(len(HYBRID_TEXTS))], metadatas=meta)
    retriever = KLHybridRetriever(store=hybrid, k=len(HYBRID_TEXTS), fusion="rrf", filter={"even": True})
    assert all(d.metadata["even"] for d in retriever.invoke("the moon"))
    assert not all(d.metadata["even"] for d in retriever.invoke("the moon", filter=None))


# ------------------------------------------------------------------ a vector twin's saved score name
def test_a_saved_vector_twin_names_its_own_score(tmp_path: Path) -> None:
    """A twin trained with ``--similarity dot`` recorded ``"score": {"name": "neg_kl"}`` in config.json."""
    from conftest import make_tiny_encoder
    from kl_retrievers.onnx import export_onnx

    gauss = make_tiny_encoder(seed=3)
    gauss.save_pretrained(tmp_path / "gauss")
    assert json.loads((tmp_path / "gauss" / "config.json").read_text())["score"]["name"] == "neg_kl"
    twin = make_tiny_encoder(seed=3)
    twin.config.extra["training"] = {"recipe": {"similarity": "dot"}}
    twin.save_pretrained(tmp_path / "twin")
    score = json.loads((tmp_path / "twin" / "config.json").read_text())["score"]
    assert score == {"name": "dot", "direction": "higher_is_better"}
    export_onnx(twin, tmp_path / "twin-onnx", quantize=None, verify=False)
    assert json.loads((tmp_path / "twin-onnx" / "config.json").read_text())["score"]["name"] == "dot"


def test_an_onnx_vector_twin_is_ranked_by_its_own_similarity(tmp_path: Path) -> None:
    """Review finding: the ONNX encoder of a dot twin did not carry the recipe, so evaluate ranked it by -KL."""
    from conftest import make_tiny_encoder
    from kl_retrievers._config import model_similarity
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    twin = make_tiny_encoder(seed=3)
    twin.config.extra["training"] = {"recipe": {"similarity": "cosine"}}
    export_onnx(twin, tmp_path / "twin-onnx", quantize=None, verify=False)
    assert model_similarity(twin) == "cosine"
    assert model_similarity(OnnxGaussianEncoder(tmp_path / "twin-onnx")) == "cosine"
    plain = make_tiny_encoder(seed=3)
    export_onnx(plain, tmp_path / "plain-onnx", quantize=None, verify=False)
    assert model_similarity(OnnxGaussianEncoder(tmp_path / "plain-onnx")) == "neg_kl"
