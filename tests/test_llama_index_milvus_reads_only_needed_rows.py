"""LlamaIndex's KLVectorStore over a MilvusKLStore reads only the rows it needs.

``query(VectorStoreQuery(node_ids=[...]))`` sent by no retriever, ``get_nodes(filters=...)``, ``delete(ref_doc_id)``
and ``doc_ids`` read the whole collection into Python and filtered there. They now ask the store for the rows they
need (:meth:`GaussianStore.get_by_filter`: by id, by a filter Milvus evaluates, by the ``ref_doc_id`` metadata):
a spy on the Milvus client records every row a query returns, and each operation reads only the rows it is about,
with the answers of the same adapter over a ``KLStore``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from llama_index.core.schema import IndexNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery

from conftest import random_gaussians
from kl_retrievers import KLStore, kl_document_vectors, kl_query_vectors
from kl_retrievers.llama_index import KLVectorStore
from kl_retrievers.milvus import MilvusKLStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

K = 4
N = 12


def _nodes() -> list[TextNode]:
    """Twelve text nodes of three source documents (``doc0`` .. ``doc2``) and one IndexNode (``i0``, of ``doc0``)."""
    vectors = kl_document_vectors(random_gaussians(N + 1, K, seed=3))
    nodes: list[TextNode] = []
    for i in range(N):
        node = TextNode(
            id_=f"n{i}",
            text=f"text {i}",
            embedding=[float(x) for x in vectors[i]],
            metadata={"year": 2015 + i, "topic": "bees" if i % 2 else "tea"},
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 3}")
        nodes.append(node)
    index_node = IndexNode(id_="i0", text="an index", index_id="other", embedding=[float(x) for x in vectors[N]])
    index_node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="doc0")
    return [*nodes, index_node]


# documents added with the core API, whose "ref_doc_id" is another JSON value than a string
PLAIN = {"p7": 7, "p25": 2.5, "pt": True}


class _RowSpy:
    """Wraps a Milvus client's ``query``: records the id of every row it returns."""

    def __init__(self, client: Any) -> None:
        self.query = client.query
        self.ids: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = self.query(*args, **kwargs)
        self.ids.extend(str(r["id"]) for r in rows if "id" in r)
        return rows

    def read(self) -> set[str]:
        ids, self.ids = set(self.ids), []
        return ids


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KLVectorStore, KLVectorStore, _RowSpy]]:
    """The same nodes in a KLVectorStore over a KLStore and over a flat MilvusKLStore, and the spy on the latter."""
    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        local, over_milvus = KLVectorStore(), KLVectorStore(store=milvus)
        for vs in (local, over_milvus):
            vs.add(_nodes())
            vs.kl_store.add(
                gaussians=random_gaussians(len(PLAIN), K, seed=5),
                ids=list(PLAIN),
                metadatas=[{"ref_doc_id": ref} for ref in PLAIN.values()],
            )
        spy = _RowSpy(milvus.client)
        monkeypatch.setattr(milvus.client, "query", spy)
        yield local, over_milvus, spy
    finally:
        milvus.close()


def _query(**kw: Any) -> VectorStoreQuery:
    q = kl_query_vectors(random_gaussians(1, K, seed=9))[0]
    return VectorStoreQuery(query_embedding=[float(x) for x in q], similarity_top_k=kw.pop("k", N + 5), **kw)


def _same_answer(local: KLVectorStore, over_milvus: KLVectorStore, query: VectorStoreQuery) -> list[str]:
    want, got = local.query(query), over_milvus.query(query)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.similarities or [], want.similarities or [], rtol=1e-5)
    return got.ids or []


def _of_doc(*docs: str) -> set[str]:
    return {f"n{i}" for i in range(N) if f"doc{i % 3}" in docs} | ({"i0"} if "doc0" in docs else set())


def test_a_node_ids_query_sent_by_no_retriever_reads_the_listed_and_the_index_nodes_only(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy],
) -> None:
    local, over_milvus, spy = stores
    spy.read()
    ids = _same_answer(local, over_milvus, _query(node_ids=["n2", "n5", "gone"]))
    assert sorted(ids) == ["n2", "n5"]
    # the IndexNode is found by its _node_type (the list does not name it: the list restricts the search)
    assert spy.read() <= {"n2", "n5", "i0"}
    # the list of the stored IndexNode / ImageNode nodes is what as_retriever sends: no restriction
    assert len(_same_answer(local, over_milvus, _query(node_ids=["i0"]))) == N + 1 + len(PLAIN)


@pytest.mark.parametrize("node_ids", [None, ["n9", "n1", "n11", "n3"]])
def test_get_nodes_with_a_filter_reads_the_matching_nodes_only(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy], node_ids: list[str] | None
) -> None:
    local, over_milvus, spy = stores
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE),
            MetadataFilter(key="topic", value="bees", operator=FilterOperator.EQ),
        ]
    )
    spy.read()
    got = over_milvus.get_nodes(node_ids=node_ids, filters=filters)
    want = local.get_nodes(node_ids=node_ids, filters=filters)
    if node_ids is None:  # the store's order: Milvus's is its primary key's, a KLStore's the insertion order
        got, want = sorted(got, key=lambda n: n.node_id), sorted(want, key=lambda n: n.node_id)
    assert [n.node_id for n in got] == [n.node_id for n in want]
    expected = ["n9", "n11"] if node_ids else ["n5", "n7", "n9", "n11"]
    assert sorted(n.node_id for n in got) == sorted(expected)
    assert spy.read() == set(expected)
    for g, w in zip(got, want, strict=True):
        assert g.get_content() == w.get_content() and g.metadata == w.metadata
        np.testing.assert_allclose(g.embedding or [], w.embedding or [], rtol=1e-5)


@pytest.mark.parametrize("ref", ["doc1", "doc0", "7", "2.5", "True", "no-such-doc"])
def test_delete_of_a_ref_doc_id_reads_the_nodes_of_that_document_only(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy], ref: str
) -> None:
    local, over_milvus, spy = stores
    plain = {doc_id for doc_id, value in PLAIN.items() if str(value) == ref}
    spy.read()
    over_milvus.delete(ref)
    local.delete(ref)
    assert spy.read() <= _of_doc(ref) | plain
    kept = sorted(n.node_id for n in over_milvus.get_nodes())
    assert kept == sorted(n.node_id for n in local.get_nodes())
    assert set(kept) == ({f"n{i}" for i in range(N)} | {"i0"} | set(PLAIN)) - _of_doc(ref) - plain


@pytest.mark.parametrize("doc_ids", [["doc1"], ["doc0", "doc2"], ["7", "True"]])
def test_doc_ids_read_the_nodes_of_those_documents_only(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy], doc_ids: list[str]
) -> None:
    local, over_milvus, spy = stores
    plain = {doc_id for doc_id, value in PLAIN.items() if str(value) in doc_ids}
    spy.read()
    ids = _same_answer(local, over_milvus, _query(doc_ids=doc_ids))
    assert set(ids) == _of_doc(*doc_ids) | plain
    assert spy.read() <= _of_doc(*doc_ids) | plain


def test_get_by_filter_reads_matching_documents_in_both_stores(
    stores: tuple[KLVectorStore, KLVectorStore, _RowSpy],
) -> None:
    local, over_milvus, spy = stores
    milvus, klstore = over_milvus.kl_store, local.kl_store
    assert isinstance(klstore, KLStore)
    spy.read()
    cases: list[tuple[dict[str, Any] | None, list[str] | None]] = [
        ({"topic": "tea"}, None),
        ({"year": {"$lt": 2018}}, ["n2", "n0", "n5", "gone"]),
        ({}, ["n3", "p7"]),
        ({"ref_doc_id": {"$in": [7, 2.5]}}, None),
        (None, ["n3", "n0"]),  # None: every document, as {} is
    ]
    for spec, ids in cases:
        got, want = milvus.get_by_filter(spec, ids=ids), klstore.get_by_filter(spec, ids=ids)
        if ids is None:  # the store's order (see above)
            got, want = sorted(got, key=lambda d: d.id), sorted(want, key=lambda d: d.id)
        assert [(d.id, d.text, d.metadata) for d in got] == [(d.id, d.text, d.metadata) for d in want]
        if ids is not None:  # in the order of ids
            assert [d.id for d in got] == [i for i in ids if i in {d.id for d in want}]
        assert spy.read() == {d.id for d in want}
    assert milvus.get_by_filter({"topic": "tea"}, ids=[]) == []
    with pytest.raises(TypeError):  # ids is keyword-only
        klstore.get_by_filter({}, ["n3"])  # type: ignore[misc]
    with pytest.raises(ValueError, match="needs a dict filter"):
        milvus.get_by_filter(lambda m: True)
    assert [d.id for d in klstore.get_by_filter(lambda m: m.get("year") == 2016)] == ["n1"]


def test_a_callable_filter_that_writes_is_refused_as_in_a_search() -> None:
    store = KLStore()
    store.add(gaussians=random_gaussians(2, K), ids=["a", "b"])

    def writes(meta: Any) -> bool:
        store.delete(["b"])
        return True

    with pytest.raises(RuntimeError, match="cannot modify it there"):
        store.get_by_filter(writes)
    assert store.ids == ["a", "b"]
