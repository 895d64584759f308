"""LlamaIndex: calibrated confidence in node metadata, KLConfidencePostprocessor (abstention) and KLHybridRetriever.

Tiny random encoder (no calibration of its own) and a calibrator fitted on synthetic scores: a
query equal to a stored text scores ``-KL ~ 0``, any other about ``-2e-4`` or less (see
``tests/test_langchain_hybrid.py``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import Document, MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

import kl_retrievers._confidence as confidence_module
from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.calibration import CALIBRATION_FILE, ConfidenceCalibrator
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import (
    CONFIDENCE_KEY,
    QUERY_UNCERTAINTY_KEY,
    KLConfidencePostprocessor,
    KLEmbedding,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

TEXTS = HYBRID_TEXTS
UNRELATED = "hello world query"
EMPTY = "Empty Response"  # what LlamaIndex's synthesizers answer for no nodes


pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


def _nodes() -> list[TextNode]:
    return [
        TextNode(
            text=t,
            id_=f"n{i}",
            metadata={"n": i, "lang": "en" if i % 2 == 0 else "de"},
            excluded_embed_metadata_keys=["n", "lang"],  # embed the bare text
        )
        for i, t in enumerate(TEXTS)
    ]


@pytest.fixture(scope="module")
def vector_store(encoder: Any, calibrator: ConfidenceCalibrator) -> KLVectorStore:
    vs = KLVectorStore(encoder=encoder, calibrator=calibrator)
    vs.add(_nodes())
    return vs


# ------------------------------------------------------------------ confidence in node metadata
def test_nodes_carry_neg_kl_uncertainty_and_confidence(vector_store: KLVectorStore) -> None:
    retriever = KLRetriever(vector_store, similarity_top_k=1)
    hit = retriever.retrieve(TEXTS[2])
    miss = retriever.retrieve(UNRELATED)
    assert hit[0].node.get_content() == TEXTS[2] and len(hit) == 1  # top 1, confidence still reads 2 scores
    assert hit[0].node.metadata[CONFIDENCE_KEY] > 0.9 > 0.1 > miss[0].node.metadata[CONFIDENCE_KEY] >= 0.0
    meta = hit[0].node.metadata
    assert meta["neg_kl"] <= 0 and QUERY_UNCERTAINTY_KEY in meta
    # kept out of what the LLM and the embedder read
    assert CONFIDENCE_KEY not in hit[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert CONFIDENCE_KEY in hit[0].node.excluded_embed_metadata_keys
    # the relevance score is unchanged: SimilarityPostprocessor still keeps a match, drops the rest
    assert hit[0].score == pytest.approx(1.0)
    kept = SimilarityPostprocessor(similarity_cutoff=0.9999999).postprocess_nodes(
        KLRetriever(vector_store, similarity_top_k=3).retrieve(TEXTS[2])
    )
    assert [n.node.node_id for n in kept] == ["n2"]


def test_index_with_klembedding_finds_the_models_calibrator(calibrator: ConfidenceCalibrator, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    calibrator.save(folder / CALIBRATION_FILE)
    named = make_tiny_encoder(seed=1)
    named.name_or_path = str(folder)
    index = VectorStoreIndex(
        _nodes(),
        embed_model=KLEmbedding(named),
        storage_context=StorageContext.from_defaults(vector_store=KLVectorStore()),  # the store has no encoder
    )
    hits = index.as_retriever(similarity_top_k=2).retrieve(TEXTS[3])
    assert hits[0].node.metadata[CONFIDENCE_KEY] > 0.9
    mmr = index.as_retriever(similarity_top_k=2, vector_store_query_mode="mmr").retrieve(UNRELATED)
    assert mmr[0].node.metadata[CONFIDENCE_KEY] < 0.1


def test_without_calibration_confidence_is_none(
    encoder: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(confidence_module, "_WARNED", set())
    vs = KLVectorStore(encoder=encoder)
    vs.add(_nodes())
    with caplog.at_level(logging.WARNING):
        hits = KLRetriever(vs, similarity_top_k=2).retrieve(TEXTS[0])
        KLRetriever(vs, similarity_top_k=2).retrieve(TEXTS[1])
    assert [h.node.metadata[CONFIDENCE_KEY] for h in hits] == [None, None]
    assert sum("ships no confidence calibration" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------ KLConfidencePostprocessor
def test_postprocessor_abstains_in_a_query_engine_sync_and_async(vector_store: KLVectorStore) -> None:
    engine = RetrieverQueryEngine.from_args(
        KLRetriever(vector_store, similarity_top_k=2),
        llm=MockLLM(),
        node_postprocessors=[KLConfidencePostprocessor(min_confidence=0.5)],
    )
    answered = engine.query(TEXTS[4])
    assert [n.node.node_id for n in answered.source_nodes][:1] == ["n4"] and str(answered) != EMPTY
    refused = engine.query(UNRELATED)
    assert refused.source_nodes == [] and str(refused) == EMPTY

    async def both() -> list[Any]:
        return list(await asyncio.gather(engine.aquery(TEXTS[4]), engine.aquery(UNRELATED)))

    a, r = asyncio.run(both())
    assert len(a.source_nodes) == 2 and r.source_nodes == [] and str(r) == EMPTY


def test_postprocessor_in_an_index_query_engine(vector_store: KLVectorStore) -> None:
    index = VectorStoreIndex.from_vector_store(vector_store, embed_model=KLEmbedding(vector_store.encoder))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=2, node_postprocessors=[KLConfidencePostprocessor(min_confidence=0.5)]
    )
    assert engine.query(UNRELATED).source_nodes == []
    assert len(engine.query(TEXTS[5]).source_nodes) == 2


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True, None])
def test_postprocessor_bad_threshold(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\].*got " + repr(bad)):
        KLConfidencePostprocessor(min_confidence=bad)


def test_postprocessor_keeps_unjudged_nodes_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [NodeWithScore(node=TextNode(text="x"), score=0.3), NodeWithScore(node=TextNode(text="y"), score=0.2)]
    post = KLConfidencePostprocessor(min_confidence=0.9)
    with caplog.at_level(logging.WARNING):
        assert post.postprocess_nodes(nodes) == nodes
        assert post.postprocess_nodes(nodes) == nodes
    assert sum("no node carries 'confidence'" in r.getMessage() for r in caplog.records) == 1
    mixed = [NodeWithScore(node=TextNode(text="x", metadata={"confidence": c}), score=0.1) for c in (0.2, 0.95)]
    assert post.postprocess_nodes(mixed) == mixed  # the best confidence among the nodes decides
    assert KLConfidencePostprocessor(min_confidence=0.96).postprocess_nodes(mixed) == []


# ------------------------------------------------------------------ KLHybridRetriever
@pytest.fixture(scope="module")
def hybrid(encoder: Any, calibrator: ConfidenceCalibrator) -> KLHybridRetriever:
    return KLHybridRetriever.from_defaults(
        nodes=_nodes(), encoder=encoder, similarity_top_k=3, fusion="rrf", calibrator=calibrator
    )


def test_hybrid_retriever_nodes_and_metadata(hybrid: KLHybridRetriever) -> None:
    hits = hybrid.retrieve("black rock")
    assert hits[0].node.node_id == "n4" and len(hits) == 3
    meta = hits[0].node.metadata
    assert meta["bm25_rank"] == 1 and meta["fusion"] == "rrf" and meta["neg_kl"] <= 0
    assert meta["n"] == 4 and 0.0 <= meta[CONFIDENCE_KEY] <= 1.0 and QUERY_UNCERTAINTY_KEY in meta
    assert hits[0].score == pytest.approx(meta["fused_score"])
    llm_text = hits[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert "bm25" not in llm_text and "confidence" not in llm_text and "lang: en" in llm_text
    expected = hybrid.store.search("black rock", k=3)
    assert [h.node.node_id for h in hits] == [r.id for r in expected]
    assert hybrid.retrieve(TEXTS[0])[0].node.metadata[CONFIDENCE_KEY] > 0.9
    # Every per-query key stays out of the node's hash (fusion retrievers match documents by it).
    stored = next(n for n in _nodes() if n.node_id == "n4")
    assert hits[0].node.hash == stored.hash
    assert set(meta) - set(stored.metadata) == {*expected[0].scores(), CONFIDENCE_KEY}


def test_hybrid_retriever_in_query_engines_with_abstention(hybrid: KLHybridRetriever) -> None:
    engine = RetrieverQueryEngine.from_args(
        hybrid, llm=MockLLM(), node_postprocessors=[KLConfidencePostprocessor(min_confidence=0.5)]
    )
    assert engine.query(TEXTS[1]).source_nodes[0].node.node_id == "n1"
    assert str(engine.query(UNRELATED)) == EMPTY
    responses = asyncio.run(engine.aquery(TEXTS[1])), asyncio.run(engine.aquery(UNRELATED))
    assert responses[0].source_nodes[0].node.node_id == "n1" and responses[1].source_nodes == []


def test_hybrid_from_documents_filters_and_options(encoder: Any) -> None:
    docs = [Document(text=t, id_=f"doc{i}", metadata={"n": i}) for i, t in enumerate(TEXTS)]
    only_even = MetadataFilters(filters=[MetadataFilter(key="n", value=[0, 2, 4], operator=FilterOperator.IN)])
    r = KLHybridRetriever.from_defaults(
        documents=docs, encoder=KLEmbedding(encoder), fusion="convex", weight=0.3, filters=only_even
    )
    hits = r.retrieve("green tea")
    assert {h.node.metadata["n"] for h in hits} <= {0, 2, 4} and hits[0].node.metadata["n"] == 2
    assert {h.node.metadata["dense_weight"] for h in hits} == {0.3}
    assert hits[0].node.ref_doc_id == "doc2"
    r.similarity_top_k = 1
    assert len(r.retrieve("green tea")) == 1
    with pytest.raises(ValueError, match="similarity_top_k"):
        r.similarity_top_k = 0


def test_hybrid_bad_input(encoder: Any) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    with pytest.raises(ValueError, match="sum"):
        KLHybridRetriever(store, fusion="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\].*got -1"):
        KLHybridRetriever(store, fusion="convex", weight=-1)
    with pytest.raises(TypeError, match="KLHybridStore"):
        KLHybridRetriever(KLVectorStore())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        KLHybridRetriever.from_defaults(nodes=_nodes(), store=store)
    with pytest.raises(ValueError, match="apply only when no store"):
        KLHybridRetriever.from_defaults(store=store, candidates=5)
    assert KLHybridRetriever(store).retrieve("anything") == []  # empty store
