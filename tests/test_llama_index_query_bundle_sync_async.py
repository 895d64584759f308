"""What the LlamaIndex retrievers read from a ``QueryBundle``, through ``retrieve`` and ``aretrieve`` alike.

* ``KLRetriever`` (the dense side) reads what ``VectorIndexRetriever`` embeds, the bundle's ``embedding_strs``:
  its ``custom_embedding_strs`` (several: their moment-matched Gaussian), else its ``query_str``. Its
  ``embedding`` is searched only without an encoder (a ``KLEmbedding`` query vector, else a ``ValueError``);
  with an encoder the text is encoded (``QueryFusionRetriever`` shares one bundle, into which
  ``VectorIndexRetriever`` writes its own model's embedding: tests/test_llama_index_query_bundle_embedding.py).
* ``KLHybridRetriever`` searches ``query_str`` with both halves, as LlamaIndex's ``BM25Retriever`` reads it: the
  bundle's ``custom_embedding_strs`` and ``embedding`` are not searched (the hybrid calibrator and the adaptive
  fusion were fitted with both halves reading one text), and the blank-query rule judges ``query_str``.

Tiny random encoder (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.llama_index import (
    CONFIDENCE_KEY,
    EMPTY_QUERY_REASON,
    KLEmbedding,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

QUESTION, ANSWER = "the cat sat on the mat", "a train at sea"
TOP = len(HYBRID_TEXTS)
WAYS = ["retrieve", "aretrieve"]


@pytest.fixture(scope="module")
def embed() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder(seed=1))


@pytest.fixture
def index(embed: KLEmbedding, mock_llm_settings: None) -> Iterator[VectorStoreIndex]:
    docs = [Document(text=t, doc_id=f"d{i}") for i, t in enumerate(HYBRID_TEXTS)]
    storage = StorageContext.from_defaults(vector_store=KLVectorStore(encoder=embed.encoder))
    yield VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=embed)


@pytest.fixture
def hybrid(embed: KLEmbedding) -> KLHybridRetriever:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(HYBRID_TEXTS)]
    return KLHybridRetriever.from_defaults(
        nodes=nodes, encoder=embed.encoder, similarity_top_k=TOP, calibrator=max_score_calibrator()
    )


def _run(retriever: BaseRetriever, query: str | QueryBundle, way: str) -> list[NodeWithScore]:
    if way == "aretrieve":
        return asyncio.run(retriever.aretrieve(query))
    return retriever.retrieve(query)


def _dense(nodes: list[NodeWithScore]) -> list[tuple[str | None, float]]:
    return [(n.node.ref_doc_id, float(n.node.metadata["neg_kl"])) for n in nodes]


def _fused(nodes: list[NodeWithScore]) -> list[tuple[Any, ...]]:
    keys = ("neg_kl", "bm25", "dense_rank", "bm25_rank", CONFIDENCE_KEY)
    return [(n.node.node_id, n.score, *(n.node.metadata.get(k) for k in keys)) for n in nodes]


def _assert_same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert [x[0] for x in a] == [x[0] for x in b]
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x[1:], y[1:], strict=True):  # a rank or a confidence may be None
            assert u == (v if v is None else pytest.approx(v, rel=1e-9, abs=1e-9))


# ------------------------------------------------------------------ KLRetriever: the embedding strings
BUNDLES: dict[str, Callable[[], QueryBundle]] = {
    "HyDE: two embedding strings": lambda: QueryBundle("zzz", custom_embedding_strs=[QUESTION, ANSWER]),
    "one embedding string": lambda: QueryBundle("zzz", custom_embedding_strs=[ANSWER]),
    "a blank query_str beside one": lambda: QueryBundle("", custom_embedding_strs=[ANSWER]),
    "no embedding strings: query_str": lambda: QueryBundle(ANSWER, custom_embedding_strs=[]),
}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_kl_retriever_searches_the_embedding_strings_as_the_index_retriever_does(
    index: VectorStoreIndex, bundle: str, way: str
) -> None:
    make = BUNDLES[bundle]
    ours = _dense(_run(KLRetriever.from_defaults(index=index, similarity_top_k=TOP), make(), way))
    theirs = _dense(_run(index.as_retriever(similarity_top_k=TOP), make(), way))
    _assert_same(ours, theirs)
    # the query string "zzz" alone ranks otherwise: the embedding strings were what was searched
    assert [d for d, _ in ours] != [d for d, _ in _dense(index.as_retriever(similarity_top_k=TOP).retrieve("zzz"))]


@pytest.mark.parametrize("way", WAYS)
def test_kl_retriever_with_an_encoder_encodes_the_text_not_the_bundle_embedding(
    index: VectorStoreIndex, embed: KLEmbedding, way: str
) -> None:
    other = KLEmbedding(make_tiny_encoder(seed=7)).get_query_embedding(QUESTION)  # another KL model, same width
    same = embed.get_query_embedding(QUESTION)  # this model's, of another text
    retriever = KLRetriever.from_defaults(index=index, similarity_top_k=TOP)
    alone = _dense(_run(retriever, ANSWER, way))
    for vector in (other, same):
        _assert_same(_dense(_run(retriever, QueryBundle(ANSWER, embedding=vector), way)), alone)
    assert [d for d, _ in alone] != [d for d, _ in _dense(retriever.retrieve(QUESTION))]


def _store_without_encoder(embed: KLEmbedding) -> KLVectorStore:
    """Nodes embedded outside an index: the store learns no encoder, and nor does a retriever over it."""
    vectors = embed.get_text_embedding_batch(HYBRID_TEXTS)
    store = KLVectorStore()
    pairs = enumerate(zip(HYBRID_TEXTS, vectors, strict=True))
    store.add([TextNode(text=t, id_=f"n{i}", embedding=v) for i, (t, v) in pairs])
    return store


@pytest.mark.parametrize("way", WAYS)
def test_kl_retriever_without_an_encoder_searches_the_bundle_embedding(embed: KLEmbedding, way: str) -> None:
    retriever = KLRetriever(_store_without_encoder(embed), similarity_top_k=TOP)
    hits = _run(retriever, QueryBundle("zzz", embedding=embed.get_query_embedding(ANSWER)), way)
    assert hits[0].node.get_content() == ANSWER
    with pytest.raises(ValueError, match="not KL query vectors"):
        _run(retriever, QueryBundle(ANSWER, embedding=embed.get_text_embedding(QUESTION)), way)
    with pytest.raises(ValueError, match="no KL query embedding"):
        _run(retriever, QueryBundle(ANSWER), way)


# ------------------------------------------------------------------ KLHybridRetriever: the query string
@pytest.mark.parametrize("way", WAYS)
def test_hybrid_retriever_searches_query_str_with_both_halves(
    hybrid: KLHybridRetriever, embed: KLEmbedding, way: str
) -> None:
    asked = _fused(_run(hybrid, QUESTION, way))
    assert asked[0][0] == "n0" and asked[0][3] > 0  # the question's words: BM25 scored its own text
    # the embedding strings and the embedding (this model's q~, of another text) are not searched
    bundles = [
        QueryBundle(QUESTION, custom_embedding_strs=[ANSWER]),
        QueryBundle(QUESTION, custom_embedding_strs=[ANSWER, QUESTION]),  # HyDE keeping the question
        QueryBundle(QUESTION, embedding=embed.get_query_embedding(ANSWER)),
        QueryBundle(QUESTION, custom_embedding_strs=[ANSWER], embedding=embed.get_query_embedding(ANSWER)),
    ]
    for bundle in bundles:
        _assert_same(_fused(_run(hybrid, bundle, way)), asked)
    assert _fused(hybrid.retrieve(ANSWER))[0][0] == "n5"  # what searching ANSWER would have found first


@pytest.mark.parametrize("way", WAYS)
def test_hybrid_retriever_judges_a_blank_query_by_query_str(hybrid: KLHybridRetriever, way: str) -> None:
    blank = _run(hybrid, QueryBundle("  ", custom_embedding_strs=[QUESTION]), way)
    assert blank and {n.node.metadata[CONFIDENCE_KEY] for n in blank} == {0.0}
    assert {n.node.metadata["confidence_reason"] for n in blank} == {EMPTY_QUERY_REASON}
    asked = _run(hybrid, QueryBundle(QUESTION, custom_embedding_strs=["  "]), way)
    assert asked and "confidence_reason" not in asked[0].node.metadata
    assert np.isfinite(asked[0].node.metadata[CONFIDENCE_KEY]) and asked[0].node.metadata[CONFIDENCE_KEY] > 0
