"""LlamaIndex's KLVectorStore over documents added with the core API whose ``_node_type`` is no string.

The stored ``IndexNode`` / ``ImageNode`` ids are found by their ``_node_type``; a list or an object there (any JSON
value may be stored) raised ``TypeError: unhashable type`` at a ``node_ids`` query instead of naming no such node.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.vector_stores.types import VectorStoreQuery

from conftest import random_gaussians
from kl_retrievers import KLStore, kl_query_vectors
from kl_retrievers.llama_index import KLVectorStore

METADATAS: list[dict[str, Any]] = [
    {"_node_type": ["IndexNode"]},
    {},
    {"_node_type": {"IndexNode": 1}},
    {"_node_type": "IndexNode"},
]
IDS = ["a", "b", "c", "d"]


def _query(node_ids: list[str]) -> VectorStoreQuery:
    q = kl_query_vectors(random_gaussians(1, 4, seed=9))[0]
    return VectorStoreQuery(query_embedding=[float(x) for x in q], similarity_top_k=5, node_ids=node_ids)


def test_node_ids_query_over_list_and_object_node_types() -> None:
    vs = KLVectorStore()
    vs.kl_store.add(gaussians=random_gaussians(4, 4), ids=IDS, metadatas=METADATAS)
    assert vs._stored_non_text_ids() == {"d"}  # only a string names a node type
    assert set(vs.query(_query(["a"])).ids or []) == {"a"}


def test_wrapping_a_filled_store_with_list_node_types() -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(4, 4), ids=IDS, metadatas=METADATAS)
    vs = KLVectorStore(store=store)  # reads the stored nodes once
    assert vs._stored_non_text_ids() == {"d"}
    assert set(vs.query(_query(["c"])).ids or []) == {"c"}
