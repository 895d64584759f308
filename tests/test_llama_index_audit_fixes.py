"""LlamaIndex regressions from an audit: IndexNode / ImageNode restrictions, pickling, reserved keys, MMR, abstention.

Each test reproduces one audited bug of :mod:`kl_retrievers.llama_index` (tiny random encoder, no
download, ``tmp_path`` only):

1. an ``IndexNode`` / ``ImageNode`` in a ``VectorStoreIndex`` made ``as_retriever()`` search those nodes only;
2. pickling a ``KLEmbedding`` (what ``IngestionPipeline(num_workers=...)`` does) or ``from_dict(to_dict())``
   loaded the default model, and pickling a ``KLVectorStore`` gave an empty store;
3. a node's own metadata key named like a score key was overwritten without a word;
4. MMR ignored ``mmr_prefetch_k`` when the calibrator reads more than two scores;
5. ``KLConfidencePostprocessor`` kept a query's single candidate at any ``min_confidence``;
6. a core-API document's ``ref_doc_id`` stayed in metadata instead of becoming the source document.
"""

from __future__ import annotations

import copy
import logging
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, IndexNode, MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from conftest import make_tiny_encoder, max_score_calibrator, random_gaussians
from kl_retrievers import GaussianEncoder, KLStore, kl_document_vectors, kl_query_vectors, load_model
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.llama_index import (
    CONFIDENCE_KEY,
    KLConfidencePostprocessor,
    KLEmbedding,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py

TEXTS = [
    "the cat sat on the mat",
    "a dog is in the water",
    "hello world from the sun",
    "green tea and black bread",
    "the moon and the star rise",
    "a long train by the sea",
]
REASON_KEY = "confidence_reason"
LOGGER = "kl_retrievers.llama_index"


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=2)


@pytest.fixture(scope="module")
def embed(encoder: GaussianEncoder) -> KLEmbedding:
    return KLEmbedding(encoder, embed_batch_size=4)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


def _text_nodes() -> list[TextNode]:
    return [TextNode(id_=f"t{i}", text=t) for i, t in enumerate(TEXTS)]


def _index(nodes: list[Any], embed: KLEmbedding, **store: Any) -> tuple[KLVectorStore, VectorStoreIndex]:
    vs = KLVectorStore(**store)
    index = VectorStoreIndex(nodes, embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=vs))
    return vs, index


def _ids(hits: list[NodeWithScore]) -> list[str]:
    return [h.node.node_id for h in hits]


# ------------------------------------------------------------- 1. IndexNode / ImageNode restrict as_retriever
@pytest.mark.parametrize(
    "other",
    [
        IndexNode(id_="other", text=TEXTS[0], index_id="summary"),
        ImageNode(id_="other", text=TEXTS[0], image_url="http://example.invalid/cat.png"),
    ],
    ids=["IndexNode", "ImageNode"],
)
def test_as_retriever_finds_text_nodes_beside_index_and_image_nodes(embed: KLEmbedding, other: TextNode) -> None:
    _, index = _index([*_text_nodes(), other], embed)
    assert list(index.index_struct.nodes_dict) == ["other"]  # what as_retriever passes as node_ids
    hits = index.as_retriever(similarity_top_k=4).retrieve(TEXTS[0])
    expected = KLRetriever.from_defaults(index=index, similarity_top_k=4).retrieve(TEXTS[0])
    assert _ids(hits) == _ids(expected)
    assert len(hits) == 4 and {"t0", "other"} <= set(_ids(hits))
    # the query engine sees them too
    sources = index.as_query_engine(llm=MockLLM(), similarity_top_k=4).query(TEXTS[0]).source_nodes
    assert _ids(sources) == _ids(expected)


def test_non_text_hits_come_from_the_docstore_and_kl_retriever_keeps_their_scores(embed: KLEmbedding) -> None:
    _, index = _index([*_text_nodes(), IndexNode(id_="ix", text=TEXTS[0], index_id="sub")], embed)
    hits = {h.node.node_id: h for h in index.as_retriever(similarity_top_k=3).retrieve(TEXTS[0])}
    assert "neg_kl" not in hits["ix"].node.metadata  # LlamaIndex's docstore copy (documented)
    assert "neg_kl" in hits["t0"].node.metadata
    kl_hits = {h.node.node_id: h for h in KLRetriever.from_defaults(index=index, similarity_top_k=3).retrieve(TEXTS[0])}
    assert isinstance(kl_hits["ix"].node, IndexNode) and "neg_kl" in kl_hits["ix"].node.metadata


def test_other_node_id_lists_still_restrict(embed: KLEmbedding) -> None:
    vs, index = _index([*_text_nodes(), IndexNode(id_="ix", text=TEXTS[0], index_id="sub")], embed)
    query = embed.get_query_embedding(TEXTS[0])

    def ids(node_ids: list[str]) -> list[str]:
        return vs.query(VectorStoreQuery(query_embedding=query, similarity_top_k=10, node_ids=node_ids)).ids or []

    assert sorted(ids(["t1", "t2"])) == ["t1", "t2"]
    assert sorted(ids(["ix", "t3"])) == ["ix", "t3"]  # a text node listed too: a restriction
    assert ids(["missing"]) == []
    assert len(ids(["ix"])) == 7  # exactly the stored IndexNode / ImageNode nodes: what as_retriever passes
    assert len(ids(["ix", "deleted-since"])) == 7  # LlamaIndex keeps the ids of deleted index nodes
    assert sorted(_ids(VectorIndexRetriever(index, node_ids=["t4", "t5"], similarity_top_k=5).retrieve("x"))) == [
        "t4",
        "t5",
    ]
    # KLRetriever's explicit node_ids always restrict
    assert _ids(KLRetriever.from_defaults(index=index, node_ids=["ix"], similarity_top_k=5).retrieve("x")) == ["ix"]


def test_the_non_text_ids_are_scanned_again_after_a_write(embed: KLEmbedding) -> None:
    vs, index = _index([*_text_nodes(), IndexNode(id_="ix", text=TEXTS[0], index_id="sub")], embed)
    assert len(index.as_retriever(similarity_top_k=10).retrieve("x")) == 7
    index.insert_nodes([IndexNode(id_="ix2", text=TEXTS[1], index_id="sub2")])
    assert sorted(index.index_struct.nodes_dict) == ["ix", "ix2"]
    assert len(index.as_retriever(similarity_top_k=10).retrieve("x")) == 8
    vs.delete_nodes(node_ids=["ix"])  # the index struct keeps "ix"
    assert len(index.as_retriever(similarity_top_k=10).retrieve("x")) == 7


# ------------------------------------------------------------------------------------------ 2. pickling
def _same_vectors(a: KLEmbedding, b: KLEmbedding) -> bool:
    x, y = a.get_query_embedding("cat on a mat"), b.get_query_embedding("cat on a mat")
    return len(x) == len(y) and bool(np.allclose(x, y))


def test_pickling_keeps_an_in_memory_encoder(embed: KLEmbedding) -> None:
    back = pickle.loads(pickle.dumps(embed))
    assert _same_vectors(back, embed)
    assert isinstance(back.encoder, GaussianEncoder) and back.encoder is not embed.encoder
    assert back.model_name == "tiny-random" and back.embed_batch_size == 4 and back.backend == "torch"


@pytest.fixture(scope="module")
def saved_model(encoder: GaussianEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    encoder.save_pretrained(folder)
    return folder


def test_pickling_and_from_dict_load_a_loadable_model_by_name(saved_model: Path) -> None:
    embed = KLEmbedding(load_model(str(saved_model), backend="torch"), embed_batch_size=3)
    assert embed.model_name == str(saved_model.resolve())
    for back in (pickle.loads(pickle.dumps(embed)), KLEmbedding.from_dict(embed.to_dict())):
        assert _same_vectors(back, embed)
        assert back.encoder.name_or_path == embed.model_name and back.encoder is not embed.encoder
        assert back.model_name == embed.model_name and back.backend == "torch" and back.embed_batch_size == 3
    state = embed.__getstate__()
    # a torch encoder pickles itself (it may have changed since it was loaded); from_dict loads the name
    assert "_encoder" not in state["__pydantic_private__"] and "kl_retrievers_encoder" in state


def test_from_dict_of_a_model_that_cannot_be_loaded_names_it(embed: KLEmbedding) -> None:
    data = embed.to_dict()
    with pytest.raises(ValueError, match="cannot load the model 'tiny-random'"):
        KLEmbedding.from_dict(data)
    with pytest.raises(ValueError, match="'relative/folder'"):
        KLEmbedding(model_name="relative/folder")
    assert _same_vectors(KLEmbedding.from_dict(data, encoder=embed.encoder), embed)
    assert data["model_name"] == "tiny-random" and data["backend"] == "torch"


class _LockedEncoder:
    """An encoder that does not pickle (it holds a lock), known by a name load_model cannot load."""

    name_or_path = "in-memory-model"

    def __init__(self, inner: GaussianEncoder) -> None:
        self.inner = inner
        self.lock = threading.Lock()

    def encode_queries(self, texts: list[str], **kwargs: Any) -> Gaussians:
        return self.inner.encode_queries(texts, **kwargs)

    def encode_documents(self, texts: list[str], **kwargs: Any) -> Gaussians:
        return self.inner.encode_documents(texts, **kwargs)


def test_pickling_an_encoder_that_neither_pickles_nor_loads_by_name_fails_naming_it(encoder: GaussianEncoder) -> None:
    embed = KLEmbedding(_LockedEncoder(encoder))
    with pytest.raises(TypeError, match="cannot pickle this KLEmbedding.*'in-memory-model'"):
        pickle.dumps(embed)
    assert embed.backend is None


def test_a_model_name_that_only_labels_another_encoder_is_not_loaded(encoder: GaussianEncoder) -> None:
    embed = KLEmbedding(encoder, model_name="minilm-gauss-soup")  # a label: the encoder is the tiny one
    back = pickle.loads(pickle.dumps(embed))
    assert back.model_name == "minilm-gauss-soup" and _same_vectors(back, embed)


def test_vector_store_refuses_pickle_and_deepcopy(embed: KLEmbedding) -> None:
    vs, index = _index(_text_nodes(), embed)
    with pytest.raises(TypeError, match=r"persist\(") as pickled:
        pickle.dumps(vs)
    assert "from_persist_dir" in str(pickled.value)
    with pytest.raises(TypeError, match="cannot be pickled or deep-copied"):
        copy.deepcopy(vs)
    # returned nodes still pickle and deep-copy
    hits = index.as_retriever(similarity_top_k=2).retrieve(TEXTS[0])
    for back in (pickle.loads(pickle.dumps(hits)), copy.deepcopy(hits)):
        assert _ids(back) == _ids(hits) and back[0].node.metadata == hits[0].node.metadata
        assert back[0].node.hash == hits[0].node.hash


# ------------------------------------------------------------------------------------ 3. reserved keys
def test_reserved_metadata_keys_are_warned_about_once_per_store(
    embed: KLEmbedding, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = [
        TextNode(id_=f"p{i}", text=t, metadata={"confidence": "high (OCR)", "page": i}) for i, t in enumerate(TEXTS)
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vs, index = _index(nodes, embed, calibrator=calibrator)
        index.insert_nodes([TextNode(id_="q", text="more", metadata={"neg_kl": 1, "fusion": "x"})])
    warned = [r.getMessage() for r in caplog.records if "reserved" in r.getMessage().lower()]
    assert len(warned) == 1, warned
    assert "'confidence'" in warned[0] and "stored metadata" in warned[0] and "bm25_rank" in warned[0]
    hit = index.as_retriever(similarity_top_k=1).retrieve(TEXTS[0])[0]
    assert isinstance(hit.node.metadata["confidence"], float)  # the score, as documented
    assert vs.get_nodes([hit.node.node_id])[0].metadata["confidence"] == "high (OCR)"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _index([TextNode(id_="x", text="plain", metadata={"page": 1})], embed)
    assert not [r for r in caplog.records if "reserved" in r.getMessage().lower()]


def test_hybrid_from_defaults_warns_about_reserved_keys(embed: KLEmbedding, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [TextNode(id_=f"h{i}", text=t, metadata={"bm25": "mine"}) for i, t in enumerate(TEXTS)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        KLHybridRetriever.from_defaults(nodes=nodes, encoder=embed, fusion="rrf")
    assert any("'bm25'" in r.getMessage() and "reserved" in r.getMessage().lower() for r in caplog.records)


# ------------------------------------------------------------------------------- 4. MMR prefetch depth
def test_mmr_picks_among_prefetch_k_even_when_the_calibrator_reads_ten_scores() -> None:
    g = random_gaussians(30, 4, seed=3)
    vectors = kl_document_vectors(g)
    nodes = [TextNode(id_=f"n{i}", text=f"t{i}", embedding=[float(x) for x in vectors[i]]) for i in range(30)]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1))
    deep = ConfidenceCalibrator(["gap1_10"]).fit(x, (x[:, 0] > 0).astype(float))
    vs = KLVectorStore(calibrator=deep)
    vs.add(nodes)
    q = [float(v) for v in kl_query_vectors(g[0])[0]]
    top = vs.query(VectorStoreQuery(query_embedding=q, similarity_top_k=3))
    mmr = vs.query(
        VectorStoreQuery(query_embedding=q, similarity_top_k=3, mode=VectorStoreQueryMode.MMR),
        mmr_threshold=0.0,
        mmr_prefetch_k=3,
    )
    assert set(mmr.ids or []) == set(top.ids or [])
    assert top.nodes and mmr.nodes
    confidence = top.nodes[0].metadata[CONFIDENCE_KEY]
    assert isinstance(confidence, float) and mmr.nodes[0].metadata[CONFIDENCE_KEY] == pytest.approx(confidence)


# ----------------------------------------------------------------------------- 5. a single candidate
def test_a_single_candidate_abstains_with_its_reason(
    embed: KLEmbedding, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    _, index = _index([Document(text=TEXTS[0], id_="only")], embed, calibrator=calibrator)
    hits = index.as_retriever(similarity_top_k=3).retrieve("a completely unrelated query about trains")
    assert len(hits) == 1 and hits[0].node.metadata[CONFIDENCE_KEY] is None
    reason = hits[0].node.metadata[REASON_KEY]
    assert reason == "confidence needs 2 candidates, 1 found (a filter or a small store)"
    assert reason not in hits[0].node.get_content(MetadataMode.LLM)
    assert reason not in hits[0].node.get_content(MetadataMode.EMBED)
    post = KLConfidencePostprocessor(min_confidence=0.99)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):  # abstentions are logged at DEBUG (they name the query)
        assert post.postprocess_nodes(hits, query_str="trains") == []
        assert post.postprocess_nodes(hits, query_str="trains again") == []
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "abstained" in r.getMessage()]
    assert len(infos) == 2 and all(reason in m for m in infos)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    engine = index.as_query_engine(llm=MockLLM(), node_postprocessors=[KLConfidencePostprocessor(min_confidence=0.01)])
    assert str(engine.query("unrelated trains")) == "Empty Response"  # fails closed at any floor above 0


def test_a_filter_leaving_one_node_gives_the_reason_and_two_nodes_do_not(
    embed: KLEmbedding, calibrator: ConfidenceCalibrator
) -> None:
    nodes = [TextNode(id_=f"t{i}", text=t, metadata={"n": i}) for i, t in enumerate(TEXTS)]
    _, index = _index(nodes, embed, calibrator=calibrator)
    one = MetadataFilters(filters=[MetadataFilter(key="n", value=3)])
    (hit,) = index.as_retriever(similarity_top_k=2, filters=one).retrieve(TEXTS[3])
    assert hit.node.metadata[CONFIDENCE_KEY] is None and REASON_KEY in hit.node.metadata
    mmr = index.as_retriever(similarity_top_k=2, filters=one, vector_store_query_mode="mmr").retrieve(TEXTS[3])
    assert REASON_KEY in mmr[0].node.metadata
    two = MetadataFilters(filters=[MetadataFilter(key="n", value=[3, 4], operator=FilterOperator.IN)])
    hits = index.as_retriever(similarity_top_k=2, filters=two).retrieve(TEXTS[3])
    assert all(REASON_KEY not in h.node.metadata and h.node.metadata[CONFIDENCE_KEY] is not None for h in hits)


def test_a_single_candidate_without_a_calibrator_is_kept_unjudged(
    embed: KLEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    _, index = _index([TextNode(id_="only", text=TEXTS[0])], embed)  # the tiny model ships no calibrator
    hits = index.as_retriever(similarity_top_k=1).retrieve("trains")
    assert hits[0].node.metadata[CONFIDENCE_KEY] is None and REASON_KEY not in hits[0].node.metadata
    post = KLConfidencePostprocessor(min_confidence=0.99)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert len(post.postprocess_nodes(hits, query_str="trains")) == 1
        assert len(post.postprocess_nodes(hits, query_str="trains")) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "kept unjudged" in warned[0]


def test_hybrid_single_candidate_abstains_with_its_reason(embed: KLEmbedding, calibrator: ConfidenceCalibrator) -> None:
    retriever = KLHybridRetriever.from_defaults(
        nodes=_text_nodes()[:1], encoder=embed, similarity_top_k=3, calibrator=calibrator, fusion="rrf"
    )
    hits = retriever.retrieve("unrelated water")
    assert len(hits) == 1 and hits[0].node.metadata[CONFIDENCE_KEY] is None
    assert "1 found" in hits[0].node.metadata[REASON_KEY]
    assert hits[0].node.metadata[REASON_KEY] not in hits[0].node.get_content(MetadataMode.LLM)
    assert KLConfidencePostprocessor(min_confidence=0.5).postprocess_nodes(hits, query_str="q") == []
    more = KLHybridRetriever.from_defaults(
        nodes=_text_nodes(), encoder=embed, similarity_top_k=3, calibrator=calibrator, fusion="rrf"
    ).retrieve(TEXTS[0])
    assert all(REASON_KEY not in h.node.metadata for h in more)


# ------------------------------------------------------------------------- 6. core-API ref_doc_id
def test_core_api_ref_doc_id_becomes_the_source_document() -> None:
    g = random_gaussians(3, 4, seed=3)
    ks = KLStore()
    ks.add(["a", "b", "c"], gaussians=g, ids=["x", "y", "z"], metadatas=[{"tags": ["t"], "ref_doc_id": "D"}, {}, {}])
    vs = KLVectorStore(ks)
    query = VectorStoreQuery(query_embedding=[float(v) for v in kl_query_vectors(g[0])[0]], similarity_top_k=1)
    (node,) = vs.query(query).nodes or []
    assert node.ref_doc_id == "D" and "ref_doc_id" not in node.metadata and node.metadata["tags"] == ["t"]
    (got,) = vs.get_nodes(["x"])
    assert got.ref_doc_id == "D" and "ref_doc_id" not in got.metadata
    assert vs.get_nodes(["y"])[0].ref_doc_id is None
    # filters and delete still see the stored key
    only_d = MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value="D")])
    assert [n.node_id for n in vs.get_nodes(filters=only_d)] == ["x"]
    vs.delete("D")
    assert sorted(ks.ids) == ["y", "z"]


# ---------------------------------------------------------------- review of the fixes above
def test_the_non_text_ids_follow_writes_made_through_another_wrapper(embed: KLEmbedding) -> None:
    vs, _ = _index([*_text_nodes(), IndexNode(id_="ix", text=TEXTS[0], index_id="sub")], embed)
    query = embed.get_query_embedding(TEXTS[0])

    def ids(node_ids: list[str]) -> list[str]:
        return vs.query(VectorStoreQuery(query_embedding=query, similarity_top_k=10, node_ids=node_ids)).ids or []

    assert len(ids(["ix"])) == 7  # cached: ix is the store's only IndexNode
    other = KLVectorStore(vs.kl_store)
    other.add([TextNode(id_="ix", text=TEXTS[0], embedding=embed.get_text_embedding(TEXTS[0]))])  # same size
    assert ids(["ix"]) == ["ix"]  # now a TextNode: a plain restriction


def test_a_torch_encoder_changed_in_memory_pickles_as_it_is(saved_model: Path) -> None:
    import torch

    encoder = load_model(str(saved_model), backend="torch")
    assert isinstance(encoder, GaussianEncoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(1.5)  # no longer what its folder holds
    embed = KLEmbedding(encoder)
    assert _same_vectors(pickle.loads(pickle.dumps(embed)), embed)


def test_nodes_a_search_returned_are_added_again_without_their_scores(
    embed: KLEmbedding, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    _, index = _index(_text_nodes(), embed, calibrator=calibrator)
    hits = index.as_retriever(similarity_top_k=3).retrieve(TEXTS[0])
    assert all("neg_kl" in h.node.metadata for h in hits)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vs2, _ = _index([h.node for h in hits], embed)
    assert not [r for r in caplog.records if "reserved" in r.getMessage().lower()]
    stored = vs2.get_nodes([hits[0].node.node_id])[0]
    assert not {"neg_kl", "confidence", "query_uncertainty"} & set(stored.metadata)
    assert "neg_kl" not in stored.excluded_llm_metadata_keys


def test_an_onnx_encoder_pickles_by_name() -> None:
    embed = KLEmbedding(load_model(backend="onnx"))  # the default bundled model's int8 graph
    state = embed.__getstate__()
    assert "kl_retrievers_encoder" not in state and embed.backend == "onnx"  # its session does not pickle
    back = pickle.loads(pickle.dumps(embed))
    assert back.backend == "onnx" and back.model_name == embed.model_name
    assert _same_vectors(back, embed)
