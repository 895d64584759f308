"""LlamaIndex abstention: where ``min_confidence`` is dropped or ignored, the message names the way that works.

``VectorStoreIndex.as_retriever(min_confidence=...)`` (or ``similarity_cutoff=``, ``k=``) is dropped by LlamaIndex's
``VectorIndexRetriever`` before the store sees it (docs/llama_index.md says so); ``vector_store_kwargs=
{"min_confidence": ...}`` reaches ``KLVectorStore.query``, which ignores it with a warning, and ``KLRetriever`` /
``KLHybridRetriever`` refuse it: each now names ``KLConfidencePostprocessor(min_confidence=...)``.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex

from conftest import CountingEncoder
from kl_retrievers.llama_index import KLEmbedding, KLRetriever, KLVectorStore

HINT = "add node_postprocessors=[KLConfidencePostprocessor(min_confidence=...)] to the query engine"
TEXTS = ["Aspirin lowers fever.", "Coffee contains caffeine."]


@pytest.fixture()
def index() -> VectorStoreIndex:
    embedding = KLEmbedding(CountingEncoder())
    store = KLVectorStore(encoder=embedding)
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in TEXTS],
        embed_model=embedding,
        storage_context=StorageContext.from_defaults(vector_store=store),
    )


def test_vector_store_kwargs_min_confidence_warns_with_the_way_to_abstain(index: VectorStoreIndex) -> None:
    retriever = index.as_retriever(similarity_top_k=2, vector_store_kwargs={"min_confidence": 0.99})
    with pytest.warns(UserWarning, match="ignores the keyword argument") as sync_warned:
        assert len(retriever.retrieve("who won the 1998 world cup?")) == 2  # ignored: no abstention
    with pytest.warns(UserWarning, match="ignores the keyword argument") as async_warned:
        assert len(asyncio.run(retriever.aretrieve("who won the 1998 world cup?"))) == 2
    for warned in (sync_warned, async_warned):
        assert any("['min_confidence']" in str(w.message) and HINT in str(w.message) for w in warned)


def test_another_ignored_keyword_gets_no_abstention_hint(index: VectorStoreIndex) -> None:
    retriever = index.as_retriever(similarity_top_k=2, vector_store_kwargs={"top_k": 1})
    with pytest.warns(UserWarning, match="ignores the keyword argument") as warned:
        retriever.retrieve("coffee")
    assert not any("KLConfidencePostprocessor" in str(w.message) for w in warned)


def test_as_retriever_keywords_are_dropped_by_llama_index_itself(index: VectorStoreIndex) -> None:
    """What docs/llama_index.md states: if LlamaIndex starts passing these on (this fails), update the docs."""
    for keywords in ({"min_confidence": 0.99}, {"similarity_cutoff": 0.99}, {"k": 1}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the store sees nothing, so nothing warns
            assert len(index.as_retriever(similarity_top_k=2, **keywords).retrieve("who won?")) == 2


def test_klretriever_refuses_min_confidence_naming_the_postprocessor() -> None:
    with pytest.raises(TypeError) as raised:
        KLRetriever(KLVectorStore(encoder=CountingEncoder()), min_confidence=0.5)
    assert "['min_confidence'] (min_confidence: to abstain below a confidence, " + HINT in str(raised.value)


def test_hybrid_retriever_refuses_min_confidence_naming_the_postprocessor() -> None:
    pytest.importorskip("bm25s")  # the hybrid extra
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.llama_index import KLHybridRetriever

    with pytest.raises(TypeError) as raised:
        KLHybridRetriever(KLHybridStore(CountingEncoder(), fusion="rrf"), min_confidence=0.5)
    assert "(min_confidence: to abstain below a confidence, " + HINT in str(raised.value)
