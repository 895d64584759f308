"""A JSON-form filter combined with ``doc_ids`` or ``node_ids`` runs in Milvus too.

Over a ``MilvusKLStore``, a query with ``doc_ids`` read every node of those source documents and a query with
``node_ids`` every listed node, and judged the filters on them here. The filters' exact JSON form is now sent
with them (``{"$and": [ref_doc filter, filters]}``; ``get_by_filter(filters, ids=node_ids)``): only the nodes
that match both are read, and the answers stay those of the adapter over a ``KLStore``.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from test_llama_index_milvus_reads_only_needed_rows import N, _query, _RowSpy, _same_answer, stores

from kl_retrievers.llama_index import KLVectorStore

__all__ = ["stores"]  # the fixture, shared with the test it comes from

BEES_SINCE_2020 = MetadataFilters(
    filters=[
        MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE),
        MetadataFilter(key="topic", value="bees", operator=FilterOperator.EQ),
    ]
)


def _bees_since_2020(nodes: set[str]) -> set[str]:
    return {n for n in nodes if n.startswith("n") and int(n[1:]) >= 5 and int(n[1:]) % 2 == 1}


@pytest.mark.parametrize("docs", [["doc1"], ["doc0", "doc2"]])
def test_doc_ids_with_a_json_filter_read_only_the_nodes_matching_both(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy], docs: list[str]
) -> None:
    local, over_milvus, spy = stores
    spy.read()
    ids = _same_answer(local, over_milvus, _query(doc_ids=docs, filters=BEES_SINCE_2020))
    of_docs = {f"n{i}" for i in range(N) if f"doc{i % 3}" in docs}
    assert set(ids) == _bees_since_2020(of_docs)
    assert spy.read() - {"i0"} == set(ids)  # the IndexNode may be looked up by its _node_type: nothing else


def test_node_ids_with_a_json_filter_read_only_the_nodes_matching_both(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy],
) -> None:
    local, over_milvus, spy = stores
    listed = ["n1", "n2", "n7", "n9", "n10", "gone"]
    spy.read()
    ids = _same_answer(local, over_milvus, _query(node_ids=listed, filters=BEES_SINCE_2020))
    assert set(ids) == {"n7", "n9"}
    assert spy.read() - {"i0"} == {"n7", "n9"}


def test_a_filter_with_no_json_form_is_still_judged_here(stores: tuple[KLVectorStore, KLVectorStore, Any]) -> None:
    local, over_milvus, _ = stores
    tags = MetadataFilters(filters=[MetadataFilter(key="topic", value=["bees"], operator=FilterOperator.NE)])
    _same_answer(local, over_milvus, _query(doc_ids=["doc1"], filters=tags))
    _same_answer(local, over_milvus, _query(node_ids=["n1", "n2", "n4"], filters=tags))
