"""Adapter fixes: blank queries, convex-only fusion options, metadata key collisions.

* A blank (empty or whitespace-only) query is refused under ``min_confidence`` with a reason naming
  the empty query (LangChain ``KLRetriever`` / ``KLHybridRetriever``, LlamaIndex
  ``KLConfidencePostprocessor``); without a floor it is answered with confidence 0. Before, a store
  holding an empty text answered ``""`` with confidence ~1 (``-KL`` 0).
* ``weight=`` / ``normalization=`` given with ``fusion="rrf"`` or ``"adaptive"`` raise in searches and
  retrievers (they were silently ignored); a store keeps them as its convex defaults with any fusion
  (tests/test_adapter_fusion_defaults_and_postprocessor.py); saved stores keep loading.
* LlamaIndex ``KLHybridRetriever.from_defaults(store=s, fusion=...)`` uses that fusion.
* LangChain retrievers refuse result keys that collide.
* LlamaIndex: an empty query without an embedding or encoder says the query is empty.

Tiny random encoder and a synthetic ``max_score`` calibrator (tests/conftest.py): a query equal to
a stored text scores ``-KL ~ 0`` and is confident.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import QueryBundle, TextNode

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.hybrid import FusionConfig, KLHybridStore
from kl_retrievers.langchain import (
    ABSTENTION_EVENT,
    KLEmbeddings,
    KLRetriever,
    KLVectorStore,
)
from kl_retrievers.langchain import KLHybridRetriever as LCHybrid
from kl_retrievers.llama_index import CONFIDENCE_KEY, KLConfidencePostprocessor, KLEmbedding
from kl_retrievers.llama_index import KLHybridRetriever as LIHybrid
from kl_retrievers.llama_index import KLRetriever as LIRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

#: The corpus holds an empty text: a blank query matches it exactly (-KL 0), the old "confident" answer.
TEXTS = [*HYBRID_TEXTS, ""]
IDS = [f"d{i}" for i in range(len(TEXTS))]
BLANKS = ["", "   ", "\n\t"]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


@pytest.fixture(scope="module")
def lc_store(encoder: Any) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), ids=IDS)


@pytest.fixture(scope="module")
def hybrid_store(encoder: Any) -> KLHybridStore:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(TEXTS, ids=IDS)
    return store


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


# ------------------------------------------------------------------ 1. blank queries (LangChain)
@pytest.mark.parametrize("query", BLANKS)
def test_langchain_dense_blank_query_abstains_naming_the_empty_query(
    lc_store: KLVectorStore, calibrator: ConfidenceCalibrator, query: str, caplog: pytest.LogCaptureFixture
) -> None:
    retriever = KLRetriever.from_store(lc_store, k=2, calibrator=calibrator, min_confidence=0.5)
    assert retriever.invoke(TEXTS[2])  # a real query equal to a stored text is still answered
    handler = _Events()
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers"):
        assert retriever.invoke(query, config={"callbacks": [handler]}) == []
    [(name, data)] = handler.events
    assert name == ABSTENTION_EVENT and "empty" in data["reason"] and data["confidence"] == 0.0
    assert any("abstained" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)


def test_langchain_dense_blank_query_without_floor_is_answered_with_confidence_zero(
    lc_store: KLVectorStore, calibrator: ConfidenceCalibrator
) -> None:
    docs = KLRetriever.from_store(lc_store, k=2, calibrator=calibrator).invoke("")
    assert len(docs) == 2 and docs[0].id == IDS[-1]  # the ranking is kept (as LangChain's own stores do)
    assert [d.metadata["confidence"] for d in docs] == [0.0, 0.0]
    assert docs[0].metadata["neg_kl"] == pytest.approx(0.0, abs=1e-9)


def test_langchain_hybrid_blank_query_abstains_naming_the_empty_query(
    hybrid_store: KLHybridStore, calibrator: ConfidenceCalibrator
) -> None:
    retriever = LCHybrid(store=hybrid_store, k=2, calibrator=calibrator, min_confidence=0.5)
    assert retriever.invoke(TEXTS[2])
    handler = _Events()
    assert retriever.invoke("  ", config={"callbacks": [handler]}) == []
    [(name, data)] = handler.events
    assert name == ABSTENTION_EVENT and "empty" in data["reason"]
    answered = LCHybrid(store=hybrid_store, k=2, calibrator=calibrator).invoke("")
    assert answered and {d.metadata["confidence"] for d in answered} == {0.0}


# ------------------------------------------------------------------ 1. and 6. blank queries (LlamaIndex)
def _li_store(encoder: Any, calibrator: ConfidenceCalibrator) -> LIVectorStore:
    vs = LIVectorStore(encoder=encoder, calibrator=calibrator)
    vs.add([TextNode(text=t, id_=i) for t, i in zip(TEXTS, IDS, strict=True)])
    return vs


def test_llama_index_blank_query_has_confidence_zero_and_the_postprocessor_abstains(
    encoder: Any, calibrator: ConfidenceCalibrator
) -> None:
    nodes = LIRetriever(_li_store(encoder, calibrator), similarity_top_k=2).retrieve("")
    assert nodes and nodes[0].node.node_id == IDS[-1]
    assert {n.node.metadata[CONFIDENCE_KEY] for n in nodes} == {0.0}
    assert "empty" in nodes[0].node.metadata["confidence_reason"]
    post = KLConfidencePostprocessor(min_confidence=0.5)
    assert post.postprocess_nodes(nodes, query_str="") == []
    assert post.postprocess_nodes(nodes) == []  # the reason on the nodes is enough
    # a blank query bundle is refused by any floor above 0 (0 answers everything); a real query is still answered
    assert KLConfidencePostprocessor(min_confidence=0.01).postprocess_nodes(nodes, query_bundle=QueryBundle(" ")) == []
    real = LIRetriever(_li_store(encoder, calibrator), similarity_top_k=2).retrieve(TEXTS[2])
    assert post.postprocess_nodes(real, query_str=TEXTS[2]) == real


def test_llama_index_hybrid_blank_query_has_confidence_zero(encoder: Any, calibrator: ConfidenceCalibrator) -> None:
    retriever = LIHybrid.from_defaults(
        nodes=[TextNode(text=t, id_=i) for t, i in zip(TEXTS, IDS, strict=True)],
        encoder=encoder,
        fusion="rrf",
        calibrator=calibrator,
    )
    nodes = retriever.retrieve("")
    assert nodes and {n.node.metadata[CONFIDENCE_KEY] for n in nodes} == {0.0}
    assert KLConfidencePostprocessor(min_confidence=0.3).postprocess_nodes(nodes, query_str="") == []


def test_llama_index_empty_query_without_embedding_says_the_query_is_empty(encoder: Any) -> None:
    embed = KLEmbedding(encoder)
    n = min(len(HYBRID_TEXTS), len(IDS))
    texts, ids = HYBRID_TEXTS[:n], IDS[:n]
    vectors = embed.get_text_embedding_batch(texts)  # embedded outside the store: it learns no encoder
    store = LIVectorStore()
    store.add([TextNode(text=t, id_=i, embedding=v) for t, i, v in zip(texts, ids, vectors, strict=True)])
    assert store.encoder is None
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    assert index.as_retriever(similarity_top_k=1).retrieve(HYBRID_TEXTS[0])  # a real query works
    with pytest.raises(ValueError, match="query is empty") as info:
        index.as_retriever(similarity_top_k=1).retrieve("")
    assert "no embedding" not in str(info.value).split(":")[0]


# ------------------------------------------------------------------ 2. and 4. convex-only options
@pytest.mark.parametrize("fusion", ["rrf", "adaptive"])
def test_langchain_from_texts_refuses_weight_with_non_convex_fusion(encoder: Any, fusion: str) -> None:
    with pytest.raises(ValueError, match=rf"weight=0.3 applies to convex fusion only; .*'{fusion}'"):
        LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), fusion=fusion, weight=0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"normalization='zscore' applies to convex fusion only; .*'{fusion}'"):
        LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), fusion=fusion, normalization="zscore")  # type: ignore[arg-type]


def test_langchain_from_texts_defaults_and_convex_weight_still_work(encoder: Any) -> None:
    assert LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder)).store.fusion.mode == "adaptive"
    convex = LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), fusion="convex", weight=0.3)
    assert convex.store.fusion.weight == 0.3
    assert convex.invoke("black rock", k=1)[0].metadata["dense_weight"] == pytest.approx(0.3)


@pytest.mark.parametrize("fusion", ["rrf", "adaptive"])
def test_llama_index_from_defaults_refuses_weight_with_non_convex_fusion(encoder: Any, fusion: str) -> None:
    nodes = [TextNode(text=t) for t in HYBRID_TEXTS]
    with pytest.raises(ValueError, match=rf"weight=0.3 applies to convex fusion only; .*'{fusion}'"):
        LIHybrid.from_defaults(nodes=nodes, encoder=encoder, fusion=fusion, weight=0.3)  # type: ignore[arg-type]


def test_per_call_normalization_is_refused_with_non_convex_fusion(hybrid_store: KLHybridStore) -> None:
    with pytest.raises(ValueError, match=r"normalization='zscore' applies to convex fusion only; this call"):
        hybrid_store.search("black rock", k=1, normalization="zscore")  # the store fuses with rrf
    with pytest.raises(ValueError, match="adaptive parameters"):
        FusionConfig("convex").for_call("adaptive", normalization="zscore")
    assert hybrid_store.search("black rock", k=1, fusion="convex", normalization="zscore")


def test_langchain_retriever_normalization_field_is_for_convex_calls(encoder: Any, hybrid_store: KLHybridStore) -> None:
    with pytest.raises(ValueError, match="normalization='zscore' applies to convex fusion only"):
        LCHybrid(store=hybrid_store, normalization="zscore")  # an rrf store: it would be ignored
    convex = LCHybrid(store=hybrid_store, fusion="convex", normalization="zscore", k=1)
    assert convex.invoke("black rock")[0].metadata["fusion"] == "convex"
    assert convex.invoke("black rock", fusion="rrf")[0].metadata["fusion"] == "rrf"  # not applied to an rrf call


def test_saved_store_with_a_weight_and_non_convex_fusion_still_loads(encoder: Any, tmp_path: Path) -> None:
    store = KLHybridStore(encoder, fusion="convex", weight=0.3, normalization="zscore")
    store.add(HYBRID_TEXTS)
    store.fusion = store.fusion.replace(mode="rrf")  # as a store saved before stop 45 with fusion="rrf"
    store.save(tmp_path / "h")
    loaded = KLHybridStore.load(tmp_path / "h", encoder=encoder)
    assert loaded.fusion.to_dict() == store.fusion.to_dict()
    assert loaded.search("black rock", k=1, fusion="convex")[0].dense_weight == pytest.approx(0.3)


# ------------------------------------------------------------------ 3. from_defaults(store=, fusion=)
def test_llama_index_from_defaults_with_store_uses_the_given_fusion(hybrid_store: KLHybridStore) -> None:
    hits = LIHybrid.from_defaults(store=hybrid_store, fusion="convex", similarity_top_k=1).retrieve("black rock")
    assert hits[0].node.metadata["fusion"] == "convex"
    assert hybrid_store.fusion.mode == "rrf"  # the store is not changed
    kept = LIHybrid.from_defaults(store=hybrid_store, similarity_top_k=1).retrieve("black rock")
    assert kept[0].node.metadata["fusion"] == "rrf"  # no fusion given: the store's


# ------------------------------------------------------------------ 5. metadata key collisions
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"score_key": "bm25"}, "bm25"),
        ({"score_key": "neg_kl"}, "neg_kl"),
        ({"confidence_key": "dense_rank"}, "dense_rank"),
        ({"uncertainty_key": "fused_score"}, "fused_score"),
    ],
)
def test_langchain_hybrid_refuses_colliding_result_keys(
    hybrid_store: KLHybridStore, kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=rf"_key(='{key}' is| and \w+_key are both '{key}';) .*'bm25'.*'neg_kl'"):
        LCHybrid(store=hybrid_store, **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"score_key": "confidence"}, {"uncertainty_key": "neg_kl"}, {"confidence_key": "query_uncertainty"}]
)
def test_langchain_dense_refuses_colliding_result_keys(lc_store: KLVectorStore, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"\w+_key and \w+_key are both '\w+'"):
        KLRetriever.from_store(lc_store, **kwargs)


def test_langchain_distinct_result_keys_are_kept(
    lc_store: KLVectorStore, hybrid_store: KLHybridStore, calibrator: ConfidenceCalibrator
) -> None:
    dense = KLRetriever.from_store(lc_store, k=1, calibrator=calibrator, score_key="kl", confidence_key="p")
    assert {"kl", "p", "query_uncertainty"} <= set(dense.invoke(TEXTS[2])[0].metadata)
    hybrid = LCHybrid(store=hybrid_store, k=1, score_key="score")
    meta = hybrid.invoke("black rock")[0].metadata
    assert {"score", "bm25", "neg_kl"} <= set(meta) and meta["score"] != meta["bm25"]
