"""LlamaIndex's KLVectorStore over a MilvusKLStore (Milvus Lite), as the LangChain adapter takes one.

``KLVectorStore(store=MilvusKLStore(...))`` raised ``TypeError: store must be a KLStore``, though docs/faq.md
says the adapters work over both stores. Each operation is compared with the same store over a ``KLStore``:
add, query (filters with and without a JSON form, ``doc_ids``, ``node_ids``, MMR), ``get_nodes``, deletes by
``ref_doc_id``, by node id and by filter, ``clear``; ``persist`` writes nothing (the nodes are in Milvus).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import Document, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import KLStore, kl_document_vectors, kl_query_vectors
from kl_retrievers.llama_index import KLEmbedding, KLVectorStore
from kl_retrievers.milvus import MilvusKLStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

K = 4
N = 12


def _nodes() -> list[TextNode]:
    """Nodes of three source documents (``doc0`` .. ``doc2``), with metadata for every kind of filter."""
    vectors = kl_document_vectors(random_gaussians(N, K, seed=3))
    nodes = []
    for i in range(N):
        node = TextNode(
            id_=f"n{i}",
            text=f"text number {i} about {'bees' if i % 2 else 'tea'}",
            embedding=[float(x) for x in vectors[i]],
            metadata={"year": 2015 + i, "topic": "bees" if i % 2 else "tea", "tags": ["a", "b"] if i % 3 else ["c"]},
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 3}")
        nodes.append(node)
    return nodes


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[KLVectorStore, KLVectorStore]]:
    """The same nodes in a KLVectorStore over a flat KLStore and over a flat MilvusKLStore (Milvus Lite)."""
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        over_milvus = KLVectorStore(store=milvus)
        local = KLVectorStore()
        assert over_milvus.add(_nodes()) == local.add(_nodes()) == [f"n{i}" for i in range(N)]
        yield local, over_milvus
    finally:
        milvus.close()


def _query(**kw: object) -> VectorStoreQuery:
    q = kl_query_vectors(random_gaussians(1, K, seed=9))[0]
    return VectorStoreQuery(query_embedding=[float(x) for x in q], similarity_top_k=kw.pop("k", 5), **kw)  # type: ignore[arg-type]


def _same_answer(local: KLVectorStore, over_milvus: KLVectorStore, query: VectorStoreQuery) -> list[str]:
    want, got = local.query(query), over_milvus.query(query)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.similarities or [], want.similarities or [], rtol=1e-5)
    assert [n.ref_doc_id for n in got.nodes or []] == [n.ref_doc_id for n in want.nodes or []]
    return got.ids or []


FILTERS = {
    "json: >=": MetadataFilters(filters=[MetadataFilter(key="year", value=2019, operator=FilterOperator.GTE)]),
    "json: in, or": MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value=["bees"], operator=FilterOperator.IN),
            MetadataFilter(key="year", value=2016, operator=FilterOperator.LT),
        ],
        condition=FilterCondition.OR,
    ),
    "no json: contains": MetadataFilters(
        filters=[MetadataFilter(key="tags", value="c", operator=FilterOperator.CONTAINS)]
    ),
    "no json: text_match": MetadataFilters(
        filters=[MetadataFilter(key="topic", value="ee", operator=FilterOperator.TEXT_MATCH)]
    ),
    "no json: not": MetadataFilters(
        filters=[MetadataFilter(key="tags", value="c", operator=FilterOperator.CONTAINS)], condition=FilterCondition.NOT
    ),
    "no json: is_empty, and": MetadataFilters(
        filters=[
            MetadataFilter(key="missing", value=None, operator=FilterOperator.IS_EMPTY),
            MetadataFilter(key="topic", value="tea", operator=FilterOperator.EQ),
        ],
        condition=FilterCondition.AND,
    ),
}


def test_the_store_wraps_a_milvus_store_and_answers_as_over_a_klstore(
    stores: tuple[KLVectorStore, KLVectorStore],
) -> None:
    local, over_milvus = stores
    assert isinstance(over_milvus.kl_store, MilvusKLStore) and over_milvus.client is over_milvus.kl_store
    assert len(_same_answer(local, over_milvus, _query())) == 5
    assert len(_same_answer(local, over_milvus, _query(k=N + 5))) == N
    assert _same_answer(local, over_milvus, _query(mode=VectorStoreQueryMode.MMR, mmr_threshold=0.3))


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filters_with_and_without_a_json_form(stores: tuple[KLVectorStore, KLVectorStore], name: str) -> None:
    local, over_milvus = stores
    filters = FILTERS[name]
    ids = _same_answer(local, over_milvus, _query(k=N, filters=filters))
    assert 0 < len(ids) < N, ids  # each filter leaves some nodes out
    got = sorted(n.node_id for n in over_milvus.get_nodes(filters=filters))
    assert got == sorted(n.node_id for n in local.get_nodes(filters=filters)) == sorted(ids)


def test_doc_ids_and_node_ids_restrict_the_search(stores: tuple[KLVectorStore, KLVectorStore]) -> None:
    local, over_milvus = stores
    ids = _same_answer(local, over_milvus, _query(k=N, doc_ids=["doc1"]))
    assert sorted(ids, key=lambda i: int(i[1:])) == [f"n{i}" for i in range(1, N, 3)]
    assert _same_answer(local, over_milvus, _query(k=N, node_ids=["n2", "n5", "n7", "gone"])) != []
    both = _query(k=N, doc_ids=["doc0", "doc2"], filters=FILTERS["no json: contains"])
    assert _same_answer(local, over_milvus, both)


def test_deletes_by_ref_doc_id_node_id_and_filter_then_clear(stores: tuple[KLVectorStore, KLVectorStore]) -> None:
    local, over_milvus = stores
    for vs in stores:
        vs.delete("doc1")  # LlamaIndex's delete(ref_doc_id): every node of that source document
        vs.delete("no-such-doc")
    kept = sorted(n.node_id for n in over_milvus.get_nodes())
    assert kept == sorted(n.node_id for n in local.get_nodes()) == sorted(f"n{i}" for i in range(N) if i % 3 != 1)
    assert len(over_milvus.kl_store) == len(kept)

    for vs in stores:
        before_2016 = MetadataFilters(filters=[MetadataFilter(key="year", value=2016, operator=FilterOperator.LT)])
        vs.delete_nodes(node_ids=["n0", "n2", "gone"], filters=before_2016)  # both: n0 only (n2 is of 2017)
        vs.delete_nodes(filters=FILTERS["no json: contains"])  # no JSON form: judged on every node
        vs.delete_nodes(node_ids=["n5"])
    kept = sorted(n.node_id for n in over_milvus.get_nodes())
    assert kept == sorted(n.node_id for n in local.get_nodes())
    assert "n2" in kept and "n0" not in kept and "n5" not in kept and "n3" not in kept  # n3 has tags ["c"]
    _same_answer(local, over_milvus, _query(k=N))

    over_milvus.clear()
    assert len(over_milvus.kl_store) == 0 and over_milvus.get_nodes() == []
    assert over_milvus.query(_query()).ids == []


def test_persist_writes_nothing_and_storage_context_persist_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """LlamaIndex's stores over a server persist nothing; the docstore and index store are still written."""
    encoder = make_tiny_encoder(seed=2)
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="docs", index_type="flat")
    try:
        storage = StorageContext.from_defaults(vector_store=KLVectorStore(store=milvus))
        docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(["bees dance", "tea is a drink", "milvus"])]
        index = VectorStoreIndex.from_documents(docs, storage_context=storage, embed_model=KLEmbedding(encoder))
        hits = index.as_retriever(similarity_top_k=3).retrieve("bees dance")
        assert len(hits) == 3 and hits[0].node.ref_doc_id == "d0"
        with caplog.at_level(logging.INFO, logger="kl_retrievers.llama_index"):
            storage.persist(persist_dir=str(tmp_path / "storage"))
        assert "nothing written" in caplog.text
        written = sorted(p.name for p in (tmp_path / "storage").iterdir())
        assert "default__vector_store.json" not in written and not [n for n in written if "klstore" in n], written
        assert (tmp_path / "storage" / "docstore.json").is_file()
        index.delete_ref_doc("d0")
        assert [h.node.ref_doc_id for h in index.as_retriever(similarity_top_k=3).retrieve("bees")] != []
        assert "d0" not in {h.node.ref_doc_id for h in index.as_retriever(similarity_top_k=3).retrieve("bees")}
        assert len(milvus) == 2
    finally:
        milvus.close()


def test_a_store_of_another_kind_is_refused_naming_both_stores() -> None:
    with pytest.raises(TypeError, match=r"KLStore or a MilvusKLStore .*got dict"):
        KLVectorStore(store={})  # type: ignore[arg-type]
    assert isinstance(KLVectorStore().kl_store, KLStore)


def test_kl_embedding_encoder_is_a_typed_property() -> None:
    prop = KLEmbedding.__dict__["encoder"]
    assert isinstance(prop, property) and prop.fget is not None
    assert prop.fget.__annotations__ == {"return": "Any"}
    assert prop.__doc__ and "encoder" in prop.__doc__


LIST_VALUED = {
    "==": MetadataFilters(filters=[MetadataFilter(key="tags", value=["a", "b"], operator=FilterOperator.EQ)]),
    "!=": MetadataFilters(filters=[MetadataFilter(key="tags", value=["c"], operator=FilterOperator.NE)]),
}


@pytest.mark.parametrize("op", sorted(LIST_VALUED))
def test_a_list_valued_filter_is_judged_here_over_milvus(stores: tuple[KLVectorStore, KLVectorStore], op: str) -> None:
    """``tags == ["a", "b"]`` is a valid LlamaIndex filter; Milvus filters on scalars only: it raised there."""
    local, over_milvus = stores
    filters = LIST_VALUED[op]
    ids = _same_answer(local, over_milvus, _query(k=N, filters=filters))
    assert 0 < len(ids) < N, ids
    over_milvus.delete_nodes(filters=filters)
    local.delete_nodes(filters=filters)
    left = sorted(n.node_id for n in over_milvus.get_nodes())
    assert left == sorted(n.node_id for n in local.get_nodes()) and 0 < len(left) < N
