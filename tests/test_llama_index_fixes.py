"""LlamaIndex regressions: hybrid node fidelity, calibrator persistence, KL similarity, store fields, bad inputs.

Each test reproduces one audited bug of :mod:`kl_retrievers.llama_index` (tiny random encoder, no
download) and checks LlamaIndex's own conventions: nodes come back as they went in, persisted
settings come back, ``embed_model.similarity`` ranks like the store.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import SimilarityMode
from llama_index.core.base.embeddings.base import similarity as base_similarity
from llama_index.core.indices.query.embedding_utils import get_top_k_embeddings
from llama_index.core.schema import IndexNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator, random_gaussians
from kl_retrievers import GaussianEncoder, kl_document_vectors, kl_query_vectors, neg_kl_matrix
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import (
    CONFIDENCE_KEY,
    QUERY_UNCERTAINTY_KEY,
    KLConfidencePostprocessor,
    KLEmbedding,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

pytestmark = pytest.mark.usefixtures("mock_llm_settings")  # tests/conftest.py


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


# ------------------------------------------------------------------ 1. hybrid node fidelity
def _rich_nodes() -> list[TextNode]:
    a = TextNode(
        id_="a",
        text=HYBRID_TEXTS[0],
        metadata={"path": "/secret/a.txt", "lang": "en"},
        excluded_llm_metadata_keys=["path"],
        excluded_embed_metadata_keys=["path", "lang"],
    )
    a.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="doc-a")
    a.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id="b")
    # the field's pydantic alias (extra_info) hides the name metadata from mypy; both are accepted
    b = IndexNode(id_="b", text=HYBRID_TEXTS[1], index_id="sub-index", metadata={"lang": "de"})  # type: ignore[call-arg]
    rest = [TextNode(id_=f"n{i}", text=t, metadata={"lang": "en"}) for i, t in enumerate(HYBRID_TEXTS[2:], 2)]
    return [a, b, *rest]


def test_hybrid_nodes_keep_exclusions_relationships_and_type(encoder: GaussianEncoder) -> None:
    retriever = KLHybridRetriever.from_defaults(nodes=_rich_nodes(), encoder=encoder, fusion="rrf", similarity_top_k=6)
    hits = {h.node.node_id: h.node for h in retriever.retrieve(HYBRID_TEXTS[0])}
    a, b = hits["a"], hits["b"]
    llm_text = a.get_content(metadata_mode=MetadataMode.LLM)
    assert "/secret" not in llm_text and "lang: en" in llm_text and HYBRID_TEXTS[0] in llm_text
    assert "bm25" not in llm_text and "fused_score" not in llm_text and CONFIDENCE_KEY not in llm_text
    assert "lang" not in a.get_content(metadata_mode=MetadataMode.EMBED)  # the node's own embed exclusions
    nxt = a.relationships[NodeRelationship.NEXT]
    assert isinstance(nxt, RelatedNodeInfo) and nxt.node_id == "b" and a.ref_doc_id == "doc-a"
    assert isinstance(b, IndexNode) and b.class_name() == "IndexNode"
    assert b.index_id == "sub-index" and b.get_content() == HYBRID_TEXTS[1]
    # node metadata: the user's keys plus the score keys, none of LlamaIndex's storage keys
    assert {"path", "lang", "neg_kl", "bm25", "fused_score", QUERY_UNCERTAINTY_KEY, CONFIDENCE_KEY} <= set(a.metadata)
    assert not {"_node_content", "_node_type", "doc_id", "document_id", "ref_doc_id"} & set(a.metadata)
    assert "path" in a.excluded_llm_metadata_keys and "neg_kl" in a.excluded_llm_metadata_keys


def test_hybrid_filters_see_what_the_dense_store_sees(encoder: GaussianEncoder) -> None:
    docs = [Document(text=t, id_=f"d{i}", metadata={"n": i}) for i, t in enumerate(HYBRID_TEXTS)]
    cases = [
        MetadataFilters(filters=[MetadataFilter(key="doc_id", value="d1")]),
        MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value=["d2", "d3"], operator=FilterOperator.IN)]),
        MetadataFilters(filters=[MetadataFilter(key="n", value=3, operator=FilterOperator.GTE)]),
        MetadataFilters(filters=[MetadataFilter(key="n", value=0)], condition=FilterCondition.NOT),
        # score keys are added after the search: no filter can see them
        MetadataFilters(filters=[MetadataFilter(key="fusion", value="rrf")]),
    ]
    for filters in cases:
        hybrid = KLHybridRetriever.from_defaults(
            documents=docs, encoder=encoder, fusion="rrf", similarity_top_k=6, filters=filters
        )
        dense = KLRetriever.from_defaults(documents=docs, encoder=encoder, similarity_top_k=6, filters=filters)
        got = sorted(h.node.ref_doc_id or "" for h in hybrid.retrieve("the cat"))
        assert got == sorted(h.node.ref_doc_id or "" for h in dense.retrieve("the cat")), filters
    only_d1 = KLHybridRetriever.from_defaults(
        documents=docs, encoder=encoder, fusion="rrf", filters=cases[0], similarity_top_k=3
    )
    assert [h.node.ref_doc_id for h in only_d1.retrieve("cat")] == ["d1"]


def test_hybrid_store_filled_with_the_core_api_still_gives_text_nodes(encoder: GaussianEncoder) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(list(HYBRID_TEXTS), ids=[f"x{i}" for i in range(6)], metadatas=[{"ref_doc_id": "src", "n": 1}] * 6)
    hit = KLHybridRetriever(store, similarity_top_k=1).retrieve(HYBRID_TEXTS[2])[0].node
    assert isinstance(hit, TextNode) and hit.class_name() == "TextNode" and hit.get_content() == HYBRID_TEXTS[2]
    assert hit.ref_doc_id == "src" and hit.metadata["n"] == 1 and "ref_doc_id" not in hit.metadata


# ------------------------------------------------------------------ 2. calibrator persistence
def _confidences(index: VectorStoreIndex, query: str) -> list[Any]:
    return [h.node.metadata[CONFIDENCE_KEY] for h in index.as_retriever(similarity_top_k=2).retrieve(query)]


def test_explicit_calibrator_survives_persist_and_load(
    tmp_path: Path, encoder: GaussianEncoder, calibrator: ConfidenceCalibrator
) -> None:
    embed = KLEmbedding(encoder)
    storage = StorageContext.from_defaults(vector_store=KLVectorStore(calibrator=calibrator))
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in HYBRID_TEXTS], storage_context=storage, embed_model=embed
    )
    before = _confidences(index, HYBRID_TEXTS[0])
    assert before[0] is not None and before[0] > 0.9
    storage.persist(persist_dir=str(tmp_path))
    manifest = json.loads((tmp_path / "default__vector_store.json").read_text())
    saved = tmp_path / manifest["calibrator"]
    assert saved.is_file() and not saved.name.endswith("vector_store.json")
    assert ConfidenceCalibrator.load(saved).to_dict() == calibrator.to_dict()  # plain JSON, no pickle

    loaded = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(tmp_path)), embed_model=embed)
    assert isinstance(loaded, VectorStoreIndex)
    assert isinstance(loaded.vector_store, KLVectorStore)
    assert loaded.vector_store.calibrator is not None
    assert loaded.vector_store.calibrator.to_dict() == calibrator.to_dict()
    assert _confidences(loaded, HYBRID_TEXTS[0]) == pytest.approx(before)
    post = KLConfidencePostprocessor(min_confidence=0.5)
    assert post.postprocess_nodes(loaded.as_retriever(similarity_top_k=2).retrieve("hello world query")) == []

    # an explicit calibrator= at load time takes precedence
    other = ConfidenceCalibrator(["max_score"]).fit([[-1.0], [-0.5], [-0.2], [0.0]], [0, 0, 1, 1])
    store = KLVectorStore.from_persist_dir(tmp_path, calibrator=other)
    assert store.calibrator is not None
    assert store.calibrator.to_dict() == other.to_dict()
    path_store = KLVectorStore.from_persist_path(tmp_path / "default__vector_store.json", calibrator=other)
    assert path_store.calibrator is not None
    assert path_store.calibrator.to_dict() == other.to_dict()

    # persisting without an explicit calibrator records none (and drops the stale file)
    plain = KLVectorStore()
    plain.persist(str(tmp_path / "default__vector_store.json"))
    assert json.loads((tmp_path / "default__vector_store.json").read_text())["calibrator"] is None
    assert not saved.exists()


def test_old_persisted_folders_without_a_calibrator_entry_still_load(
    tmp_path: Path, encoder: GaussianEncoder, calibrator: ConfidenceCalibrator
) -> None:
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(id_=f"n{i}", text=t) for i, t in enumerate(HYBRID_TEXTS)])
    path = tmp_path / "default__vector_store.json"
    vs.persist(str(path))
    manifest = json.loads(path.read_text())
    manifest.pop("calibrator", None)  # what version 1 manifests written before this field look like
    path.write_text(json.dumps(manifest))
    old = KLVectorStore.from_persist_path(path, encoder=encoder)
    assert len(old.kl_store) == 6 and old.calibrator is None
    given = KLVectorStore.from_persist_path(path, encoder=encoder, calibrator=calibrator)
    assert given.calibrator is not None and given.calibrator.to_dict() == calibrator.to_dict()


# ------------------------------------------------------------------ 3. KL similarity
def test_similarity_of_query_and_documents_ranks_by_neg_kl(encoder: GaussianEncoder) -> None:
    embed = KLEmbedding(encoder)
    query = "the cat"
    q = embed.get_query_embedding(query)
    docs = embed.get_text_embedding_batch(HYBRID_TEXTS)
    neg_kl = np.asarray(neg_kl_matrix(embed.query_gaussians([query]), embed.document_gaussians(HYBRID_TEXTS)))[0]
    sims = [embed.similarity(q, d) for d in docs]
    assert np.argsort(-np.asarray(sims), kind="stable").tolist() == np.argsort(-neg_kl, kind="stable").tolist()
    assert sims == pytest.approx(np.exp(neg_kl).tolist(), rel=1e-9)  # the store's default relevance exp(-KL)
    assert all(0.0 < s <= 1.0 for s in sims)
    assert [embed.similarity(d, q) for d in docs] == pytest.approx(sims)  # either order
    # what SentenceEmbeddingOptimizer runs: LlamaIndex's top-k with embed_model.similarity
    top, ids = get_top_k_embeddings(q, docs, similarity_fn=embed.similarity, similarity_top_k=3)
    assert list(ids or []) == np.argsort(-neg_kl, kind="stable")[:3].tolist()
    assert top == pytest.approx(np.sort(np.exp(neg_kl))[::-1][:3].tolist())


def test_similarity_between_documents_is_the_symmetrised_kl_relevance() -> None:
    g = random_gaussians(3, 4, seed=5)
    d = [row.tolist() for row in kl_document_vectors(g)]
    m = np.asarray(neg_kl_matrix(g, g))
    embed = KLEmbedding(make_tiny_encoder())
    s01 = embed.similarity(d[0], d[1])
    assert s01 == pytest.approx(math.exp(0.5 * (m[0, 1] + m[1, 0])), rel=1e-9)
    assert s01 == pytest.approx(embed.similarity(d[1], d[0])) and embed.similarity(d[2], d[2]) == pytest.approx(1.0)
    q = [row.tolist() for row in kl_query_vectors(g)]
    assert embed.similarity(q[0], q[1]) == pytest.approx(s01, rel=1e-9)  # two queries: the same rule
    # explicitly asked modes and vectors that are not KL vectors keep LlamaIndex's behaviour
    assert embed.similarity(q[0], d[1], mode=SimilarityMode.DOT_PRODUCT) == pytest.approx(float(np.dot(q[0], d[1])))
    foreign = [0.3, 0.1, -0.2, 0.5, 0.7]
    assert embed.similarity(foreign, d[0][:5]) == pytest.approx(float(base_similarity(foreign, d[0][:5])))


# ------------------------------------------------------------------ 4. pydantic fields
def test_base_vector_store_fields_are_not_passed_to_klstore() -> None:
    flat = KLVectorStore(flat_metadata=True)
    assert flat.flat_metadata is True and flat.stores_text is True
    with pytest.raises(ValueError, match="Value for metadata a must be one of"):  # LlamaIndex's flat check runs
        flat.add([TextNode(id_="x", text="t", metadata={"a": {"nested": 1}}, embedding=_doc_vec())])
    no_embed = KLVectorStore(is_embedding_query=False)
    assert no_embed.is_embedding_query is False
    back = KLVectorStore.from_dict(KLVectorStore(relevance="inverse", flat_metadata=True).to_dict())
    assert (back.relevance, back.flat_metadata, back.stores_text) == ("inverse", True, True)
    with pytest.raises(ValueError, match=r"stores_text must be True.*got False"):
        KLVectorStore(stores_text=False)


def _doc_vec(k: int = 2, seed: int = 0) -> list[float]:
    return [float(x) for x in kl_document_vectors(random_gaussians(1, k, seed=seed))[0]]


# ------------------------------------------------------------------ 5. bad inputs
def test_ragged_embeddings_name_the_nodes_and_the_lengths() -> None:
    nodes = [TextNode(id_="a", text="x", embedding=_doc_vec(2)), TextNode(id_="b", text="y", embedding=_doc_vec(3))]
    with pytest.raises(ValueError, match=r"2k \+ 1.*'a'.*length 5.*'b'.*length 7"):
        KLVectorStore().add(nodes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mmr_prefetch_k": -5}, r"mmr_prefetch_k must be a positive integer; got -5"),
        ({"mmr_prefetch_k": "x"}, r"mmr_prefetch_k must be a positive integer; got 'x'"),
        ({"mmr_prefetch_k": True}, r"mmr_prefetch_k must be a positive integer; got True"),
        ({"mmr_prefetch_factor": float("nan")}, r"mmr_prefetch_factor must be a finite number >= 1.*got nan"),
        ({"mmr_prefetch_factor": 0.5}, r"mmr_prefetch_factor must be a finite number >= 1.*got 0.5"),
        ({"mmr_prefetch_factor": "4"}, r"mmr_prefetch_factor must be a finite number >= 1.*got '4'"),
    ],
)
def test_bad_mmr_options_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    g = random_gaussians(10, 2, seed=3)
    vs = KLVectorStore()
    vs.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=v.tolist()) for i, v in enumerate(kl_document_vectors(g))])
    query = VectorStoreQuery(
        query_embedding=kl_query_vectors(g[0])[0].tolist(), similarity_top_k=2, mode=VectorStoreQueryMode.MMR
    )
    assert len(vs.query(query, mmr_prefetch_k=3).ids or []) == 2  # a valid one still works
    with pytest.raises(ValueError, match=message):
        vs.query(query, **kwargs)


def test_min_confidence_is_validated_on_assignment() -> None:
    post = KLConfidencePostprocessor(min_confidence=0.5)
    with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\].*got 3.0"):
        post.min_confidence = 3.0
    assert post.min_confidence == 0.5
    post.min_confidence = 0.25
    assert post.min_confidence == 0.25


# ------------------------------------------------------------------ 6. concurrency
class _Overlap:
    """Counts the encoder calls in progress; ``most`` is the largest number seen at once."""

    def __init__(self) -> None:
        self.active = self.most = self.calls = 0
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.add(threading.get_ident())

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


class _SlowEncoder:
    """A thread-safe fake encoder that sleeps ``seconds`` in every call (no lock of its own)."""

    name_or_path = "slow-fake"

    def __init__(self, seconds: float, overlap: _Overlap | None = None, dim: int = 4) -> None:
        self.seconds, self.dim = seconds, dim
        self.overlap = overlap or _Overlap()

    def _encode(self, texts: list[str]) -> Any:
        self.overlap.enter()
        try:
            time.sleep(self.seconds)
        finally:
            self.overlap.leave()
        return random_gaussians(len(texts), self.dim, seed=len(texts))

    def encode_queries(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> Any:
        return self._encode(texts)

    def encode_documents(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> Any:
        return self._encode(texts)


def _slow_store(seconds: float, overlap: _Overlap | None = None) -> tuple[KLVectorStore, _SlowEncoder]:
    enc = _SlowEncoder(0.0, overlap)
    store = KLVectorStore(encoder=enc)
    store.add([TextNode(id_=f"n{i}", text=f"text {i}", metadata={"i": i}) for i in range(6)])
    enc.seconds = seconds
    enc.overlap.calls, enc.overlap.most = 0, 0
    enc.overlap.threads.clear()
    return store, enc


async def _longest_stall(work: Any) -> tuple[float, Any]:
    """Run ``work`` while a heartbeat task ticks every 5 ms; return the longest gap between ticks and the result."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    try:
        result = await work
    finally:
        done.set()
        await beat
    return max(gaps), result


def test_concurrent_aretrieve_calls_encode_at_the_same_time() -> None:
    # A process-wide lock around every encode made 8 concurrent aretrieve calls take 8 encode times.
    store, enc = _slow_store(0.3)
    retriever = KLRetriever(store, similarity_top_k=2)

    async def run() -> list[Any]:
        return await asyncio.gather(*[retriever.aretrieve(f"query {i}") for i in range(8)])

    results = asyncio.run(run())
    assert enc.overlap.calls == 8 and all(len(r) == 2 for r in results)
    assert enc.overlap.most >= 2, "the encodes of concurrent aretrieve calls were serialised"


def test_encodes_for_different_stores_and_encoders_overlap() -> None:
    overlap = _Overlap()
    stores = [_slow_store(0.3, overlap)[0], _slow_store(0.3, overlap)[0]]
    query = VectorStoreQuery(query_str="text", similarity_top_k=2)
    threads = [threading.Thread(target=store.query, args=(query,)) for store in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap.calls == 2 and overlap.most == 2, "one store's encode waited for another store's"


def test_aquery_and_async_add_do_not_stall_the_event_loop() -> None:
    # They were LlamaIndex's sync fallbacks: the encode ran on the event loop and stalled it for 0.5 s.
    store, enc = _slow_store(0.6)
    query = VectorStoreQuery(query_str="text 3", similarity_top_k=3)
    expected = store.query(query)  # in this thread: not counted below
    enc.overlap.threads.clear()
    enc.overlap.calls = 0

    async def run() -> tuple[tuple[float, Any], tuple[float, Any]]:
        searched = await _longest_stall(store.aquery(query))
        added = await _longest_stall(store.async_add([TextNode(id_="new", text="a new node")]))
        return searched, added

    (query_stall, result), (add_stall, ids) = asyncio.run(run())
    assert result.ids == expected.ids and result.similarities == pytest.approx(expected.similarities)
    assert ids == ["new"] and "new" in store.kl_store.ids
    assert query_stall < 0.3 and add_stall < 0.3, (query_stall, add_stall)
    assert enc.overlap.calls == 2 and threading.get_ident() not in enc.overlap.threads


def test_async_methods_run_the_sync_ones_in_a_worker_thread_with_their_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, _ = _slow_store(0.0)
    child = TextNode(id_="r1", text="child", relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc")})
    seen: dict[str, tuple[int, Any]] = {}
    for name in ("add", "delete", "delete_nodes", "get_nodes", "clear", "query"):
        original = getattr(KLVectorStore, name)

        def spy(self: KLVectorStore, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            seen[_name] = (threading.get_ident(), (args, kwargs))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(KLVectorStore, name, spy)
    only_n1 = MetadataFilters(filters=[MetadataFilter(key="i", value=1, operator=FilterOperator.EQ)])

    async def run() -> list[Any]:
        added = await store.async_add([child], extra="a")
        got = await store.aget_nodes(node_ids=["n0", "n1"], filters=only_n1)
        await store.adelete("doc", extra="x")
        after_delete = list(store.kl_store.ids)
        await store.adelete_nodes(node_ids=["n2"], extra="y")
        result = await store.aquery(VectorStoreQuery(query_str="text", similarity_top_k=2), mmr_threshold=0.5)
        await store.aclear()
        return [added, got, after_delete, result]

    added, got, after_delete, result = asyncio.run(run())
    assert added == ["r1"] and [n.node_id for n in got] == ["n1"] and "r1" not in after_delete
    assert len(result.ids) == 2 and store.kl_store.ids == []
    assert seen["add"][1] == (([child],), {"extra": "a"})
    assert seen["get_nodes"][1] == ((["n0", "n1"], only_n1), {})
    assert seen["delete"][1] == (("doc",), {"extra": "x"})
    assert seen["delete_nodes"][1] == ((["n2"], None), {"extra": "y"})
    assert seen["query"][1][1] == {"mmr_threshold": 0.5}
    assert seen["clear"][1] == ((), {})
    loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
    assert all(thread != loop_thread for thread, _ in seen.values()), seen


def test_mmr_drops_a_node_deleted_after_the_search(encoder: GaussianEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread deleting a candidate between the search and the Gaussian lookup: dropped, no KeyError."""
    vs = KLVectorStore(encoder=encoder)
    vs.add([TextNode(text=t, id_=f"n{i}") for i, t in enumerate(HYBRID_TEXTS)])
    original = KLVectorStore._ranked
    deleted: list[str] = []

    def ranked_then_delete(self: KLVectorStore, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if not deleted:
            deleted.append(out[0][0])
            self.delete_nodes(node_ids=deleted)
        return out

    monkeypatch.setattr(KLVectorStore, "_ranked", ranked_then_delete)
    query = encoder.encode_queries([HYBRID_TEXTS[0]])
    result = vs.mmr_search_gaussian(query, similarity_top_k=3, prefetch_k=6)
    assert deleted and result.ids is not None and len(result.ids) == 3 and deleted[0] not in result.ids
    assert result.nodes is not None and [n.node_id for n in result.nodes] == result.ids
