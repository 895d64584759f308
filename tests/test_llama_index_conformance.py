"""Vector-store conformance checks for ``KLVectorStore``.

Mirrors LangChain's standard vector-store tests (``langchain_tests`` ``VectorStoreIntegrationTests``:
empty store, add / upsert, idempotent re-add, deleting missing ids, get by ids, filters,
persistence round trip, inputs never mutated) in LlamaIndex terms, plus a regression check for
the id mix-up seen in llama-index's ``FaissMapVectorStore`` (delete then add mapping two nodes
to one id).  Embeddings come from synthetic Gaussians (no encoder), so the suite is fast.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from conftest import random_gaussians
from kl_retrievers import Gaussians, KLStore, kl_document_vectors, kl_query_vectors, neg_kl_matrix
from kl_retrievers.llama_index import KLVectorStore

K = 4


def make_nodes(n: int, *, seed: int = 0, prefix: str = "n", start: int = 0) -> tuple[list[TextNode], Gaussians]:
    """``n`` nodes with d~ embeddings of random Gaussians, metadata and a source document."""
    g = random_gaussians(n, K, seed=seed)
    vectors = kl_document_vectors(g)
    nodes = []
    for j in range(n):
        i = start + j
        node = TextNode(
            id_=f"{prefix}{i}",
            text=f"text of {prefix}{i}",
            embedding=[float(x) for x in vectors[j]],
            metadata={"i": i, "parity": "even" if i % 2 == 0 else "odd", "tags": [f"t{i % 3}"]},
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 4}")
        nodes.append(node)
    return nodes, g


def query_for(g: Gaussians, **kw: Any) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=[float(x) for x in kl_query_vectors(g)[0]], **kw)


def sims(res: VectorStoreQueryResult) -> list[float]:
    assert res.similarities is not None
    return list(res.similarities)


def all_ids(vs: KLVectorStore) -> list[str]:
    return sorted(n.node_id for n in vs.get_nodes())


def exact_scores(query: Gaussians, docs: Gaussians) -> np.ndarray:
    """Reference -KL against the float32 copies the store keeps."""
    return np.asarray(neg_kl_matrix(query.astype(np.float64), docs.astype(np.float32).astype(np.float64)))[0]


# --------------------------------------------------------------------------- emptiness
def test_store_is_empty() -> None:
    vs = KLVectorStore()
    assert vs.get_nodes() == []
    assert vs.get_nodes(node_ids=["x"]) == []
    res = vs.query(query_for(random_gaussians(1, K), similarity_top_k=3))
    assert res.ids == [] and res.similarities == [] and res.nodes == []


def test_each_store_starts_empty() -> None:  # "vectorstore still empty" after another test added nodes
    assert all_ids(KLVectorStore()) == []


# --------------------------------------------------------------------------------- add
def test_add_returns_ids_in_input_order_and_query_finds_them() -> None:
    nodes, g = make_nodes(6)
    vs = KLVectorStore()
    assert vs.add(nodes) == [n.node_id for n in nodes]
    res = vs.query(query_for(g[2], similarity_top_k=6))
    assert res.ids is not None and res.ids[0] == "n2" and sorted(res.ids) == sorted(n.node_id for n in nodes)
    exact = np.sort(exact_scores(g[2], g))[::-1]
    np.testing.assert_allclose([n.metadata["neg_kl"] for n in res.nodes or []], exact, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sims(res), np.exp(exact), rtol=1e-9)  # relevance exp(-KL) in (0, 1]
    assert vs.add([]) == []


def test_add_with_existing_ids_upserts() -> None:
    nodes, _ = make_nodes(3)
    vs = KLVectorStore()
    vs.add(nodes)
    new_nodes, g_new = make_nodes(1, seed=42, start=1)  # same id "n1", new content and vector
    new_nodes[0].text = "replacement"
    vs.add(new_nodes)
    assert all_ids(vs) == ["n0", "n1", "n2"]
    (got,) = vs.get_nodes(node_ids=["n1"])
    assert got.get_content() == "replacement"
    res = vs.query(query_for(g_new[0], similarity_top_k=1))
    assert res.ids == ["n1"] and res.similarities == [pytest.approx(1.0, abs=1e-5)]


def test_re_adding_the_same_nodes_is_idempotent() -> None:
    nodes, g = make_nodes(5)
    vs = KLVectorStore()
    vs.add(nodes)
    first = vs.query(query_for(g[0], similarity_top_k=5))
    vs.add(nodes)
    vs.add(copy.deepcopy(nodes))
    assert all_ids(vs) == sorted(n.node_id for n in nodes)
    again = vs.query(query_for(g[0], similarity_top_k=5))
    assert again.ids == first.ids
    np.testing.assert_allclose(sims(again), sims(first), rtol=1e-12)


def test_repeated_id_within_one_call_keeps_the_last() -> None:
    (a, b), _ = make_nodes(2)
    b = b.model_copy(update={"id_": a.node_id, "text": "second"})
    vs = KLVectorStore()
    assert vs.add([a, b]) == [a.node_id, a.node_id]
    assert [n.get_content() for n in vs.get_nodes()] == ["second"]


def test_inputs_are_never_mutated() -> None:
    nodes, g = make_nodes(4)
    before = [n.model_dump() for n in nodes]
    filters = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    query = query_for(g[0], similarity_top_k=2, filters=filters)
    query_before = copy.deepcopy(query)
    vs = KLVectorStore()
    vs.add(nodes)
    vs.query(query)
    vs.get_nodes(node_ids=[n.node_id for n in nodes])
    vs.delete_nodes(node_ids=["n1"])
    assert [n.model_dump() for n in nodes] == before
    assert query == query_before
    # Mutating returned nodes does not reach into the store either.
    got = vs.get_nodes(node_ids=["n0"])[0]
    got.metadata["i"] = 999
    assert vs.get_nodes(node_ids=["n0"])[0].metadata["i"] == 0


# ------------------------------------------------------------------------------ delete
def test_delete_by_ref_doc_id() -> None:
    nodes, _ = make_nodes(8)  # sources doc0..doc3, two nodes each
    vs = KLVectorStore()
    vs.add(nodes)
    vs.delete("doc1")
    assert all_ids(vs) == sorted(n.node_id for n in nodes if n.ref_doc_id != "doc1")
    vs.delete("doc-that-does-not-exist")  # missing content: no error, nothing removed
    assert len(all_ids(vs)) == 6


def test_delete_nodes_by_ids_filters_and_both() -> None:
    nodes, _ = make_nodes(8)
    vs = KLVectorStore()
    vs.add(nodes)
    vs.delete_nodes(node_ids=["n0", "n1", "missing"])
    assert all_ids(vs) == ["n2", "n3", "n4", "n5", "n6", "n7"]
    vs.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="i", value=6, operator=FilterOperator(">="))]))
    assert all_ids(vs) == ["n2", "n3", "n4", "n5"]
    even = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    vs.delete_nodes(node_ids=["n2", "n3"], filters=even)  # both: only n2 matches both
    assert all_ids(vs) == ["n3", "n4", "n5"]
    vs.delete_nodes(node_ids=["never-there"])
    assert all_ids(vs) == ["n3", "n4", "n5"]
    with pytest.raises(ValueError, match="clear"):
        vs.delete_nodes()


def test_clear_keeps_the_store_usable() -> None:
    nodes, g = make_nodes(5)
    vs = KLVectorStore()
    vs.add(nodes)
    vs.clear()
    assert all_ids(vs) == []
    vs.clear()  # clearing an empty store is fine
    vs.add(nodes[:2])
    assert all_ids(vs) == ["n0", "n1"]
    assert (vs.query(query_for(g[1], similarity_top_k=5)).ids or [])[0] == "n1"


def test_delete_then_add_never_maps_two_nodes_to_one_id() -> None:
    nodes, g = make_nodes(6)
    vs = KLVectorStore()
    vs.add(nodes)
    vs.delete_nodes(node_ids=["n1", "n3"])
    extra, g_extra = make_nodes(3, seed=7, prefix="x")
    vs.add(extra)
    vs.delete_nodes(node_ids=["n0"])
    vs.add([nodes[1]])  # re-add a deleted node
    expected_ids = ["n1", "n2", "n4", "n5", "x0", "x1", "x2"]
    assert all_ids(vs) == expected_ids
    # Every id still carries its own text and its own Gaussian: a query built from a node's
    # Gaussian finds that node first with -KL = 0, and no id appears twice.
    gaussians = {n.node_id: g[i] for i, n in enumerate(nodes)} | {n.node_id: g_extra[i] for i, n in enumerate(extra)}
    texts = {n.node_id: n.get_content() for n in [*nodes, *extra]}
    for node_id in expected_ids:
        res = vs.query(query_for(gaussians[node_id], similarity_top_k=len(expected_ids)))
        assert res.ids is not None and res.ids[0] == node_id and len(set(res.ids)) == len(res.ids)
        assert res.similarities is not None and res.similarities[0] == pytest.approx(1.0, abs=1e-5)
        assert all(n.get_content() == texts[n.node_id] for n in res.nodes or [])
    stored = vs.kl_store.get_gaussians(expected_ids)
    for j, node_id in enumerate(expected_ids):
        np.testing.assert_allclose(stored.mean[j], gaussians[node_id].mean[0], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- get
def test_get_nodes_by_ids_keeps_order_and_skips_missing() -> None:
    nodes, _ = make_nodes(5)
    vs = KLVectorStore()
    vs.add(nodes)
    got = vs.get_nodes(node_ids=["n3", "missing", "n0"])
    assert [n.node_id for n in got] == ["n3", "n0"]
    assert got[0].get_content() == "text of n3" and got[0].metadata["i"] == 3
    assert got[0].ref_doc_id == "doc3"
    assert vs.get_nodes(node_ids=["missing"]) == []
    odd = MetadataFilters(filters=[MetadataFilter(key="parity", value="odd")])
    assert [n.node_id for n in vs.get_nodes(node_ids=["n3", "n0", "n1"], filters=odd)] == ["n3", "n1"]


def test_get_nodes_returns_embeddings_that_round_trip() -> None:
    nodes, g = make_nodes(5)
    vs = KLVectorStore()
    vs.add(nodes)
    copy_store = KLVectorStore()
    copy_store.add(vs.get_nodes())
    a = vs.query(query_for(g[2], similarity_top_k=5))
    b = copy_store.query(query_for(g[2], similarity_top_k=5))
    assert a.ids == b.ids
    np.testing.assert_allclose(sims(a), sims(b), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ filters
def test_filtered_query_and_get_agree() -> None:
    nodes, g = make_nodes(12)
    vs = KLVectorStore()
    vs.add(nodes)
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="parity", value="even"),
            MetadataFilter(key="tags", value=["t0", "t1"], operator=FilterOperator("any")),
        ]
    )
    expected = sorted(n.node_id for n in nodes if n.metadata["i"] % 2 == 0 and n.metadata["i"] % 3 in (0, 1))
    assert sorted(n.node_id for n in vs.get_nodes(filters=filters)) == expected
    res = vs.query(query_for(g[5], similarity_top_k=12, filters=filters))
    assert sorted(res.ids or []) == expected
    assert res.similarities == sorted(res.similarities or [], reverse=True)


# ---------------------------------------------------------------------------- persistence
def test_persistence_round_trip(tmp_path: Path) -> None:
    nodes, g = make_nodes(7)
    nodes[0].excluded_llm_metadata_keys = ["tags"]
    vs = KLVectorStore(relevance="inverse")
    vs.add(nodes)
    path = tmp_path / "vs" / "default__vector_store.json"
    vs.persist(str(path))
    loaded = KLVectorStore.from_persist_path(str(path))
    assert loaded.relevance == "inverse"
    assert [n.model_dump() for n in loaded.get_nodes()] == [n.model_dump() for n in vs.get_nodes()]
    a = vs.query(query_for(g[3], similarity_top_k=7))
    b = loaded.query(query_for(g[3], similarity_top_k=7))
    assert a.ids == b.ids
    np.testing.assert_allclose(sims(a), sims(b), rtol=1e-12)
    assert loaded.get_nodes(node_ids=["n0"])[0].excluded_llm_metadata_keys == ["tags"]
    # The loaded store is writable, and persisting again overwrites in place.
    loaded.delete_nodes(node_ids=["n0"])
    loaded.add(make_nodes(1, seed=9, prefix="z")[0])
    loaded.persist(str(path))
    again = KLVectorStore.from_persist_dir(str(tmp_path / "vs"))
    assert all_ids(again) == ["n1", "n2", "n3", "n4", "n5", "n6", "z0"]
    # Only JSON, .npy and FAISS files: no pickle anywhere.
    suffixes = {p.suffix for p in (tmp_path / "vs").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".npy", ".faiss"}
    assert json.loads(path.read_text())["format"] == "kl-retrievers/llama-index-vector-store"


def test_persist_empty_store_and_load_a_plain_klstore(tmp_path: Path) -> None:
    KLVectorStore().persist(str(tmp_path / "empty.json"))
    assert all_ids(KLVectorStore.from_persist_path(str(tmp_path / "empty.json"))) == []
    # A KLStore built with the core API can be served through LlamaIndex as TextNodes.
    store = KLStore()
    g = random_gaussians(2, K, seed=1)
    store.add(["alpha", "beta"], gaussians=g, ids=["a", "b"], metadatas=[{"lang": "en"}, {"lang": "de"}])
    store.save(tmp_path / "core")
    vs = KLVectorStore.from_persist_path(str(tmp_path / "core"))
    res = vs.query(query_for(g[1], similarity_top_k=1))
    assert res.ids == ["b"] and (res.nodes or [])[0].get_content() == "beta"
    assert (res.nodes or [])[0].metadata["lang"] == "de"


def test_loading_garbage_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KLVectorStore.from_persist_path(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embedding_dict": {}}))
    with pytest.raises(ValueError, match="not a KLVectorStore manifest"):
        KLVectorStore.from_persist_path(str(bad))
    with pytest.raises(NotImplementedError, match="local filesystem"):

        class _S3:
            protocol = ("s3",)

        KLVectorStore().persist(str(tmp_path / "x.json"), fs=_S3())


# ---------------------------------------------------------------------------------- async
def test_async_variants() -> None:
    nodes, g = make_nodes(6)
    vs = KLVectorStore()

    async def run() -> None:
        assert await vs.async_add(nodes) == [n.node_id for n in nodes]
        res = await vs.aquery(query_for(g[0], similarity_top_k=2))
        assert res.ids is not None and res.ids[0] == "n0"
        assert [n.node_id for n in await vs.aget_nodes(node_ids=["n5"])] == ["n5"]
        await vs.adelete("doc0")  # n0, n4
        await vs.adelete_nodes(node_ids=["n1"])
        assert all_ids(vs) == ["n2", "n3", "n5"]
        await vs.aclear()
        assert all_ids(vs) == []

    asyncio.run(run())
