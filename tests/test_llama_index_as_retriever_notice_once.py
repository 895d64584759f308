"""The notice that ``node_ids`` is ``as_retriever``'s list of non-text nodes is logged at INFO once per store.

``VectorStoreIndex.as_retriever`` passes the ids of an index's ``IndexNode`` / ``ImageNode`` nodes as
``node_ids``; ``KLVectorStore`` reads that list as no restriction and says so. A service logging at INFO
got that line at every request: now the first such query of a store logs it at INFO, later ones at DEBUG.
"""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import IndexNode, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from conftest import make_tiny_encoder
from kl_retrievers.llama_index import KLEmbedding, KLVectorStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

LOGGER = "kl_retrievers.llama_index"
NOTICE = "node_ids is the list VectorStoreIndex.as_retriever passes"


@pytest.fixture(scope="module")
def embed() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder(seed=3), embed_batch_size=4)


def _index(embed: KLEmbedding) -> tuple[KLVectorStore, VectorStoreIndex]:
    nodes = [TextNode(id_=f"t{i}", text=f"document number {i}") for i in range(4)]
    nodes.append(IndexNode(id_="ix", text="an index node", index_id="sub"))
    vs = KLVectorStore()
    index = VectorStoreIndex(nodes, embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=vs))
    return vs, index


def _notices(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.levelno for r in caplog.records if r.name == LOGGER and NOTICE in r.getMessage()]


def test_two_retrieves_log_one_info_record(embed: KLEmbedding, caplog: pytest.LogCaptureFixture) -> None:
    _, index = _index(embed)
    retriever = index.as_retriever(similarity_top_k=2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for query in ("first query", "second query", "third query"):
            assert len(retriever.retrieve(query)) == 2
    assert _notices(caplog) == [logging.INFO]


def test_later_queries_log_at_debug_and_each_store_says_it_once(
    embed: KLEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    vs, index = _index(embed)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        index.as_retriever(similarity_top_k=2).retrieve("a query")
        # the core API's fallback (no retriever on the stack: the list of exactly the non-text nodes) too
        query = VectorStoreQuery(query_embedding=embed.get_query_embedding("x"), similarity_top_k=9, node_ids=["ix"])
        assert len(vs.query(query).ids or []) == 5  # no restriction
        index.as_retriever(similarity_top_k=2).retrieve("another query")
    assert _notices(caplog) == [logging.INFO, logging.DEBUG, logging.DEBUG]
    caplog.clear()
    _, other = _index(embed)  # another store: its own first notice
    with caplog.at_level(logging.INFO, logger=LOGGER):
        other.as_retriever(similarity_top_k=2).retrieve("a query")
    assert _notices(caplog) == [logging.INFO]
