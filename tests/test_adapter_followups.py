"""Adapter follow-ups (LangChain, LlamaIndex, ``kl-retrievers search``); tiny random encoders, ``tmp_path`` only.

1. LlamaIndex ``KLHybridRetriever.from_defaults`` indexed a node's text without its metadata
   (``MetadataMode.NONE``), where ``KLRetriever.from_defaults`` and ``VectorStoreIndex`` embed its
   ``MetadataMode.EMBED`` content: a title kept in metadata was invisible to both hybrid halves;
2. a node rebuilt from a store preferred its stale node JSON to the stored metadata, which filters read
   (after a core-API upsert that copied the metadata and changed a key; both LlamaIndex stores);
3. ``check_inner_product_store`` did not read langchain-milvus' ``index_params`` / ``search_params``
   ``metric_type`` (default ``"L2"``): ``None`` and no warning for a store that ranks wrongly;
4. ``kl-retrievers search <folder>`` looked only for ``*vector_store.json`` manifests, where
   ``KLVectorStore.from_persist_path(folder)`` finds a manifest of any name by its content;
5. ``retriever.calibrator = cal`` after construction was ignored (the scorer was built once), and an
   assigned ``min_confidence`` was used unchecked (LangChain retrievers; LlamaIndex's hybrid retriever).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, block_modules, make_tiny_encoder, max_score_calibrator
from kl_retrievers import GaussianEncoder, KLStore
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.cli import _kl_store_folder
from kl_retrievers.gaussian import Gaussians

LLAMA_INDEX_FORMAT = "kl-retrievers/llama-index-vector-store"


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=5)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


# ------------------------------------------------------------------ 1. the hybrid indexes the EMBED content
def _titled_nodes() -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(
            id_="space",
            text="a star and the moon",
            metadata={"title": "Exoplanets", "secret": "zebra"},
            excluded_embed_metadata_keys=["secret"],
        ),
        TextNode(id_="sea", text="water on black rock", metadata={"title": "Tides"}),
        TextNode(id_="tea", text="green tea and bread", metadata={"title": "Breakfast"}),
    ]


def test_llama_index_hybrid_indexes_what_klretriever_and_vectorstoreindex_embed(encoder: GaussianEncoder) -> None:
    """Both halves read ``MetadataMode.EMBED`` content (the title; not a key excluded from embedding)."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from llama_index.core.schema import MetadataMode

    from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever, KLRetriever

    embed = KLEmbedding(encoder)
    nodes = _titled_nodes()
    hybrid = KLHybridRetriever.from_defaults(nodes=nodes, encoder=embed, similarity_top_k=3, fusion="rrf")
    dense = KLRetriever.from_defaults(nodes=_titled_nodes(), encoder=embed)
    ids = [n.node_id for n in nodes]
    stored = {d.id: d.text for d in hybrid.store.get_by_ids(ids)}
    assert stored == {n.node_id: n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes}
    space = str(stored["space"])
    assert space.startswith("title: Exoplanets") and "zebra" not in space
    # the dense half holds the Gaussians KLRetriever.from_defaults (VectorStoreIndex's text) holds
    got, want = hybrid.store.kl.get_gaussians(ids), dense.vector_store.kl_store.get_gaussians(ids)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-5, atol=1e-6)
    # BM25 sees the title; the node comes back with its own text and metadata
    top = hybrid.retrieve("exoplanets")[0]
    assert top.node.node_id == "space" and top.node.metadata["bm25"] > 0
    assert top.node.get_content() == "a star and the moon"
    assert top.node.metadata["title"] == "Exoplanets" and top.node.metadata["secret"] == "zebra"
    assert hybrid.retrieve("zebra")[0].node.metadata["bm25"] == 0  # the excluded key is not indexed


def test_llama_index_hybrid_nodes_keep_their_text_after_save_load_and_a_later_add(
    encoder: GaussianEncoder, tmp_path: Path
) -> None:
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from llama_index.core.schema import TextNode

    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever

    hybrid = KLHybridRetriever.from_defaults(nodes=_titled_nodes(), encoder=KLEmbedding(encoder), fusion="rrf")
    hybrid.store.save(tmp_path / "h")
    loaded = KLHybridStore.load(tmp_path / "h", encoder=encoder)
    loaded.add(["a train at sea"], ids=["train"])  # the BM25 half is tokenised again from the stored texts
    retriever = KLHybridRetriever(loaded, similarity_top_k=4, fusion="rrf")
    hits = {h.node.node_id: h for h in retriever.retrieve("exoplanets")}
    assert hits["space"].node.get_content() == "a star and the moon" and hits["space"].node.metadata["bm25"] > 0
    assert hits["train"].node.get_content() == "a train at sea"
    assert isinstance(hits["space"].node, TextNode)


def test_llama_index_hybrid_store_written_without_the_node_text_in_its_json_still_reads(
    encoder: GaussianEncoder,
) -> None:
    """A store filled before (node JSON without its text, document text = the node's): the stored text is the node's."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.llama_index import KLHybridRetriever

    nodes = _titled_nodes()
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(
        [n.get_content() for n in nodes],
        ids=[n.node_id for n in nodes],
        metadatas=[node_to_metadata_dict(n, remove_text=True) for n in nodes],
    )
    hits = KLHybridRetriever(store, similarity_top_k=3).retrieve("green tea")
    assert {h.node.node_id: h.node.get_content() for h in hits} == {n.node_id: n.text for n in nodes}


# ------------------------------------------------------------------ 2. returned nodes show the stored metadata
def _zoo_upsert(store: Any, text: str | None = None, **changes: Any) -> None:
    """A core-API upsert of n1 that copies its stored metadata (node JSON included) and changes keys."""
    doc = store.get_by_ids(["n1"])[0]
    meta = dict(doc.metadata)
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    store.add([doc.text if text is None else text], ids=["n1"], metadatas=[meta])  # add replaces an id


def _med_nodes() -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_="n1", text="the cat sat on the mat", metadata={"topic": "med", "n": 1}),
        TextNode(id_="n2", text="a dog in the sun", metadata={"topic": "geo"}),
    ]


def test_llama_index_hybrid_nodes_show_the_metadata_filters_see(encoder: GaussianEncoder) -> None:
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

    from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever

    retriever = KLHybridRetriever.from_defaults(nodes=_med_nodes(), encoder=KLEmbedding(encoder), similarity_top_k=2)
    _zoo_upsert(retriever.store, text="a train at sea", topic="zoo", n=None, added="x", ref_doc_id="src")
    zoo = MetadataFilters(filters=[MetadataFilter(key="topic", value="zoo")])
    (hit,) = KLHybridRetriever(retriever.store, similarity_top_k=2, filters=zoo).retrieve("train")
    node = hit.node
    assert node.node_id == "n1" and node.metadata["topic"] == "zoo"
    assert "n" not in node.metadata and node.metadata["added"] == "x"  # a removed key is gone, an added one there
    assert node.get_content() == "a train at sea"  # the new text given to the upsert
    assert node.ref_doc_id == "src"
    med = MetadataFilters(filters=[MetadataFilter(key="topic", value="med")])
    assert KLHybridRetriever(retriever.store, filters=med).retrieve("train") == []


def test_llama_index_hybrid_metadata_only_upsert_keeps_the_node_text(encoder: GaussianEncoder) -> None:
    """The upsert copied the stored (indexed) text: the node keeps its own text, with the new metadata."""
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever

    retriever = KLHybridRetriever.from_defaults(nodes=_med_nodes(), encoder=KLEmbedding(encoder), similarity_top_k=2)
    _zoo_upsert(retriever.store, topic="zoo")
    node = next(h.node for h in retriever.retrieve("cat") if h.node.node_id == "n1")
    assert node.metadata["topic"] == "zoo" and node.metadata["n"] == 1
    assert node.get_content() == "the cat sat on the mat"


def test_llama_index_vector_store_nodes_show_the_metadata_filters_see(encoder: GaussianEncoder) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

    from kl_retrievers.llama_index import KLEmbedding, KLVectorStore

    embed = KLEmbedding(encoder)
    vs = KLVectorStore(encoder=encoder)
    index = VectorStoreIndex(
        nodes=_med_nodes(), embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=vs)
    )
    _zoo_upsert(vs.kl_store, text="a train at sea", topic="zoo")
    zoo = MetadataFilters(filters=[MetadataFilter(key="topic", value="zoo")])
    (hit,) = index.as_retriever(similarity_top_k=2, filters=zoo).retrieve("train")
    assert hit.node.node_id == "n1" and hit.node.metadata["topic"] == "zoo"
    assert hit.node.get_content() == "a train at sea"
    assert vs.get_nodes(["n1"])[0].metadata["topic"] == "zoo"


# ------------------------------------------------------------------ 3. langchain-milvus' metric_type
class _MilvusLike:
    """A store configured as langchain-milvus' ``Milvus`` is (its attributes only)."""

    def __init__(self, index_params: Any = None, search_params: Any = None) -> None:
        self.index_params = index_params
        self.search_params = search_params


@pytest.mark.parametrize(
    ("index_params", "search_params", "verdict"),
    [
        ({"metric_type": "L2", "index_type": "AUTOINDEX", "params": {}}, {"metric_type": "L2", "params": {}}, False),
        ({"metric_type": "COSINE", "index_type": "FLAT", "params": {}}, None, False),
        ({}, {"metric_type": "L2", "params": {}}, False),  # a reopened collection: only the search's metric
        ([{"metric_type": "L2", "index_type": "HNSW"}], None, False),  # one dict per vector field
        ({"metric_type": "IP", "index_type": "FLAT", "params": {}}, {"metric_type": "IP", "params": {}}, True),
        (None, None, None),  # a new collection (its default index comes with the first add): cannot tell
    ],
)
def test_check_inner_product_store_reads_the_milvus_metric_type(
    index_params: Any, search_params: Any, verdict: bool | None
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import check_inner_product_store

    store = _MilvusLike(index_params, search_params)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert check_inner_product_store(store) is verdict
    messages = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    if verdict is False:
        assert len(messages) == 1 and "metric_type" in messages[0] and "wrong rankings" in messages[0]
    else:
        assert messages == []


def test_klembeddings_warns_inside_a_milvus_like_store_ranking_by_l2(encoder: GaussianEncoder) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import VectorStore

    from kl_retrievers.langchain import KLEmbeddings

    class Milvus(VectorStore):
        def __init__(self, embedding: KLEmbeddings) -> None:
            self.embedding = embedding
            self.index_params = {"metric_type": "L2", "index_type": "AUTOINDEX", "params": {}}
            self.search_params = {"metric_type": "L2", "params": {}}

        def add_texts(self, texts: Any, metadatas: Any = None, **kwargs: Any) -> list[str]:
            self.embedding.embed_documents(list(texts))
            return []

        def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
            self.embedding.embed_query(query)
            return []

        @classmethod
        def from_texts(cls, texts: Any, embedding: Any, metadatas: Any = None, **kwargs: Any) -> Milvus:
            return cls(embedding)

    with pytest.warns(UserWarning, match=r"Milvus \(index_params\['metric_type'\]='L2'\)"):
        Milvus(KLEmbeddings(encoder)).similarity_search("the cat")


def test_the_milvus_attributes_are_langchain_milvus_own() -> None:
    milvus = pytest.importorskip("langchain_milvus")
    import inspect

    params = inspect.signature(milvus.Milvus.__init__).parameters
    assert "index_params" in params and "search_params" in params


# ------------------------------------------------------------------ 4. search finds a manifest of any name
def _kl_save(folder: Path) -> Path:
    store = KLStore()
    store.add(gaussians=Gaussians(np.zeros((1, 4)), np.ones((1, 4))), ids=["a"])
    return Path(store.save(folder))


def _manifest(path: Path, inner: Path) -> None:
    path.write_text(json.dumps({"format": LLAMA_INDEX_FORMAT, "format_version": 1, "store": inner.name}))


def test_search_finds_a_custom_named_llama_index_manifest_in_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``persist("storage/my_index.json")``: the folder is searched, as ``from_persist_path(folder)`` loads it."""
    folder = tmp_path / "storage"
    inner = _kl_save(folder / "my_index.klstore")
    _manifest(folder / "my_index.json", inner)
    (folder / "image__vector_store.json").write_text(json.dumps({"embedding_dict": {}}))  # another store's file
    (folder / "notes.json").write_text("not json")
    block_modules(monkeypatch, "llama_index", "llama_index.core")  # the search needs no LlamaIndex
    with caplog.at_level(logging.INFO, logger="kl_retrievers.cli"):
        assert _kl_store_folder(folder) == inner
    assert any("from_persist_path" in r.getMessage() for r in caplog.records)


def test_search_and_from_persist_path_find_the_same_manifests(tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLVectorStore

    one = tmp_path / "one"
    inner = _kl_save(one / "idx.klstore")
    _manifest(one / "idx", inner)  # no suffix at all
    assert _kl_store_folder(one) == inner
    assert KLVectorStore.from_persist_path(one).kl_store.ids == ["a"]

    two = tmp_path / "two"
    _manifest(two / "a.json", _kl_save(two / "a.klstore"))
    _manifest(two / "default__vector_store.json", _kl_save(two / "default__vector_store.klstore"))
    with pytest.raises(ValueError, match="2 KL stores"):
        _kl_store_folder(two)
    with pytest.raises(ValueError, match="2 KLVectorStore manifests"):
        KLVectorStore.from_persist_path(two)


# ------------------------------------------------------------------ 5. an assigned calibrator / min_confidence
def _langchain_store(encoder: GaussianEncoder) -> Any:
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    return KLVectorStore.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), ids=[f"d{i}" for i in range(6)])


def test_langchain_retriever_uses_a_calibrator_assigned_after_construction(
    encoder: GaussianEncoder, calibrator: ConfidenceCalibrator, tmp_path: Path
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLRetriever

    store = _langchain_store(encoder)
    query = HYBRID_TEXTS[0]
    want = KLRetriever.from_store(store, k=2, calibrator=calibrator).invoke(query)[0].metadata[CONFIDENCE_KEY]
    assert want is not None
    retriever = KLRetriever.from_store(store, k=2)
    assert retriever.invoke(query)[0].metadata[CONFIDENCE_KEY] is None  # the tiny model ships no calibrator
    retriever.calibrator = calibrator
    assert retriever.invoke(query)[0].metadata[CONFIDENCE_KEY] == want
    calibrator.save(tmp_path / "cal.json")
    retriever.calibrator = str(tmp_path / "cal.json")  # a path, as the constructor takes
    assert retriever.invoke(query)[0].metadata[CONFIDENCE_KEY] == pytest.approx(want)
    retriever.calibrator = None
    assert retriever.invoke(query)[0].metadata[CONFIDENCE_KEY] is None
    copied = retriever.model_copy(update={"calibrator": calibrator})
    assert copied.invoke(query)[0].metadata[CONFIDENCE_KEY] == want
    retriever.calibrator = 42
    with pytest.raises(TypeError, match="calibrator must be a ConfidenceCalibrator"):
        retriever.invoke(query)


def test_langchain_retriever_checks_an_assigned_min_confidence(
    encoder: GaussianEncoder, calibrator: ConfidenceCalibrator
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLRetriever

    retriever = KLRetriever.from_store(_langchain_store(encoder), k=2, calibrator=calibrator)
    retriever.min_confidence = 2.0  # unchecked, it abstained on every query
    with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\].*got 2\.0"):
        retriever.invoke(HYBRID_TEXTS[0])
    retriever.min_confidence = None
    retriever.search_kwargs = {"min_confidence": -1}
    with pytest.raises(ValueError, match=r"got -1"):
        retriever.invoke(HYBRID_TEXTS[0])


def test_langchain_hybrid_retriever_uses_a_calibrator_assigned_after_construction(
    encoder: GaussianEncoder, calibrator: ConfidenceCalibrator
) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLHybridRetriever

    store = KLHybridStore(encoder, fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(6)])
    want = KLHybridRetriever(store=store, k=2, calibrator=calibrator).invoke("black rock")[0].metadata[CONFIDENCE_KEY]
    retriever = KLHybridRetriever(store=store, k=2)
    retriever.calibrator = calibrator
    assert want is not None and retriever.invoke("black rock")[0].metadata[CONFIDENCE_KEY] == want


def test_llama_index_hybrid_retriever_calibrator_is_settable(
    encoder: GaussianEncoder, calibrator: ConfidenceCalibrator
) -> None:
    pytest.importorskip("llama_index.core")
    pytest.importorskip("bm25s")
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import CONFIDENCE_KEY, KLEmbedding, KLHybridRetriever

    nodes = [TextNode(id_=f"d{i}", text=t) for i, t in enumerate(HYBRID_TEXTS)]
    retriever = KLHybridRetriever.from_defaults(nodes=nodes, encoder=KLEmbedding(encoder), similarity_top_k=2)
    want = KLHybridRetriever(retriever.store, calibrator=calibrator).retrieve("black rock")[0].node.metadata
    assert want[CONFIDENCE_KEY] is not None
    assert retriever.calibrator is None
    assert retriever.retrieve("black rock")[0].node.metadata[CONFIDENCE_KEY] is None
    retriever.calibrator = calibrator
    assert retriever.calibrator is calibrator
    assert retriever.retrieve("black rock")[0].node.metadata[CONFIDENCE_KEY] == want[CONFIDENCE_KEY]
    with pytest.raises(TypeError, match="calibrator must be a ConfidenceCalibrator"):
        retriever.calibrator = 42
    assert retriever.calibrator is calibrator  # a refused value changes nothing
