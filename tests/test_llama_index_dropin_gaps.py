"""LlamaIndex drop-in gaps found by a stop-41 audit of :mod:`kl_retrievers.llama_index` against
``SimpleVectorStore`` / ``FaissVectorStore`` / ``VectorIndexRetriever`` code (tiny random encoder, ``tmp_path`` only):

1. a generic ``Node`` hit's ``hash`` changed with the per-query scores, so ``QueryFusionRetriever``
   counted one node once per query;
2. ``KLRetriever`` / ``KLHybridRetriever`` returned an ``IndexNode`` hit as it is where
   ``index.as_retriever()`` follows it to its object (LlamaIndex's recursive retrieval);
3. ``KLVectorStore.from_persist_dir(persist_dir, fs)`` (``FaissVectorStore``'s argument order) read the
   filesystem as the namespace;
4. a query of another model's dimension gave no hits, instead of an error, when ``node_ids`` named no
   stored node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.schema import IndexNode, MediaResource, Node, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, kl_query_vectors
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever, KLRetriever, KLVectorStore

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

INNER_ID = "from-the-inner-retriever"


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=3)


@pytest.fixture(scope="module")
def embed(encoder: GaussianEncoder) -> KLEmbedding:
    return KLEmbedding(encoder, embed_batch_size=4)


def _index(nodes: list[Any], embed: KLEmbedding, **kwargs: Any) -> tuple[KLVectorStore, VectorStoreIndex]:
    vs = KLVectorStore()
    storage = StorageContext.from_defaults(vector_store=vs)
    return vs, VectorStoreIndex(nodes, embed_model=embed, storage_context=storage, **kwargs)


def _ids(hits: list[NodeWithScore]) -> list[str]:
    return [h.node.node_id for h in hits]


# ------------------------------------------------------------------------ 1. generic Node hash
def test_a_generic_node_hit_keeps_its_hash_across_queries(embed: KLEmbedding) -> None:
    node = Node(id_="g", text_resource=MediaResource(text="the cat sat on the mat"), metadata={"a": 1})  # type: ignore[call-arg]
    text = TextNode(id_="t", text="a dog is in the water", metadata={"a": 2})
    _, index = _index([node, text], embed)
    retriever = index.as_retriever(similarity_top_k=2)
    cat, dog = retriever.retrieve("the cat"), retriever.retrieve("dog water")
    by_id = {h.node.node_id: h.node for h in cat}
    assert isinstance(by_id["g"], Node) and by_id["g"].class_name() == "Node"
    assert by_id["g"].metadata["neg_kl"] != {h.node.node_id: h.node for h in dog}["g"].metadata["neg_kl"]
    assert by_id["g"].hash == node.hash  # the node's own hash, without the per-query scores
    fused = QueryFusionRetriever([retriever], num_queries=1, use_async=False)._reciprocal_rerank_fusion(
        {("the cat", 0): cat, ("dog water", 0): dog}
    )
    assert sorted(_ids(fused)) == ["g", "t"]  # one hit per node, not one per query


# ------------------------------------------------------------------ 2. IndexNode recursive retrieval
class _Inner(BaseRetriever):
    """A retriever behind an IndexNode: always one node."""

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(id_=INNER_ID, text="inner"), score=1.0)]


def test_kl_retriever_follows_index_nodes_to_their_objects_as_as_retriever_does(embed: KLEmbedding) -> None:
    link = IndexNode(id_="link", text="the cat sat on the mat", index_id="sub", obj=_Inner())
    _, index = _index([TextNode(id_="t", text="a dog is in the water")], embed, objects=[link])
    expected = sorted(_ids(index.as_retriever(similarity_top_k=2).retrieve("cat")))
    assert expected == sorted(["t", INNER_ID])
    retriever = KLRetriever.from_defaults(index=index, similarity_top_k=2)
    assert sorted(_ids(retriever.retrieve("cat"))) == expected
    assert sorted(_ids(asyncio.run(retriever.aretrieve("cat")))) == expected


def test_kl_retriever_from_nodes_and_an_explicit_object_map(encoder: GaussianEncoder) -> None:
    link = IndexNode(id_="link", text="the cat sat on the mat", index_id="sub", obj=_Inner())
    nodes = [link, TextNode(id_="t", text="a dog is in the water")]
    from_nodes = KLRetriever.from_defaults(nodes=nodes, encoder=encoder, similarity_top_k=2)
    assert sorted(_ids(from_nodes.retrieve("cat"))) == sorted(["t", INNER_ID])
    plain = IndexNode(id_="link", text="the cat sat on the mat", index_id="sub")  # no object on the node
    store = from_nodes.vector_store
    store.add([plain])
    assert "link" in _ids(KLRetriever(store, encoder=encoder, similarity_top_k=2).retrieve("cat"))
    mapped = KLRetriever(store, encoder=encoder, similarity_top_k=2, object_map={"sub": _Inner()})
    assert sorted(_ids(mapped.retrieve("cat"))) == sorted(["t", INNER_ID])


def test_hybrid_retriever_follows_index_nodes_to_their_objects(encoder: GaussianEncoder) -> None:
    pytest.importorskip("bm25s")
    link = IndexNode(id_="link", text="the cat sat on the mat", index_id="sub", obj=_Inner())
    nodes = [link, TextNode(id_="t", text="a dog is in the water"), TextNode(id_="u", text="green tea")]
    hybrid = KLHybridRetriever.from_defaults(nodes=nodes, encoder=encoder, similarity_top_k=3)
    assert sorted(_ids(hybrid.retrieve("cat"))) == sorted(["t", "u", INNER_ID])
    again = KLHybridRetriever(hybrid.store, similarity_top_k=3)  # no object map: the IndexNode comes back
    assert "link" in _ids(again.retrieve("cat"))


# ------------------------------------------------------------------- 3. from_persist_dir(dir, fs)
def test_from_persist_dir_takes_a_filesystem_in_faiss_argument_order(tmp_path: Path, embed: KLEmbedding) -> None:
    _, index = _index([TextNode(id_="t", text="a dog is in the water")], embed)
    index.storage_context.persist(persist_dir=str(tmp_path))
    loaded = KLVectorStore.from_persist_dir(str(tmp_path), fsspec.filesystem("file"))  # FaissVectorStore's order
    assert [n.node_id for n in loaded.get_nodes()] == ["t"]
    with pytest.raises(TypeError, match="namespace must be a string.*got int"):
        KLVectorStore.from_persist_dir(str(tmp_path), 3)  # type: ignore[arg-type]


# ----------------------------------------------------------- 4. a query of another dimension
def test_a_query_of_another_dimension_fails_even_with_no_candidate(embed: KLEmbedding) -> None:
    vs, _ = _index([TextNode(id_="t", text="a dog is in the water")], embed)
    other = [float(x) for x in kl_query_vectors(Gaussians(np.zeros((1, 2)), np.ones((1, 2))))[0]]
    for node_ids in (["not-stored"], ["t"]):  # no stored node named: no hits before, not an error
        for mode in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            query = VectorStoreQuery(query_embedding=other, similarity_top_k=1, node_ids=node_ids, mode=mode)
            with pytest.raises(ValueError, match="dimension k=2 .*this store has k=8"):
                vs.query(query)


def test_adding_an_index_node_whose_object_cannot_be_stored_says_what_to_do(embed: KLEmbedding) -> None:
    link = IndexNode(id_="link", text="the cat", index_id="sub", obj=_Inner(), embedding=embed.get_text_embedding("x"))
    with pytest.raises(ValueError, match="IndexNode 'link' carries an object \\(_Inner\\) that cannot be stored"):
        KLVectorStore().add([link])
    assert isinstance(link.obj, _Inner)  # from_defaults stores a copy without it: the caller's node keeps it
    KLRetriever.from_defaults(nodes=[link], encoder=embed)
    assert isinstance(link.obj, _Inner)


def test_a_store_loaded_without_an_encoder_encodes_query_strings_with_its_saved_model(tmp_path: Path) -> None:
    """is_embedding_query=False survives load_index_from_storage: the saved model encodes the query string."""
    from llama_index.core import load_index_from_storage
    from llama_index.core.embeddings import MockEmbedding

    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    vs = KLVectorStore(encoder=encoder, is_embedding_query=False)
    nodes = [TextNode(id_="a", text="the cat sat"), TextNode(id_="b", text="bread and tea")]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=KLEmbedding(encoder=encoder)
    )
    want = [(n.node.node_id, n.score) for n in index.as_retriever(similarity_top_k=2).retrieve("tea")]
    index.storage_context.persist(str(tmp_path / "storage"))

    loaded = KLVectorStore.from_persist_dir(tmp_path / "storage")
    assert loaded.encoder is None and loaded.is_embedding_query is False
    got = loaded.query(VectorStoreQuery(query_str="tea", similarity_top_k=2))
    assert got.ids == [i for i, _ in want]
    assert loaded.encoder is not None  # loaded once, kept

    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "storage"))
    again = load_index_from_storage(storage, embed_model=MockEmbedding(embed_dim=4))  # never asked for a query
    hits = again.as_retriever(similarity_top_k=2).retrieve("tea")
    assert [n.node.node_id for n in hits] == [i for i, _ in want]
    np.testing.assert_allclose([n.score for n in hits], [score for _, score in want], rtol=1e-6)


def test_a_saved_model_that_cannot_be_loaded_is_named(tmp_path: Path) -> None:
    from llama_index.core.vector_stores import VectorStoreQuery

    from kl_retrievers import GaussianEncoder

    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    vs = KLVectorStore(encoder=GaussianEncoder.from_pretrained(tmp_path / "enc"), is_embedding_query=False)
    vs.add([TextNode(id_="a", text="the cat sat")])
    vs.persist(str(tmp_path / "vs.json"))
    (tmp_path / "enc").rename(tmp_path / "moved")
    loaded = KLVectorStore.from_persist_path(tmp_path / "vs.json")
    with pytest.raises(ValueError, match="loading the model it was saved with, .*enc'?, failed"):
        loaded.query(VectorStoreQuery(query_str="cat", similarity_top_k=1))


def _saved_store(tmp_path: Path) -> tuple[Any, Path]:
    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    vs = KLVectorStore(encoder=encoder, is_embedding_query=False)
    vs.add([TextNode(id_="a", text="the cat sat"), TextNode(id_="b", text="bread and tea")])
    vs.persist(str(tmp_path / "vs.json"))
    return encoder, tmp_path / "vs.json"


def test_retrievers_over_a_loaded_store_use_the_model_it_was_saved_with(tmp_path: Path) -> None:
    encoder, path = _saved_store(tmp_path)
    want = [n.node.node_id for n in KLRetriever(KLVectorStore.from_persist_path(path, encoder=encoder)).retrieve("tea")]
    by_defaults = KLRetriever.from_defaults(vector_store=KLVectorStore.from_persist_path(path))
    assert by_defaults._encoder is not None
    assert str(by_defaults._encoder.name_or_path) == str(encoder.name_or_path)  # not the default model
    assert [n.node.node_id for n in by_defaults.retrieve("tea")] == want
    direct = KLRetriever(KLVectorStore.from_persist_path(path))
    assert [n.node.node_id for n in direct.retrieve("tea")] == want


def test_a_loaded_store_encodes_added_text_nodes_with_its_saved_model(tmp_path: Path) -> None:
    encoder, path = _saved_store(tmp_path)
    loaded = KLVectorStore.from_persist_path(path)
    assert loaded.add([TextNode(id_="c", text="the moon")]) == ["c"]
    want = encoder.encode_documents(["the moon"])
    np.testing.assert_allclose(loaded.kl_store.get_gaussians(["c"]).mean, want.mean, rtol=1e-5, atol=1e-6)


def test_a_failed_load_of_the_saved_model_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained

    _, path = _saved_store(tmp_path)
    loaded = KLVectorStore.from_persist_path(path)
    calls: list[str] = []

    def failing(name: str, **kwargs: Any) -> Any:
        calls.append(name)
        raise OSError("no such model")

    monkeypatch.setattr(pretrained, "load_model", failing)
    for _ in range(3):
        with pytest.raises(ValueError, match="loading the model it was saved with, .*failed .no such model"):
            loaded.query(VectorStoreQuery(query_str="tea", similarity_top_k=1))
    assert len(calls) == 1
