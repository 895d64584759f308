"""Tests for the LangChain integration (:mod:`kl_retrievers.langchain`)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.resources
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from conftest import make_tiny_encoder
from kl_retrievers import Gaussians, KLStore, kl_query_constant, neg_kl_matrix
from kl_retrievers.langchain import (
    EmbeddingsGaussianEncoder,
    KLEmbeddings,
    KLRetriever,
    KLVectorStore,
    LangChainFormatError,
    check_inner_product_store,
    relevance_exp,
    relevance_exp_per_dim,
    relevance_inverse,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")

TEXTS = [
    "the cat sat on the mat",
    "a dog in the sun",
    "green tea and bread",
    "the moon and the star",
    "water on black rock",
    "a train at sea",
    "hello world of text",
    "short query document",
]
METAS = [{"n": i, "kind": "animal" if i < 2 else "thing"} for i in range(len(TEXTS))]


def _faiss() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy
    return FAISS, DistanceStrategy


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder()


@pytest.fixture
def emb(encoder: Any) -> KLEmbeddings:
    return KLEmbeddings(encoder, batch_size=4)


@pytest.fixture
def store(emb: KLEmbeddings) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, emb, METAS, ids=[f"d{i}" for i in range(len(TEXTS))])


def _exact(encoder: Any, query: str, texts: list[str]) -> np.ndarray:
    q = encoder.encode_queries([query]).astype(np.float64)
    d = encoder.encode_documents(texts).astype(np.float64)
    return np.asarray(neg_kl_matrix(q, d))[0]


# ------------------------------------------------------------------ import guard
def test_import_without_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "kl_retrievers.langchain")
    for name in [m for m in sys.modules if m == "langchain_core" or m.startswith("langchain_core.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(ImportError, match=r'pip install "kl-retrievers\[langchain\]"'):
        importlib.import_module("kl_retrievers.langchain")


# ------------------------------------------------------------------ embeddings
def test_embeddings_inner_product_plus_constant_is_neg_kl(emb: KLEmbeddings, encoder: Any) -> None:
    d = np.array(emb.embed_documents(TEXTS))
    q = np.array(emb.embed_query("the cat on a mat"))
    k = encoder.config.dim
    assert d.shape == (len(TEXTS), 2 * k + 1) and q.shape == (2 * k + 1,) and emb.dim == k
    assert all(isinstance(x, float) for x in emb.embed_query("tea"))
    got = d @ q + emb.query_constant("the cat on a mat")
    np.testing.assert_allclose(got, _exact(encoder, "the cat on a mat", TEXTS), rtol=1e-5, atol=1e-5)
    assert emb.embed_documents([]) == []


def test_embeddings_decode_query_roundtrip(emb: KLEmbeddings, encoder: Any) -> None:
    g = KLEmbeddings.decode_query(emb.embed_query("green tea"))
    ref = encoder.encode_queries(["green tea"]).astype(np.float64)
    np.testing.assert_allclose(g.mean, ref.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g.var, ref.var, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kl_query_constant(g), kl_query_constant(ref), rtol=1e-5)
    with pytest.raises(ValueError, match="not a q~"):
        KLEmbeddings.decode_query(emb.embed_documents(["green tea"])[0])
    with pytest.raises(ValueError, match="2k \\+ 1"):
        KLEmbeddings.decode_query([1.0, 2.0])


def test_embeddings_async_and_type_errors(emb: KLEmbeddings) -> None:
    assert asyncio.run(emb.aembed_query("tea")) == emb.embed_query("tea")
    assert asyncio.run(emb.aembed_documents(["tea", "sun"])) == emb.embed_documents(["tea", "sun"])
    with pytest.raises(TypeError):
        emb.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb.embed_documents(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        emb.embed_documents("not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KLEmbeddings(batch_size=0)


def test_embeddings_default_model_is_lazy(monkeypatch: pytest.MonkeyPatch, encoder: Any) -> None:
    import kl_retrievers.langchain as lc

    calls: list[tuple[Any, ...]] = []

    def load(*args: Any) -> Any:
        calls.append(args)
        return encoder

    monkeypatch.setattr(lc, "_load_default_encoder", load)
    e = KLEmbeddings()
    assert calls == [] and "not loaded" in repr(e)
    assert len(e.embed_query("tea")) == 2 * encoder.config.dim + 1
    e.embed_query("sun")
    assert len(calls) == 1
    s = KLVectorStore()
    assert len(calls) == 1
    s.add_texts(["tea"])
    assert calls == [(None,), ()]  # KLEmbeddings asks for its backend (None: the default); the store for the default


@pytest.mark.parametrize("backend", [None, "torch", "onnx"])
def test_embeddings_backend_reaches_load_model(monkeypatch: pytest.MonkeyPatch, encoder: Any, backend: Any) -> None:
    import kl_retrievers.pretrained as pretrained

    seen: list[Any] = []

    def load_model(name: Any, *, backend: Any = None) -> Any:
        seen.append((name, backend))
        return encoder

    monkeypatch.setattr(pretrained, "load_model", load_model)
    KLEmbeddings(backend=backend).embed_query("tea")
    assert seen == [(None, backend)]


def test_incompatible_stores_warn(emb: KLEmbeddings) -> None:
    FAISS, DistanceStrategy = _faiss()
    with pytest.warns(UserWarning, match="cosine, L2 or normalised"):
        l2 = FAISS.from_texts(TEXTS[:3], emb)  # FAISS defaults to Euclidean distance
    with pytest.warns(UserWarning, match="InMemoryVectorStore"):
        InMemoryVectorStore.from_texts(TEXTS[:3], emb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ip = FAISS.from_texts(TEXTS[:3], emb, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
        ip.similarity_search("tea", k=1)
        assert check_inner_product_store(ip) is True
    assert check_inner_product_store(l2, warn=False) is False
    with warnings.catch_warnings():  # once per store type and embeddings object: the build above warned
        warnings.simplefilter("error", UserWarning)
        l2.similarity_search("tea", k=1)
    with pytest.warns(UserWarning, match="cosine, L2 or normalised"):  # another embeddings object warns again
        FAISS.from_texts(TEXTS[:3], KLEmbeddings(emb.encoder)).similarity_search("tea", k=1)


# ------------------------------------------------------------------ vector store
def test_add_search_scores_are_exact_neg_kl(store: KLVectorStore, encoder: Any) -> None:
    hits = store.similarity_search_with_score("the cat on the mat", k=len(TEXTS))
    ref = _exact(encoder, "the cat on the mat", TEXTS)
    assert [d.id for d, _ in hits] == [f"d{i}" for i in np.argsort(-ref, kind="stable")]
    np.testing.assert_allclose([s for _, s in hits], np.sort(ref)[::-1], rtol=1e-5, atol=1e-5)
    assert all(s <= 1e-6 for _, s in hits)
    top = store.similarity_search(TEXTS[2], k=1)[0]
    assert top == Document(id="d2", page_content=TEXTS[2], metadata=METAS[2])
    assert len(store) == len(TEXTS) and store.dim == encoder.config.dim
    assert isinstance(store.embeddings, KLEmbeddings)


def test_ids_upsert_delete_get(emb: KLEmbeddings) -> None:
    s = KLVectorStore(emb)
    ids = s.add_documents([Document(page_content="tea", id="x"), Document(page_content="sun")])
    assert ids[0] == "x" and len(ids[1]) == 32
    s.add_texts(["new tea"], [{"v": 2}], ids=["x"])
    assert s.get_by_ids(["x", "missing"]) == [Document(id="x", page_content="new tea", metadata={"v": 2})]
    out = s.upsert([Document(id="y", page_content="moon", metadata={"a": 1})])
    assert out == {"succeeded": ["y"], "failed": []}
    assert s.delete(["x", "nope"]) is True  # "nope" was never there: every given id is absent afterwards
    assert s.delete(["y"]) is True
    assert [d.page_content for d in s.similarity_search("tea", k=5)] == ["sun"]
    assert s.delete(delete_all=True) is True and len(s) == 0
    assert s.similarity_search("tea", k=3) == []


def test_delete_without_ids_refuses_and_names_the_explicit_way(emb: KLEmbeddings) -> None:
    # Trap: delete() with no ids used to wipe the whole store (FAISS raises, InMemoryVectorStore does nothing).
    s = KLVectorStore.from_texts(TEXTS[:3], emb, ids=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"delete\(delete_all=True\) or clear\(\)"):
        s.delete()
    with pytest.raises(ValueError, match="delete_all=True"):
        asyncio.run(s.adelete())
    assert len(s) == 3
    with pytest.raises(ValueError, match="not both"):
        s.delete(["a"], delete_all=True)
    assert s.delete([]) is True and len(s) == 3  # an empty list deletes nothing
    s.clear()
    assert len(s) == 0 and s.similarity_search("tea", k=2) == []
    s.add_texts(["green tea"], ids=["t"])  # still usable after clear()
    assert asyncio.run(s.adelete(delete_all=True)) is True and len(s) == 0


def test_filters_dict_and_callable(store: KLVectorStore) -> None:
    got = store.similarity_search("the cat", k=10, filter={"kind": "animal"})
    assert sorted(str(d.id) for d in got) == ["d0", "d1"]
    got = store.similarity_search("the cat", k=10, filter={"$or": [{"n": {"$gte": 6}}, {"n": {"$in": [0]}}]})
    assert sorted(str(d.id) for d in got) == ["d0", "d6", "d7"]
    got = store.similarity_search("tea", k=10, filter=lambda m: m["n"] % 2 == 1)
    assert sorted(str(d.id) for d in got) == ["d1", "d3", "d5", "d7"]
    with pytest.raises(ValueError, match="unknown filter operator"):
        store.similarity_search("tea", k=2, filter={"n": {"$regex": "x"}})


def test_search_by_vector_q_tilde_or_gaussian(store: KLVectorStore, emb: KLEmbeddings, encoder: Any) -> None:
    by_text = store.similarity_search_with_score("black rock", k=3)
    by_vec = store.similarity_search_with_score_by_vector(emb.embed_query("black rock"), k=3)
    assert [d.id for d, _ in by_vec] == [d.id for d, _ in by_text]
    np.testing.assert_allclose([s for _, s in by_vec], [s for _, s in by_text], rtol=1e-4, atol=1e-4)
    g = encoder.encode_queries(["black rock"])
    assert [d.id for d in store.similarity_search_by_vector(g, k=3)] == [d.id for d, _ in by_text]
    with pytest.raises(ValueError, match="not a q~"):
        store.similarity_search_by_vector(emb.embed_documents(["black rock"])[0], k=1)
    with pytest.raises(ValueError, match="2k \\+ 1"):
        store.similarity_search_by_vector([1.0, 0.5, 0.1], k=1)


def test_mmr(emb: KLEmbeddings, encoder: Any) -> None:
    texts = ["the cat sat", "the cat sat", "the cat sat", "a dog in the sun", "green tea"]
    s = KLVectorStore.from_texts(texts, emb, ids=["a", "b", "c", "d", "e"])
    plain = [d.id for d in s.similarity_search("the cat sat", k=3)]
    assert [d.id for d in s.max_marginal_relevance_search("the cat sat", k=3, lambda_mult=1.0)] == plain
    diverse = [d.id for d in s.max_marginal_relevance_search("the cat sat", k=3, fetch_k=5, lambda_mult=0.3)]
    assert len(diverse) == 3 and len({"a", "b", "c"} & set(diverse)) == 1
    by_vec = s.max_marginal_relevance_search_by_vector(emb.embed_query("the cat sat"), k=3, lambda_mult=0.3)
    assert [d.id for d in by_vec] == diverse
    assert asyncio.run(s.amax_marginal_relevance_search("the cat sat", k=3, lambda_mult=0.3))[0].id == diverse[0]
    with pytest.raises(ValueError):
        s.max_marginal_relevance_search("cat", k=2, lambda_mult=1.5)


def test_relevance_functions_and_retriever_modes(store: KLVectorStore) -> None:
    assert relevance_inverse(0.0) == 1.0 and relevance_inverse(-3.0) == 0.25
    assert relevance_exp(0.0) == 1.0 and relevance_exp(-np.log(2)) == pytest.approx(0.5)
    assert relevance_exp_per_dim(0.0, 8) == 1.0 and 0 < relevance_exp_per_dim(-80.0, 8) < 1e-4
    assert store.relevance == "exp"  # the default
    rel = store.similarity_search_with_relevance_scores("tea and bread", k=8)
    scores = [r for _, r in rel]
    assert all(0.0 < r <= 1.0 for r in scores) and scores == sorted(scores, reverse=True)
    raw = store.similarity_search_with_score("tea and bread", k=8)
    np.testing.assert_allclose(scores, [np.exp(s) for _, s in raw], rtol=1e-9)
    thr = float(np.median(scores))
    r = store.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": thr, "k": 8})
    assert len(r.invoke("tea and bread")) == sum(x >= thr for x in scores)
    assert len(store.as_retriever(search_kwargs={"k": 3}).invoke("tea")) == 3
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5})
    assert len(mmr.invoke("tea")) == 2
    exp_store = KLVectorStore(store.embeddings, store=store.store, relevance="exp_per_dim")
    assert all(0 < x <= 1 for _, x in exp_store.similarity_search_with_relevance_scores("tea", k=3))
    custom = KLVectorStore(store.embeddings, store=store.store, relevance=lambda s, k: 1.0 if s > -1 else 0.5)
    assert {x for _, x in custom.similarity_search_with_relevance_scores("tea", k=8)} <= {0.5, 1.0}
    with pytest.raises(ValueError, match="'exp', 'exp_per_dim', 'inverse'"):
        KLVectorStore(relevance="cosine")  # type: ignore[arg-type]


class _BagOfWords(Embeddings):
    """A tiny model: unit-length word-count vectors, so unit-variance Gaussians give ``KL = 1 - cos``.

    That is the geometry of the bundled models (unit-norm means, variances close to 1).
    """

    def __init__(self, texts: list[str]) -> None:
        self.vocab = {w: i for i, w in enumerate(sorted({w for t in texts for w in t.split()}))}

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(len(self.vocab))
        for w in text.split():
            v[self.vocab[w]] += 1.0
        return (v / np.linalg.norm(v)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


QUERY_TEXT = "a cat sat on my mat"
NEAR_DUPLICATE = "a cat sat on the mat"
UNRELATED = [  # each shares only "a" with the query: cosine about 0.15, like unrelated texts under MiniLM
    "a train left the station at noon today",
    "a green tea brewed with water below boiling",
    "a rocket throws exhaust gas backwards into space",
    "a coral reef grows slowly in warm shallow water",
    "a piano hammer strikes the steel strings inside",
    "a compiler checks types and optimises source code",
    "a glacier shrinks as mountain summers grow warmer",
    "a sourdough starter keeps wild yeast alive for years",
    "a vaccine trains the immune system against disease",
    "a roman road drains rain through layers of gravel",
]


def test_default_relevance_drops_unrelated_texts_keeps_near_duplicates() -> None:
    # Trap: 1 / (1 + KL) put unrelated texts at 0.52-0.55, so score_threshold=0.5 kept all of them.
    texts = [NEAR_DUPLICATE, *UNRELATED]
    s = KLVectorStore.from_texts(texts, _BagOfWords([QUERY_TEXT, *texts]), ids=[f"t{i}" for i in range(len(texts))])
    rel = dict((d.page_content, r) for d, r in s.similarity_search_with_relevance_scores(QUERY_TEXT, k=len(texts)))
    assert rel[NEAR_DUPLICATE] > 0.8
    assert max(rel[t] for t in UNRELATED) < 0.5
    kept = s.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.5, "k": 11})
    assert [d.page_content for d in kept.invoke(QUERY_TEXT)] == [NEAR_DUPLICATE]
    old = KLVectorStore(s.embeddings, store=s.store, relevance="inverse")
    assert min(r for d, r in old.similarity_search_with_relevance_scores(QUERY_TEXT, k=11)) > 0.5  # the old default


def test_async_store_methods(emb: KLEmbeddings) -> None:
    async def go() -> None:
        s = KLVectorStore(emb)
        ids = await s.aadd_texts(TEXTS[:4], METAS[:4], ids=["a", "b", "c", "d"])
        assert ids == ["a", "b", "c", "d"]
        hits = await s.asimilarity_search_with_score(TEXTS[1], k=2)
        assert hits[0][0].id == "b"
        assert (await s.asimilarity_search(TEXTS[2], k=1))[0].id == "c"
        assert [d.id for d in await s.aget_by_ids(["d"])] == ["d"]
        await s.adelete(["a"])
        assert (await s.aupsert([Document(id="e", page_content="sun")]))["succeeded"] == ["e"]
        s2 = await KLVectorStore.afrom_texts(TEXTS[:2], emb)
        assert len(s2) == 2
        assert len(s) == 4

    asyncio.run(go())


def test_bad_input(store: KLVectorStore, emb: KLEmbeddings) -> None:
    with pytest.raises(ValueError, match="metadatas"):
        store.add_texts(["a", "b"], [{}])
    with pytest.raises(ValueError, match="ids"):
        store.add_texts(["a", "b"], ids=["x"])
    with pytest.raises(ValueError, match="ids"):
        KLVectorStore.from_texts(["a"], emb, ids=["x", "y"])
    with pytest.raises(TypeError):
        store.add_texts(["a", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.add_texts("a single string")
    with pytest.raises(TypeError):
        store.similarity_search(42, k=1)  # type: ignore[arg-type]
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            store.similarity_search("tea", k=bad_k)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.max_marginal_relevance_search("tea", k=0)
    with pytest.raises(ValueError):
        KLRetriever(vectorstore=store, k=0)
    with pytest.raises(ValueError):
        KLRetriever(vectorstore=store).invoke("tea", k=0)
    assert len(store) == len(TEXTS)  # nothing was added by the failed calls


# ------------------------------------------------------------------ persistence
def test_save_load_roundtrip_without_pickle(store: KLVectorStore, emb: KLEmbeddings, tmp_path: Path) -> None:
    folder = store.save_local(tmp_path / "kl")
    assert not list(folder.rglob("*.pkl"))
    for p in folder.rglob("*"):
        assert not p.is_file() or not p.read_bytes().startswith(b"\x80")  # no pickle protocol header
    loaded = KLVectorStore.load_local(folder, emb)
    a = store.similarity_search_with_score("the cat", k=4, filter={"kind": "thing"})
    b = loaded.similarity_search_with_score("the cat", k=4, filter={"kind": "thing"})
    assert [d for d, _ in a] == [d for d, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b])
    loaded.add_texts(["tea"], ids=["new"])
    assert len(loaded) == len(store) + 1
    store.save_local(folder)  # overwriting an earlier save is fine


def test_load_foreign_or_versioned_folders_fails_clearly(
    store: KLVectorStore, emb: KLEmbeddings, tmp_path: Path
) -> None:
    FAISS, DistanceStrategy = _faiss()
    faiss_dir = tmp_path / "faiss"
    FAISS.from_texts(TEXTS[:2], emb, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT).save_local(str(faiss_dir))
    with pytest.raises(LangChainFormatError, match="FAISS.load_local"):
        KLVectorStore.load_local(faiss_dir, emb)
    raw = store.store.save(tmp_path / "raw")
    with pytest.raises(LangChainFormatError, match="KLStore folder"):
        KLVectorStore.load_local(raw, emb)
    folder = store.save_local(tmp_path / "kl")
    manifest = json.loads((folder / "langchain.json").read_text())
    manifest["format_version"] = 99
    (folder / "langchain.json").write_text(json.dumps(manifest))
    with pytest.raises(LangChainFormatError, match="format_version 99"):
        KLVectorStore.load_local(folder, emb)
    (folder / "langchain.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        KLVectorStore.load_local(folder, emb)
    with pytest.raises(FileNotFoundError):
        KLVectorStore.load_local(tmp_path / "nothing", emb)
    with pytest.raises(ValueError, match="refusing"):
        store.save_local(faiss_dir)


# ------------------------------------------------------------------ retriever
def test_retriever_metadata_k_and_constructors(emb: KLEmbeddings, encoder: Any, store: KLVectorStore) -> None:
    r = KLRetriever.from_texts(TEXTS, emb, METAS, k=3)
    docs = r.invoke("the cat sat")
    assert len(docs) == 3 and len(r.invoke("the cat sat", k=5)) == 5
    ref = _exact(encoder, "the cat sat", TEXTS)
    assert docs[0].metadata["neg_kl"] == pytest.approx(ref.max(), abs=1e-5)
    unc = float(encoder.encode_queries(["the cat sat"]).uncertainty()[0])
    assert all(d.metadata["query_uncertainty"] == pytest.approx(unc, abs=1e-6) for d in docs)
    assert docs[0].metadata["n"] == int(np.argmax(ref))
    assert "neg_kl" not in r.vectorstore.get_by_ids([docs[0].id or ""])[0].metadata  # the store is not mutated
    adocs = asyncio.run(r.ainvoke("the cat sat"))
    assert [d.id for d in adocs] == [d.id for d in docs]
    assert len(KLRetriever.from_documents([Document(page_content=t) for t in TEXTS], emb, k=2).invoke("tea")) == 2
    assert KLRetriever.from_store(store, k=1).invoke("tea")[0].id == store.similarity_search("tea", k=1)[0].id
    raw = KLStore(encoder)
    raw.add(TEXTS, ids=[str(i) for i in range(len(TEXTS))])
    assert len(KLRetriever.from_store(raw, k=2).invoke("tea")) == 2
    filtered = KLRetriever(vectorstore=store, k=8, filter={"kind": "animal"})
    assert {d.id for d in filtered.invoke("tea")} == {"d0", "d1"}
    assert len(filtered.invoke("tea", filter={"n": 5})) == 1


def test_any_langchain_embeddings_become_unit_variance_gaussians() -> None:
    fake = DeterministicFakeEmbedding(size=6)
    s = KLVectorStore.from_texts(["foo", "bar", "baz"], fake)
    top, score = s.similarity_search_with_score("bar", k=1)[0]
    assert top.page_content == "bar" and score == pytest.approx(0.0, abs=1e-5)
    enc = EmbeddingsGaussianEncoder(fake, variance=2.0)
    g = enc.encode_documents(["a", "b"])
    assert isinstance(g, Gaussians) and g.mean.shape == (2, 6) and float(g.var.max()) == 2.0
    with pytest.raises(ValueError):
        EmbeddingsGaussianEncoder(fake, variance=0.0)


# ------------------------------------------------------------------ RAG chain
def _rag_chain(retriever: Any, seen: list[str]) -> Any:
    def format_docs(docs: list[Document]) -> str:
        text = "\n\n".join(d.page_content for d in docs)
        seen.append(text)
        return text

    prompt = ChatPromptTemplate.from_template("Answer from the context.\n{context}\n\nQuestion: {question}")
    llm = FakeListChatModel(responses=["a fake answer"])
    return (
        {"context": retriever | RunnableLambda(format_docs), "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )


@pytest.mark.parametrize("backend", ["faiss", "kl"])
def test_rag_chain_swap_is_one_line(backend: str, emb: KLEmbeddings) -> None:
    FAISS, DistanceStrategy = _faiss()
    fake = DeterministicFakeEmbedding(size=16)
    seen: list[str] = []
    if backend == "faiss":
        retriever = FAISS.from_texts(TEXTS, fake, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT).as_retriever(
            search_kwargs={"k": 2}
        )
    else:  # the one-line swap:
        retriever = KLVectorStore.from_texts(TEXTS, emb).as_retriever(search_kwargs={"k": 2})
    chain = _rag_chain(retriever, seen)
    assert chain.invoke("the cat sat on the mat") == "a fake answer"
    assert len(seen) == 1 and len(seen[0].split("\n\n")) == 2
    if backend == "kl":
        assert seen[0].split("\n\n")[0] == "the cat sat on the mat"
        assert asyncio.run(chain.ainvoke("green tea and bread")) == "a fake answer"
        assert seen[1].split("\n\n")[0] == "green tea and bread"


# ------------------------------------------------------------------ real components
class _MemoEncoder:
    """Encode each document text once, whichever store asks (keeps the SciFact test fast)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name_or_path, self.config = inner, inner.name_or_path, inner.config
        self.docs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def encode_queries(self, texts: list[str], **kw: Any) -> Gaussians:
        return self.inner.encode_queries(texts, **kw)

    def encode_documents(self, texts: list[str], **kw: Any) -> Gaussians:
        todo = [t for t in dict.fromkeys(texts) if t not in self.docs]
        if todo:
            g = self.inner.encode_documents(todo, batch_size=32)
            self.docs.update({t: (g.mean[i], g.var[i]) for i, t in enumerate(todo)})
        return Gaussians(np.stack([self.docs[t][0] for t in texts]), np.stack([self.docs[t][1] for t in texts]))


@pytest.mark.integration
def test_default_relevance_with_the_default_model(minilm_default: Any) -> None:
    """Unrelated texts fall below 0.5 and near-duplicates stay above it, with the real default model.

    Documents: the bundled demo corpus (40 general-knowledge texts) plus near-duplicates of five
    sentences; none of it comes from an evaluation collection.
    """
    corpus = importlib.resources.files("kl_retrievers") / "data" / "demo_corpus.jsonl"
    demo = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    pairs = {
        "How do I reset my password?": "How can I reset my password?",
        "The train was delayed by snow on the tracks.": "Snow on the tracks delayed the train.",
        "Honey bees tell each other where food is with a waggle dance.": "Bees use a waggle dance to tell hive "
        "mates where food is.",
        "Green tea should be brewed with water below boiling.": "Brew green tea with water that is below the boil.",
        "Yeast makes bread dough rise.": "Bread dough rises because of yeast.",
    }
    store = KLVectorStore.from_texts([*demo, *pairs.values()], KLEmbeddings(minilm_default))
    for query, twin in pairs.items():
        top, relevance = store.similarity_search_with_relevance_scores(query, k=1)[0]
        assert top.page_content == twin and relevance > 0.8, (query, relevance)
    unrelated = ["Who won the football match last night?", "How do I file my income tax return?"]
    for query in [*unrelated, "What is the best smartphone to buy?"]:
        hits = store.similarity_search_with_relevance_scores(query, k=len(store))
        scores = [r for d, r in hits if d.page_content in demo]
        assert len(scores) == len(demo) and max(scores) < 0.5, (query, max(scores))
        old = KLVectorStore(store.embeddings, store=store.store, relevance="inverse")
        assert sum(r >= 0.5 for _, r in old.similarity_search_with_relevance_scores(query, k=len(demo))) >= 5
    retriever = store.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.5})
    assert retriever.invoke(unrelated[0]) == []


@pytest.mark.integration
def test_faiss_inner_product_matches_klvectorstore_on_scifact(minilm_default: Any) -> None:
    FAISS, DistanceStrategy = _faiss()
    root = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f, strict=False)]
    texts = [(r.get("title", "") + " " + r["text"])[:400] for r in rows]
    ids = [str(r["_id"]) for r in rows]
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for _, line in zip(range(10), f, strict=False)]
    emb = KLEmbeddings(_MemoEncoder(minilm_default))
    faiss_store = FAISS.from_texts(texts, emb, ids=ids, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
    kl_store = KLVectorStore.from_texts(texts, emb, ids=ids)
    k = 10
    for q in queries:
        ours = kl_store.similarity_search_with_score(q, k=k)
        theirs = faiss_store.similarity_search_with_score(q, k=k)
        c = emb.query_constant(q)
        for (d1, s1), (d2, s2) in zip(ours, theirs, strict=True):
            # FAISS reports <q~, d~>; adding c(q) gives the exact -KL we report
            assert s2 + c == pytest.approx(s1, abs=1e-3)
            assert d1.id == d2.id or abs(s1 - (s2 + c)) < 1e-3, (q, d1.id, d2.id)
        assert [d.id for d, _ in ours] == [d.id for d, _ in theirs]


def test_get_by_ids_refuses_one_string(store: KLVectorStore) -> None:
    """``get_by_ids("d1")`` must not look up "d" and "1" (a str is a sequence of characters)."""
    with pytest.raises(TypeError, match="not a single str; got 'd1'"):
        store.get_by_ids("d1")
    with pytest.raises(TypeError, match="not a single str"):
        asyncio.run(store.aget_by_ids("d1"))
    assert [d.id for d in store.get_by_ids(["d1"])] == ["d1"]


def test_async_paths_warn_about_incompatible_stores_too(emb: KLEmbeddings) -> None:
    with pytest.warns(UserWarning, match="InMemoryVectorStore"):
        mem = asyncio.run(InMemoryVectorStore.afrom_texts(TEXTS[:3], emb))
    with warnings.catch_warnings():  # once per store type and embeddings object: the build above warned
        warnings.simplefilter("error", UserWarning)
        asyncio.run(mem.asimilarity_search("tea", k=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # our own store: silent
        kl = asyncio.run(KLVectorStore.afrom_texts(TEXTS[:3], emb))
        asyncio.run(kl.asimilarity_search("tea", k=1))


@pytest.mark.parametrize("bad", [None, "0.5", "a", 1.5, -0.1, float("nan"), True])
def test_lambda_mult_and_score_threshold_must_be_numbers_in_unit_range(store: KLVectorStore, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"lambda_mult must be a number in \[0, 1\]; got"):
        store.max_marginal_relevance_search("tea", k=2, lambda_mult=bad)
    if bad is not None:
        with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\]; got"):
            store.similarity_search_with_relevance_scores("tea", k=2, score_threshold=bad)
        with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\]; got"):
            asyncio.run(store.asimilarity_search_with_relevance_scores("tea", k=2, score_threshold=bad))


def test_ignored_search_keywords_warn_naming_them(store: KLVectorStore) -> None:
    """A misspelt ``filter`` used to return unfiltered results without a word."""
    with pytest.warns(UserWarning, match=r"ignores the keyword argument\(s\) \['filters'\]; it takes query, k"):
        docs = store.similarity_search("cat", k=8, filters={"kind": "animal"})
    assert {d.metadata["kind"] for d in docs} == {"animal", "thing"}  # not applied
    with pytest.warns(UserWarning, match="fliter"):
        store.as_retriever(search_kwargs={"k": 2, "fliter": {"kind": "animal"}}).invoke("cat")
    with pytest.warns(UserWarning, match="score_threshold"):
        store.similarity_search("cat", k=2, score_threshold=0.5)
    with pytest.warns(UserWarning, match="'foo'"):
        store.max_marginal_relevance_search("cat", k=2, foo=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        store.similarity_search("cat", k=2, fetch_k=10)  # FAISS' fetch_k: accepted
        store.similarity_search_with_relevance_scores("cat", k=2, score_threshold=0.1, filter={"kind": "thing"})
        store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4}).invoke("cat")


def test_load_local_takes_faiss_allow_dangerous_deserialization_and_ignores_it(
    store: KLVectorStore, emb: KLEmbeddings, tmp_path: Path
) -> None:
    """Code ported from FAISS.load_local(..., allow_dangerous_deserialization=True) runs; nothing is unpickled."""
    folder = store.save_local(tmp_path / "kl")
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle")]
    again = KLVectorStore.load_local(folder, emb, allow_dangerous_deserialization=True)
    assert [d.id for d in again.similarity_search("cat", k=3)] == [d.id for d in store.similarity_search("cat", k=3)]


def test_loading_with_an_encoder_of_another_dimension_fails_at_load_naming_both(
    store: KLVectorStore, tmp_path: Path
) -> None:
    """It used to load and fail only at the first query ("query gaussians have dimension 16; ... 8")."""
    folder = store.save_local(tmp_path / "kl")
    dim = store.store.dim
    assert dim is not None
    other = make_tiny_encoder(dim=2 * dim)
    with pytest.raises(ValueError, match=rf"dimension {2 * dim}, but the store .* holds dimension {dim}"):
        KLVectorStore.load_local(folder, other)
    with pytest.raises(ValueError, match=rf"dimension {2 * dim}, but the store"):
        KLStore.load(folder / "klstore", encoder=other)


@pytest.mark.parametrize("fn", [relevance_exp, relevance_inverse, relevance_exp_per_dim])
def test_relevance_refuses_nan_and_plus_inf_instead_of_calling_them_perfect(fn: Any) -> None:
    """max(0, nan) is 0, so a NaN score got relevance 1.0 and MMR picked it first."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"score \(-KL\) in \[-inf, 0\]"):
            fn(bad, 4)
    assert fn(0.0, 4) == 1.0 and fn(float("-inf"), 4) == 0.0 and 0.0 < fn(-1.0, 4) < 1.0
