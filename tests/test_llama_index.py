"""LlamaIndex integration: KLEmbedding, KLVectorStore, KLRetriever and end-to-end pipelines.

Every test passes its embedding model and LLM explicitly; the autouse fixture points
LlamaIndex's global ``Settings`` at a MockLLM and at an embedding model that fails loudly,
so nothing can silently fall back to OpenAI (or to the wrong embeddings).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.simple import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import GaussianEncoder, Gaussians, kl_document_vectors, kl_query_vectors, neg_kl_matrix
from kl_retrievers.llama_index import (
    QUERY_UNCERTAINTY_KEY,
    SUPPORTED_FILTER_OPERATORS,
    KLEmbedding,
    KLRetriever,
    KLVectorStore,
    document_gaussians_from_embeddings,
    metadata_filters_to_predicate,
    query_gaussians_from_embeddings,
)

TEXTS = [
    "the cat sat on the mat",
    "a dog is in the water",
    "hello world from the sun",
    "green tea and black bread",
    "the moon and the star rise",
    "a long train by the sea",
    "short text is a gaussian document",
    "the bee is on the rock",
]
QUERY = "cat on a mat"


class _ForbiddenEmbedding(BaseEmbedding):
    """A global default embedding that fails if any code path falls back to ``Settings``."""

    def _get_query_embedding(self, query: str) -> list[float]:
        raise AssertionError("Settings.embed_model was used; pass embed_model explicitly")

    async def _aget_query_embedding(self, query: str) -> list[float]:
        raise AssertionError("Settings.embed_model was used; pass embed_model explicitly")

    def _get_text_embedding(self, text: str) -> list[float]:
        raise AssertionError("Settings.embed_model was used; pass embed_model explicitly")


@pytest.fixture(autouse=True)
def _isolated_settings() -> Iterator[None]:
    saved = (Settings._llm, Settings._embed_model)
    Settings.llm = MockLLM()
    Settings.embed_model = _ForbiddenEmbedding()
    try:
        yield
    finally:
        Settings._llm, Settings._embed_model = saved


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    """One tiny random encoder per module (read-only in these tests)."""
    return make_tiny_encoder()


@pytest.fixture
def embed(encoder: GaussianEncoder) -> KLEmbedding:
    return KLEmbedding(encoder, embed_batch_size=4)


def _docs() -> list[Document]:
    return [
        Document(
            text=t,
            id_=f"doc{i}",
            metadata={"n": i, "lang": "en" if i % 2 == 0 else "de"},
            excluded_embed_metadata_keys=["n", "lang"],  # embed the bare text, as _expected_scores does
        )
        for i, t in enumerate(TEXTS)
    ]


def _expected_scores(encoder: GaussianEncoder, query: str, texts: list[str]) -> np.ndarray:
    q = encoder.encode_queries([query]).astype(np.float64)
    d = encoder.encode_documents(texts).astype(np.float64)
    return np.asarray(neg_kl_matrix(q, d))[0]


def _index(embed: KLEmbedding, docs: list[Document] | None = None, **kwargs: Any) -> VectorStoreIndex:
    storage = StorageContext.from_defaults(vector_store=KLVectorStore())
    return VectorStoreIndex.from_documents(docs or _docs(), storage_context=storage, embed_model=embed, **kwargs)


def _scores(hits: Any) -> list[float]:
    """``NodeWithScore.score`` of each hit (every hit of these stores has one)."""
    return [h.get_score(raise_error=True) for h in hits]


def _sims(res: Any) -> list[float]:
    assert res.similarities is not None
    return list(res.similarities)


def _neg_kl(hits: Any) -> list[float]:
    """The exact -KL of retrieved nodes (``NodeWithScore`` or nodes), from their ``neg_kl`` metadata."""
    return [float(getattr(h, "node", h).metadata["neg_kl"]) for h in hits or []]


# ------------------------------------------------------------------------- import guard
def test_import_without_llama_index_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "kl_retrievers.llama_index")
    for name in [m for m in sys.modules if m == "llama_index" or m.startswith("llama_index.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "llama_index", None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "llama_index.core", None)  # type: ignore[arg-type]
    with pytest.raises(ImportError, match=r'pip install "kl-retrievers\[llama-index\]"'):
        importlib.import_module("kl_retrievers.llama_index")


# ---------------------------------------------------------------------------- embedding
def test_embedding_is_the_exact_rewrite(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    q = np.asarray(embed.get_query_embedding(QUERY))
    d = np.asarray(embed.get_text_embedding_batch(TEXTS))
    k = encoder.config.dim
    assert q.shape == (2 * k + 1,) and d.shape == (len(TEXTS), 2 * k + 1)
    qg = encoder.encode_queries([QUERY]).astype(np.float64)
    dg = encoder.encode_documents(TEXTS).astype(np.float64)
    np.testing.assert_allclose(q, kl_query_vectors(qg)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d, kl_document_vectors(dg), rtol=1e-6, atol=1e-6)
    constant = 0.5 * (np.log(qg.var) + 1.0).sum()
    np.testing.assert_allclose(d @ q + constant, _expected_scores(encoder, QUERY, TEXTS), rtol=1e-6, atol=1e-6)
    assert embed.model_name == "tiny-random"


def test_text_embeddings_are_encoded_in_one_call_not_one_by_one(encoder: GaussianEncoder) -> None:
    """The whole list goes to the encoder at once (which batches it by length, as KLStore.add does)."""
    sizes: list[int] = []

    class Spy:
        name_or_path = "spy"
        config = encoder.config

        def encode_queries(self, texts: list[str], **kw: Any) -> Gaussians:
            return encoder.encode_queries(texts, **kw)

        def encode_documents(self, texts: list[str], **kw: Any) -> Gaussians:
            sizes.append(len(texts))
            return encoder.encode_documents(texts, **kw)

    embed = KLEmbedding(Spy(), embed_batch_size=3)
    out = embed.get_text_embedding_batch(TEXTS)
    assert sizes == [len(TEXTS)] and len(out) == len(TEXTS)


def test_async_embedding_matches_sync(embed: KLEmbedding) -> None:
    async def run() -> tuple[list[float], list[list[float]], list[float]]:
        return (
            await embed.aget_query_embedding(QUERY),
            await embed.aget_text_embedding_batch(TEXTS),
            await embed.aget_text_embedding(TEXTS[0]),
        )

    q, d, one = asyncio.run(run())
    np.testing.assert_allclose(q, embed.get_query_embedding(QUERY), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d, embed.get_text_embedding_batch(TEXTS), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(one, d[0], rtol=1e-6, atol=1e-7)


def test_embedding_rejects_non_encoders() -> None:
    with pytest.raises(TypeError, match="encode_queries"):
        KLEmbedding(object())


# ---------------------------------------------------------------------------- inversion
def test_inversion_is_exact() -> None:
    g = random_gaussians(20, 6, seed=1)
    back = document_gaussians_from_embeddings(kl_document_vectors(g))
    np.testing.assert_allclose(back.mean, g.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.var, g.var, rtol=1e-12)
    back_q = query_gaussians_from_embeddings(kl_query_vectors(g))
    np.testing.assert_allclose(back_q.mean, g.mean, rtol=0, atol=0)
    np.testing.assert_allclose(back_q.var, g.var, rtol=1e-12, atol=1e-12)
    # A single list of Python floats (what LlamaIndex hands over) works too.
    one = document_gaussians_from_embeddings([float(x) for x in kl_document_vectors(g[0])[0]])
    np.testing.assert_allclose(one.var, g.var[:1], rtol=1e-12)


def test_store_recovers_the_encoders_gaussians(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    vs = KLVectorStore()
    vs.add([TextNode(id_=f"n{i}", text=t, embedding=embed.get_text_embedding(t)) for i, t in enumerate(TEXTS)])
    stored = vs.kl_store.get_gaussians([f"n{i}" for i in range(len(TEXTS))])
    ref = encoder.encode_documents(TEXTS)
    np.testing.assert_allclose(stored.mean, ref.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stored.var, ref.var, rtol=1e-6)


def test_inversion_rejects_the_wrong_kind_of_vector() -> None:
    g = random_gaussians(3, 4, seed=2)
    with pytest.raises(ValueError, match="not KL document vectors"):
        document_gaussians_from_embeddings(kl_query_vectors(g))
    with pytest.raises(ValueError, match="not KL query vectors"):
        query_gaussians_from_embeddings(kl_document_vectors(g))
    with pytest.raises(ValueError, match="odd length"):
        document_gaussians_from_embeddings(np.ones((2, 8)))
    tampered = np.array(kl_document_vectors(g))
    tampered[1, 0] += 5.0
    with pytest.raises(ValueError, match="first coordinate"):
        document_gaussians_from_embeddings(tampered)
    with pytest.raises(ValueError, match="finite"):
        query_gaussians_from_embeddings([1.0, float("nan"), 0.0])


# -------------------------------------------------------------------------- vector store
def _random_nodes(n: int = 12, k: int = 4, seed: int = 0) -> tuple[list[TextNode], Gaussians]:
    g = random_gaussians(n, k, seed=seed)
    vectors = kl_document_vectors(g)
    nodes = [
        TextNode(id_=f"n{i}", text=f"text {i}", embedding=[float(x) for x in vectors[i]], metadata={"i": i})
        for i in range(n)
    ]
    return nodes, g


def _query(g: Gaussians, **kw: Any) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=[float(x) for x in kl_query_vectors(g)[0]], **kw)


def test_similarities_are_exact_neg_kl() -> None:
    nodes, g = _random_nodes()
    vs = KLVectorStore()
    vs.add(nodes)
    qg = random_gaussians(1, 4, seed=9)
    res = vs.query(_query(qg, similarity_top_k=5))
    expected = np.asarray(neg_kl_matrix(qg, g.astype(np.float32).astype(np.float64)))[0]
    order = np.argsort(-expected, kind="stable")[:5]
    assert res.ids == [f"n{i}" for i in order]
    np.testing.assert_allclose(_neg_kl(res.nodes), expected[order], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(_sims(res), np.exp(expected[order]), rtol=1e-9)  # relevance exp(-KL)
    assert [n.node_id for n in res.nodes or []] == res.ids
    assert all(n.metadata[QUERY_UNCERTAINTY_KEY] == pytest.approx(float(qg.uncertainty()[0])) for n in res.nodes or [])


def test_query_with_query_str_uses_the_stores_encoder(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    vs = KLVectorStore(encoder=embed)  # a KLEmbedding is unwrapped to its encoder
    vs.add([TextNode(id_=f"n{i}", text=t) for i, t in enumerate(TEXTS)])  # no embeddings: the store encodes
    res = vs.query(VectorStoreQuery(query_str=QUERY, similarity_top_k=3))
    expected = _expected_scores(encoder, QUERY, TEXTS)
    order = np.argsort(-expected, kind="stable")[:3]
    assert res.ids == [f"n{i}" for i in order]
    np.testing.assert_allclose(_neg_kl(res.nodes), expected[order], rtol=1e-5, atol=1e-5)


def test_nodes_without_embeddings_and_no_encoder_raise_clearly() -> None:
    vs = KLVectorStore()
    with pytest.raises(ValueError, match=r"no embedding.*KLEmbedding"):
        vs.add([TextNode(id_="x", text="hello")])
    assert len(vs.kl_store) == 0
    with pytest.raises(ValueError, match="no embedding"):
        vs.query(VectorStoreQuery(query_str="hello"))


def test_foreign_embeddings_are_rejected() -> None:
    vs = KLVectorStore()
    with pytest.raises(ValueError, match="not KL document vectors"):
        vs.add([TextNode(id_="x", text="hi", embedding=[0.1, 0.2, 0.3, 0.4, 0.5])])
    nodes, _ = _random_nodes(3)
    vs.add(nodes)
    with pytest.raises(ValueError, match="not KL query vectors"):
        vs.query(VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=1))
    with pytest.raises(ValueError, match="k=6"):
        vs.add(_random_nodes(2, k=6)[0])


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_similarity_top_k_below_one_is_an_error(top_k: Any) -> None:
    nodes, g = _random_nodes(3)
    vs = KLVectorStore()
    vs.add(nodes)
    with pytest.raises(ValueError, match="similarity_top_k"):
        vs.query(_query(g[0], similarity_top_k=top_k))
    with pytest.raises(ValueError, match="similarity_top_k"):
        KLRetriever(vs, similarity_top_k=top_k)


def test_unsupported_query_mode() -> None:
    nodes, g = _random_nodes(3)
    vs = KLVectorStore()
    vs.add(nodes)
    with pytest.raises(ValueError, match=r"query modes \('default', 'mmr'\); got 'hybrid'"):
        vs.query(_query(g[0], similarity_top_k=1, mode=VectorStoreQueryMode.HYBRID))
    with pytest.raises(ValueError, match="relevance must be one of"):
        KLVectorStore(relevance="cosine")  # type: ignore[arg-type]


def test_node_ids_and_doc_ids_restrict_the_search() -> None:
    nodes, g = _random_nodes(10)
    for i, node in enumerate(nodes):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 3}")
    vs = KLVectorStore()
    vs.add(nodes)
    qg = g[4]
    res = vs.query(_query(qg, similarity_top_k=10, node_ids=["n1", "n4", "n7", "missing"]))
    assert sorted(res.ids or []) == ["n1", "n4", "n7"] and (res.ids or [])[0] == "n4"
    full = vs.query(_query(qg, similarity_top_k=10))
    by_id = dict(zip(full.ids or [], full.similarities or [], strict=True))
    np.testing.assert_allclose(_sims(res), [by_id[i] for i in res.ids or []], rtol=1e-12, atol=1e-12)
    res = vs.query(_query(qg, similarity_top_k=10, doc_ids=["doc1"]))
    assert sorted(res.ids or []) == ["n1", "n4", "n7"]
    res = vs.query(_query(qg, similarity_top_k=10, doc_ids=["doc1"], node_ids=["n1", "n2"]))
    assert res.ids == ["n1"]


# ------------------------------------------------------------------------------- filters
FILTER_METADATA = {
    "n0": {"lang": "en", "year": 2019, "tags": ["a", "b"], "title": "Hello World"},
    "n1": {"lang": "de", "year": 2021, "tags": ["b"], "title": "hallo welt"},
    "n2": {"lang": "en", "year": 2023, "tags": [], "title": "Gaussian text"},
    "n3": {"lang": "fr", "title": ""},
}


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("lang", "==", "en", ["n0", "n2"]),
        ("lang", "!=", "en", ["n1", "n3"]),
        ("year", ">", 2019, ["n1", "n2"]),
        ("year", ">=", 2021, ["n1", "n2"]),
        ("year", "<", 2021, ["n0"]),
        ("year", "<=", 2021, ["n0", "n1"]),
        ("lang", "in", ["de", "fr"], ["n1", "n3"]),
        ("lang", "nin", ["de", "fr"], ["n0", "n2"]),
        ("year", "nin", [2019], ["n1", "n2", "n3"]),
        ("year", "!=", 2019, ["n1", "n2", "n3"]),
        ("tags", "any", ["a", "c"], ["n0"]),
        ("tags", "all", ["a", "b"], ["n0"]),
        ("tags", "contains", "b", ["n0", "n1"]),
        ("title", "text_match", "World", ["n0"]),
        ("title", "text_match_insensitive", "hello", ["n0"]),
        ("tags", "is_empty", None, ["n2", "n3"]),
        ("title", "is_empty", None, ["n3"]),
        ("year", ">", "x", []),  # incomparable types never match, never raise
    ],
)
def test_filter_operators(key: str, op: str, value: Any, expected: list[str]) -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=FilterOperator(op))])
    vs = _filter_store()
    res = vs.query(_query(random_gaussians(1, 4, seed=3), similarity_top_k=10, filters=filters))
    assert sorted(res.ids or []) == expected
    assert sorted(n.node_id for n in vs.get_nodes(filters=filters)) == expected


def _filter_store() -> KLVectorStore:
    g = random_gaussians(len(FILTER_METADATA), 4, seed=5)
    vectors = kl_document_vectors(g)
    vs = KLVectorStore()
    vs.add(
        [
            TextNode(id_=i, text=i, embedding=[float(x) for x in vectors[j]], metadata=m)
            for j, (i, m) in enumerate(FILTER_METADATA.items())
        ]
    )
    return vs


def test_filter_conditions_and_nesting() -> None:
    vs = _filter_store()
    q = random_gaussians(1, 4, seed=3)

    def ids(filters: MetadataFilters) -> list[str]:
        return sorted(vs.query(_query(q, similarity_top_k=10, filters=filters)).ids or [])

    lang_de = MetadataFilter(key="lang", value="de")
    recent = MetadataFilter(key="year", value=2023, operator=FilterOperator(">="))
    assert ids(MetadataFilters(filters=[lang_de, recent], condition=FilterCondition.OR)) == ["n1", "n2"]
    assert ids(MetadataFilters(filters=[lang_de, recent], condition=FilterCondition.AND)) == []
    assert ids(MetadataFilters(filters=[MetadataFilter(key="lang", value="en")], condition=FilterCondition.NOT)) == [
        "n1",
        "n3",
    ]
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="lang", value="en"),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="year", value=2020, operator=FilterOperator("<")),
                    MetadataFilter(key="tags", value="x", operator=FilterOperator("contains")),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    assert ids(nested) == ["n0"]
    assert ids(MetadataFilters(filters=[])) == ["n0", "n1", "n2", "n3"]


def test_filters_apply_before_ranking() -> None:
    nodes, g = _random_nodes(30)
    for i, node in enumerate(nodes):
        node.metadata["keep"] = i % 10 == 0
    vs = KLVectorStore()
    vs.add(nodes)
    res = vs.query(
        _query(g[7], similarity_top_k=2, filters=MetadataFilters(filters=[MetadataFilter(key="i", value=20)]))
    )
    assert res.ids == ["n20"]  # the best match (n7) is excluded, yet the filtered hit is found
    res = vs.query(
        _query(
            g[7],
            similarity_top_k=3,
            filters=MetadataFilters(
                filters=[MetadataFilter(key="i", value=[0, 10, 20], operator=FilterOperator("in"))]
            ),
        )
    )
    assert sorted(res.ids or []) == ["n0", "n10", "n20"]


def test_unsupported_operator_names_the_supported_ones() -> None:
    bad = MetadataFilters(filters=[MetadataFilter.model_construct(key="a", value=1, operator="regex")])
    with pytest.raises(ValueError, match=r"unsupported filter operator 'regex'.*==.*is_empty"):
        metadata_filters_to_predicate(bad)
    vs = _filter_store()
    with pytest.raises(ValueError, match="supported operators"):
        vs.query(_query(random_gaussians(1, 4), similarity_top_k=1, filters=bad))
    with pytest.raises(ValueError, match="supported operators"):
        KLRetriever(vs, filters=bad)
    bad_cond = MetadataFilters.model_construct(filters=[MetadataFilter(key="a", value=1)], condition="xor")
    with pytest.raises(ValueError, match="supported conditions"):
        metadata_filters_to_predicate(bad_cond)
    assert set(SUPPORTED_FILTER_OPERATORS) >= {"==", "!=", ">", "in", "nin", "any", "all", "contains", "is_empty"}


# ----------------------------------------------------------------------------- end to end
def test_vector_store_index_from_documents(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    index = _index(embed)
    hits = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    expected = _expected_scores(encoder, QUERY, TEXTS)
    order = np.argsort(-expected, kind="stable")[:3]
    assert [h.node.get_content() for h in hits] == [TEXTS[i] for i in order]
    np.testing.assert_allclose(_neg_kl(hits), expected[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_scores(hits), np.exp(_neg_kl(hits)), rtol=1e-12)
    unc = float(encoder.encode_queries([QUERY]).uncertainty()[0])
    assert hits[0].node.metadata[QUERY_UNCERTAINTY_KEY] == pytest.approx(unc, rel=1e-5)
    assert hits[0].node.ref_doc_id == f"doc{order[0]}"
    for key in (QUERY_UNCERTAINTY_KEY, "neg_kl"):
        assert key not in hits[0].node.get_content(metadata_mode="llm")  # type: ignore[arg-type]


def test_index_filters_and_delete_ref_doc(embed: KLEmbedding) -> None:
    index = _index(embed)
    filters = MetadataFilters(filters=[MetadataFilter(key="lang", value="de")])
    hits = index.as_retriever(similarity_top_k=10, filters=filters).retrieve(QUERY)
    assert sorted(h.node.metadata["n"] for h in hits) == [1, 3, 5, 7]
    index.delete_ref_doc("doc1")
    hits = index.as_retriever(similarity_top_k=10).retrieve(QUERY)
    assert len(hits) == len(TEXTS) - 1 and "doc1" not in {h.node.ref_doc_id for h in hits}


def test_persist_and_reload(tmp_path: Path, embed: KLEmbedding) -> None:
    index = _index(embed)
    before = index.as_retriever(similarity_top_k=4).retrieve(QUERY)
    index.storage_context.persist(persist_dir=str(tmp_path / "storage"))
    files = sorted(p.name for p in (tmp_path / "storage").rglob("*"))
    assert "default__vector_store.json" in files and "default__vector_store.klstore" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    manifest = json.loads((tmp_path / "storage" / "default__vector_store.json").read_text())
    assert manifest["score_name"] == "neg_kl"

    store = KLVectorStore.from_persist_dir(str(tmp_path / "storage"))
    reloaded = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    after = reloaded.as_retriever(similarity_top_k=4).retrieve(QUERY)
    assert [h.node.node_id for h in after] == [h.node.node_id for h in before]
    np.testing.assert_allclose(_scores(after), _scores(before), rtol=1e-12)

    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "storage"), vector_store=store)
    loaded = load_index_from_storage(storage, embed_model=embed)
    again = loaded.as_retriever(similarity_top_k=4).retrieve(QUERY)
    assert [h.node.node_id for h in again] == [h.node.node_id for h in before]


def test_query_engines_with_mock_llm(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    index = _index(embed)
    response = index.as_query_engine(llm=MockLLM(), similarity_top_k=2).query(QUERY)
    assert len(response.source_nodes) == 2
    expected = np.sort(_expected_scores(encoder, QUERY, TEXTS))[::-1][:2]
    np.testing.assert_allclose(_neg_kl(response.source_nodes), expected, rtol=1e-5, atol=1e-5)

    retriever = KLRetriever.from_defaults(index=index, similarity_top_k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(QUERY)
    np.testing.assert_allclose(_neg_kl(response.source_nodes), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_scores(response.source_nodes), np.exp(expected), rtol=1e-5)
    assert isinstance(str(response), str)


def test_ingestion_pipeline_into_the_store(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    vs = KLVectorStore()
    long_doc = Document(text=". ".join(TEXTS * 3) + ".", id_="long")
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=24, chunk_overlap=0), embed], vector_store=vs
    )
    nodes = pipeline.run(documents=[long_doc, *_docs()[:2]])
    assert len(vs.kl_store) == len(nodes) > 3
    assert {n.ref_doc_id for n in vs.get_nodes()} == {"long", "doc0", "doc1"}
    index = VectorStoreIndex.from_vector_store(vs, embed_model=embed)
    hits = index.as_retriever(similarity_top_k=2).retrieve(QUERY)
    texts = [n.get_content() for n in nodes]
    expected = np.sort(_expected_scores(encoder, QUERY, texts))[::-1][:2]
    np.testing.assert_allclose(_neg_kl(hits), expected, rtol=1e-5, atol=1e-5)
    vs.delete("long")
    assert {n.ref_doc_id for n in vs.get_nodes()} == {"doc0", "doc1"}


# ------------------------------------------------------------------------------ retriever
@pytest.mark.parametrize("source", ["nodes", "documents", "index", "vector_store"])
def test_retriever_from_defaults(source: str, encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    docs = _docs()
    sources: dict[str, dict[str, Any]] = {
        "nodes": {
            "nodes": [
                TextNode(id_=d.doc_id, text=d.text, metadata=d.metadata, excluded_embed_metadata_keys=["n", "lang"])
                for d in docs
            ]
        },
        "documents": {"documents": docs},
        "index": {"index": _index(embed, docs)},
        "vector_store": {"vector_store": _index(embed, docs).vector_store},
    }
    kwargs = sources[source]
    retriever = KLRetriever.from_defaults(encoder=encoder, similarity_top_k=3, **kwargs)
    hits = retriever.retrieve(QUERY)
    expected = _expected_scores(encoder, QUERY, TEXTS)
    order = np.argsort(-expected, kind="stable")[:3]
    assert [h.node.get_content() for h in hits] == [TEXTS[i] for i in order]
    np.testing.assert_allclose(_neg_kl(hits), expected[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_scores(hits), np.exp(expected[order]), rtol=1e-5)
    unc = float(encoder.encode_queries([QUERY]).uncertainty()[0])
    assert all(h.node.metadata[QUERY_UNCERTAINTY_KEY] == pytest.approx(unc, rel=1e-5) for h in hits)
    async_hits = asyncio.run(retriever.aretrieve(QUERY))
    assert [h.node.node_id for h in async_hits] == [h.node.node_id for h in hits]
    np.testing.assert_allclose(_scores(async_hits), _scores(hits), rtol=1e-9)


def test_retriever_encoder_inferred_from_index_and_filters(embed: KLEmbedding) -> None:
    index = _index(embed)
    filters = MetadataFilters(filters=[MetadataFilter(key="n", value=4, operator=FilterOperator(">="))])
    retriever = KLRetriever.from_defaults(index=index, similarity_top_k=10, filters=filters)
    assert retriever.similarity_top_k == 10
    assert sorted(h.node.metadata["n"] for h in retriever.retrieve(QUERY)) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="similarity_top_k"):
        retriever.similarity_top_k = 0


def test_retriever_from_defaults_validates_sources(embed: KLEmbedding) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        KLRetriever.from_defaults(encoder=embed)
    with pytest.raises(ValueError, match="exactly one"):
        KLRetriever.from_defaults(nodes=[], documents=[], encoder=embed)
    with pytest.warns(UserWarning, match="SimpleVectorStore"):
        plain = VectorStoreIndex.from_documents(_docs()[:2], embed_model=embed)  # a SimpleVectorStore index
    with pytest.raises(TypeError, match="KLVectorStore"):
        KLRetriever.from_defaults(index=plain, encoder=embed)


def test_retriever_without_encoder_uses_the_query_embedding(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    from llama_index.core.schema import QueryBundle, TextNode

    recorded = _index(embed).vector_store
    assert isinstance(recorded, KLVectorStore) and recorded.encoder is not None  # an index's KLEmbedding is kept
    vectors = embed.get_text_embedding_batch(TEXTS)  # embedded outside any index: the store learns no encoder
    vs = KLVectorStore()
    vs.add([TextNode(text=t, id_=f"n{i}", embedding=v) for i, (t, v) in enumerate(zip(TEXTS, vectors, strict=True))])
    assert vs.encoder is None
    retriever = KLRetriever(vs, similarity_top_k=2)
    bundle = QueryBundle(query_str=QUERY, embedding=embed.get_query_embedding(QUERY))
    hits = retriever.retrieve(bundle)
    expected = np.sort(_expected_scores(encoder, QUERY, TEXTS))[::-1][:2]
    np.testing.assert_allclose(_neg_kl(hits), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no encoder"):
        retriever.retrieve(QUERY)


# ------------------------------------------------------------------- traps (issue 24)
def test_plain_load_index_from_storage_recipe_gets_the_kl_store_back(tmp_path: Path, embed: KLEmbedding) -> None:
    # Trap: StorageContext.from_defaults(persist_dir=...) read the manifest as an empty SimpleVectorStore,
    # so every query of the reloaded index returned 0 hits without an error.
    index = _index(embed)
    before = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    index.storage_context.persist(persist_dir=str(tmp_path / "s"))
    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "s"))
    loaded = load_index_from_storage(storage, embed_model=embed)
    assert isinstance(loaded, VectorStoreIndex) and isinstance(loaded.vector_store, KLVectorStore)
    assert isinstance(storage.vector_stores["image"], SimpleVectorStore)  # other stores load as before
    after = loaded.as_retriever(similarity_top_k=3).retrieve(QUERY)
    assert len(after) == 3 and [h.node.node_id for h in after] == [h.node.node_id for h in before]
    np.testing.assert_allclose(_neg_kl(after), _neg_kl(before), rtol=1e-12)


def test_a_simple_vector_store_without_the_loader_fails_loudly(tmp_path: Path) -> None:
    nodes, _ = _random_nodes(3)
    vs = KLVectorStore()
    vs.add(nodes)
    path = tmp_path / "default__vector_store.json"
    vs.persist(str(path))
    unpatched = SimpleVectorStore.from_persist_path.__func__._kl_retrievers_original  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"import kl_retrievers.llama_index before load_index_from_storage"):
        unpatched(SimpleVectorStore, str(path))
    # A real SimpleVectorStore file still loads through the (patched) loader.
    plain = SimpleVectorStore()
    plain.add([TextNode(id_="a", text="x", embedding=[1.0, 0.0])])
    plain.persist(str(tmp_path / "plain.json"))
    again = SimpleVectorStore.from_persist_path(str(tmp_path / "plain.json"))
    assert type(again) is SimpleVectorStore and again.get("a") == [1.0, 0.0]
    assert isinstance(SimpleVectorStore.from_persist_path(str(path)), KLVectorStore)


def test_similarity_postprocessor_cutoff_keeps_the_matching_nodes(encoder: GaussianEncoder, embed: KLEmbedding) -> None:
    # Trap: node scores were -KL <= 0, so SimilarityPostprocessor(similarity_cutoff=...) dropped every node.
    index = _index(embed)
    hits = index.as_retriever(similarity_top_k=len(TEXTS)).retrieve(TEXTS[3])  # a stored text: KL = 0 for it
    assert hits[0].node.get_content() == TEXTS[3] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = np.sort(_expected_scores(encoder, TEXTS[3], TEXTS))[::-1]
    np.testing.assert_allclose(_neg_kl(hits), expected, rtol=1e-5, atol=1e-5)
    assert all(h.score is not None and 0.0 < h.score <= 1.0 for h in hits)
    kept = SimilarityPostprocessor(similarity_cutoff=0.5).postprocess_nodes(hits)
    assert kept and [h.node.node_id for h in kept] == [h.node.node_id for h in hits if np.exp(_neg_kl([h])[0]) >= 0.5]
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=3, node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=0.5)]
    )
    assert engine.query(TEXTS[3]).source_nodes[0].node.get_content() == TEXTS[3]


def test_mmr_query_mode_is_kl_mmr(embed: KLEmbedding) -> None:
    # Trap: vector_store_query_mode="mmr" raised ValueError.
    texts = ["the cat sat on the mat"] * 3 + ["a dog is in the water", "green tea and black bread"]
    index = _index(embed, [Document(text=t, id_=f"d{i}") for i, t in enumerate(texts)])
    query = "the cat sat on the mat"
    plain = index.as_retriever(similarity_top_k=3).retrieve(query)
    assert {h.node.ref_doc_id for h in plain} == {"d0", "d1", "d2"}
    mmr = index.as_retriever(
        similarity_top_k=3, vector_store_query_mode="mmr", vector_store_kwargs={"mmr_threshold": 0.3}
    ).retrieve(query)
    assert len(mmr) == 3 and len({"d0", "d1", "d2"} & {h.node.ref_doc_id for h in mmr}) == 1
    assert mmr[0].score == pytest.approx(1.0, abs=1e-5)  # the first pick is the most relevant
    assert all(h.score == pytest.approx(np.exp(_neg_kl([h])[0])) for h in mmr)
    pure = index.as_retriever(
        similarity_top_k=3, vector_store_query_mode="mmr", vector_store_kwargs={"mmr_threshold": 1}
    )
    assert [h.node.node_id for h in pure.retrieve(query)] == [h.node.node_id for h in plain]


def test_mmr_search_is_the_shared_kl_mmr() -> None:
    from kl_retrievers._adapters import mmr_select, relevance_exp

    nodes, _ = _random_nodes(12, k=4, seed=3)
    vs = KLVectorStore()
    vs.add(nodes)
    qg = random_gaussians(1, 4, seed=5)
    ranked = vs.search_gaussian(qg, similarity_top_k=8)
    order = mmr_select(_neg_kl(ranked.nodes), vs.kl_store.get_gaussians(ranked.ids or []), 4, 0.4, relevance_exp)
    res = vs.query(_query(qg, similarity_top_k=4, mode=VectorStoreQueryMode.MMR, mmr_threshold=0.4), mmr_prefetch_k=8)
    assert res.ids == [(ranked.ids or [])[i] for i in order]
    with pytest.raises(ValueError, match=r"mmr_threshold\) must be in \[0, 1\]"):
        vs.query(_query(qg, similarity_top_k=2, mode=VectorStoreQueryMode.MMR), mmr_threshold=1.5)


def test_kl_embedding_in_a_cosine_simple_vector_store_warns_once(encoder: GaussianEncoder) -> None:
    # Trap: KLEmbedding inside LlamaIndex's default cosine SimpleVectorStore gave no warning.
    embed = KLEmbedding(encoder)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        index = VectorStoreIndex.from_documents(_docs(), embed_model=embed)
        index.as_retriever(similarity_top_k=2).retrieve(QUERY)
        asyncio.run(index.as_retriever(similarity_top_k=2).aretrieve(QUERY))
    messages = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    ours = [m for m in messages if "exact only for a raw inner product" in m]
    assert len(ours) == 1 and "SimpleVectorStore" in ours[0] and "KLVectorStore" in ours[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an inner-product KLVectorStore: no warning
        _index(KLEmbedding(encoder)).as_retriever(similarity_top_k=2).retrieve(QUERY)


def test_bm25_hybrid_recipe(embed: KLEmbedding) -> None:
    """The documented hybrid recipe: BM25 over the index's docstore fused with the -KL retriever."""
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
    from llama_index.retrievers.bm25 import BM25Retriever

    # KLVectorStore keeps the text, so LlamaIndex leaves the docstore empty unless asked to fill it.
    assert not _index(embed).docstore.docs
    index = _index(embed, store_nodes_override=True)
    assert len(index.docstore.docs) == len(TEXTS)
    bm25 = BM25Retriever.from_defaults(docstore=index.docstore, similarity_top_k=2)
    fusion = QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=2), bm25],
        similarity_top_k=3,
        num_queries=1,  # no LLM query rewriting
        mode=FUSION_MODES.RECIPROCAL_RANK,
        use_async=False,
        llm=MockLLM(),
    )
    hits = fusion.retrieve("bee rock")
    assert "the bee is on the rock" in [h.node.get_content() for h in hits]
    # One document found by both retrievers is one hit, its reciprocal ranks summed: the per-query
    # scores in a KL node's metadata do not enter its hash, which the fusion matches documents by.
    dense = index.as_retriever(similarity_top_k=2).retrieve("bee rock")
    sparse = bm25.retrieve("bee rock")
    assert dense[0].node.metadata["neg_kl"] is not None
    by_id: dict[str, float] = {}
    for ranked in (dense, sparse):
        for rank, hit in enumerate(ranked):
            by_id[hit.node.node_id] = by_id.get(hit.node.node_id, 0.0) + 1.0 / (rank + 60.0)
    assert {h.node.hash for h in dense} & {h.node.hash for h in sparse}  # the bee text is in both lists
    assert len(hits) == min(3, len(by_id))
    for hit in hits:
        assert hit.score == pytest.approx(by_id[hit.node.node_id])
    # An index loaded from the store alone has an empty docstore: give BM25 the store's nodes instead.
    store = index.vector_store
    assert isinstance(store, KLVectorStore)
    bm25_from_store = BM25Retriever.from_defaults(nodes=store.get_nodes(), similarity_top_k=1)
    assert bm25_from_store.retrieve("bee rock")[0].node.get_content() == "the bee is on the rock"


# ---------------------------------------------------------------------------- real model
@pytest.mark.integration
def test_real_default_model_end_to_end(tmp_path: Path, minilm_default: GaussianEncoder) -> None:
    embed = KLEmbedding(minilm_default, embed_batch_size=8)
    docs = [
        Document(text="Cats are small domesticated felines that purr.", id_="cats"),
        Document(text="The stock market fell sharply on Monday.", id_="stocks"),
        Document(text="Photosynthesis turns sunlight into chemical energy in plants.", id_="plants"),
        Document(text="Football is played by two teams of eleven players.", id_="football"),
    ]
    index = _index(embed, docs)
    hits = index.as_retriever(similarity_top_k=4).retrieve("how do plants use light from the sun?")
    assert hits[0].node.ref_doc_id == "plants"
    scores = _scores(hits)
    assert scores == sorted(scores, reverse=True)
    # The default model has unit-norm means and variances close to 1, so -KL is about cosine - 1, in [-2, 0].
    assert all(-2.0 - 1e-2 <= s <= 1e-4 for s in _neg_kl(hits))
    assert scores[0] > 0.5 > max(scores[1:])
    index.storage_context.persist(persist_dir=str(tmp_path / "s"))
    reloaded = VectorStoreIndex.from_vector_store(
        KLVectorStore.from_persist_dir(str(tmp_path / "s")), embed_model=embed
    )
    again = reloaded.as_retriever(similarity_top_k=1).retrieve("how do plants use light from the sun?")
    assert again[0].node.ref_doc_id == "plants"
