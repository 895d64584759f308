"""LlamaIndex ``KLRetriever`` and a query bundle.

* Several ``custom_embedding_strs`` (HyDE keeps the question too) are searched as their moment-matched
  Gaussian, the mean ``q~`` of ``get_agg_embedding_from_queries``, as ``index.as_retriever()`` searches them
  (they were joined into one string).
* With an encoder the text is encoded, never the bundle's ``embedding``: ``QueryFusionRetriever`` hands one
  bundle to every retriever, and ``index.as_retriever()`` writes its own model's embedding into it (another
  KL model of the same width would be searched against this store's documents). Without an encoder the
  embedding must be a KL query vector.

Tiny random encoder (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers.llama_index import KLEmbedding, KLRetriever, KLVectorStore

QUESTION, ANSWER = "the cat sat on the mat", "a train at sea"


@pytest.fixture(scope="module")
def embed() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder(seed=1))


@pytest.fixture
def index(embed: KLEmbedding, mock_llm_settings: None) -> Iterator[VectorStoreIndex]:
    docs = [Document(text=t, doc_id=f"d{i}") for i, t in enumerate(HYBRID_TEXTS)]
    storage = StorageContext.from_defaults(vector_store=KLVectorStore(encoder=embed.encoder))
    yield VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=embed)


def _ranked(nodes: list[NodeWithScore]) -> list[tuple[str | None, float]]:
    return [(n.node.ref_doc_id, float(n.node.metadata["neg_kl"])) for n in nodes]


def _both(index: VectorStoreIndex, bundle: Callable[[], QueryBundle]) -> tuple[list[Any], list[Any]]:
    """The index retriever's and KLRetriever's rankings of every node (a fresh bundle each: as_retriever fills
    in the bundle's embedding)."""
    top = len(HYBRID_TEXTS)
    ours = KLRetriever.from_defaults(index=index, similarity_top_k=top).retrieve(bundle())
    theirs = index.as_retriever(similarity_top_k=top).retrieve(bundle())
    return _ranked(ours), _ranked(theirs)


def _assert_same(a: list[Any], b: list[Any]) -> None:
    assert [doc for doc, _ in a] == [doc for doc, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-9, atol=1e-9)


def test_fusion_with_another_same_width_kl_model_does_not_depend_on_the_order(
    index: VectorStoreIndex, embed: KLEmbedding, mock_llm_settings: None
) -> None:
    from llama_index.core.retrievers import QueryFusionRetriever

    other = KLEmbedding(make_tiny_encoder(seed=7))  # another KL model of the same width
    docs = [Document(text=f"{t} again", doc_id=f"o{i}") for i, t in enumerate(HYBRID_TEXTS)]  # no shared text
    storage = StorageContext.from_defaults(vector_store=KLVectorStore(encoder=other.encoder))
    other_index = VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=other)
    top = len(HYBRID_TEXTS)
    ours = KLRetriever.from_defaults(index=index, similarity_top_k=top)
    theirs = other_index.as_retriever(similarity_top_k=top)

    def fused(retrievers: list[Any]) -> list[str]:
        fusion = QueryFusionRetriever(retrievers, similarity_top_k=2 * top, num_queries=1, use_async=False)
        return [f"{n.node.get_content()}:{n.score:.12f}" for n in fusion.retrieve(QUESTION)]

    alone = _ranked(ours.retrieve(QUESTION))
    bundle = QueryBundle(QUESTION, embedding=list(other.get_query_embedding(QUESTION)))
    _assert_same(_ranked(ours.retrieve(bundle)), alone)  # the other model's embedding is not searched
    assert fused([theirs, ours]) == fused([ours, theirs])


def test_several_embedding_strings_are_searched_as_their_moment_matched_query(index: VectorStoreIndex) -> None:
    ours, theirs = _both(index, lambda: QueryBundle("zzz", custom_embedding_strs=[QUESTION, ANSWER]))
    _assert_same(ours, theirs)


def test_one_embedding_string_is_encoded_as_it_is(index: VectorStoreIndex) -> None:
    ours, theirs = _both(index, lambda: QueryBundle("zzz", custom_embedding_strs=[ANSWER]))
    _assert_same(ours, theirs)
    asked = KLRetriever.from_defaults(index=index, similarity_top_k=len(HYBRID_TEXTS)).retrieve(ANSWER)
    _assert_same(ours, _ranked(asked))


@pytest.mark.parametrize("kind", ["another model's", "a document vector", "another width"])
def test_a_foreign_embedding_is_left_aside_with_an_encoder(
    index: VectorStoreIndex, embed: KLEmbedding, kind: str
) -> None:
    foreign = {
        "another model's": [0.01] * 1536,
        "a document vector": embed.get_text_embedding(QUESTION),
        "another width": KLEmbedding(make_tiny_encoder(dim=4, seed=2)).get_query_embedding(QUESTION),
    }[kind]
    retriever = KLRetriever.from_defaults(index=index, similarity_top_k=len(HYBRID_TEXTS))
    _assert_same(
        _ranked(retriever.retrieve(QueryBundle(ANSWER, embedding=foreign))), _ranked(retriever.retrieve(ANSWER))
    )


def test_a_foreign_embedding_without_an_encoder_raises(embed: KLEmbedding) -> None:
    vectors = embed.get_text_embedding_batch(HYBRID_TEXTS)  # embedded outside an index: the store learns no encoder
    store = KLVectorStore()
    store.add(
        [TextNode(text=t, id_=f"n{i}", embedding=v) for i, (t, v) in enumerate(zip(HYBRID_TEXTS, vectors, strict=True))]
    )
    retriever = KLRetriever(store)
    with pytest.raises(ValueError, match="not KL query vectors"):
        retriever.retrieve(QueryBundle(ANSWER, embedding=embed.get_text_embedding(QUESTION)))
    hits = retriever.retrieve(QueryBundle(ANSWER, embedding=embed.get_query_embedding(QUESTION)))
    assert hits[0].node.get_content() == QUESTION
