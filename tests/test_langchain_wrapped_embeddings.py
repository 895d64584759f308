"""KLEmbeddings inside LangChain wrappers (CacheBackedEmbeddings, HyDE-like wrappers) and compressors.

A store given a wrapper of a KLEmbeddings scores as with the KLEmbeddings itself (a document cache is used and
its d~ decoded back to Gaussians; other wrappers are bypassed with a warning); a cache that keeps queries under
its documents' keys is named in a warning; LangChain's cosine-based document compressors and transformers are
warned about.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.stores import InMemoryByteStore
from pydantic import BaseModel

from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

TEXTS = ["the cat sat on the mat", "a dog ran", "green tea and bread", "the cat ran", "bread and butter", "a mat"]
IDS = [f"d{i}" for i in range(len(TEXTS))]
QUERIES = ["the cat sat", "green tea", TEXTS[3]]


def _cache_backed() -> Any:
    return pytest.importorskip("langchain_classic.embeddings").CacheBackedEmbeddings


def _scores(store: KLVectorStore, query: str) -> list[tuple[str | None, float]]:
    return [(d.id, s) for d, s in store.similarity_search_with_score(query, k=len(TEXTS))]


def _assert_same_ranking(wrapped: KLVectorStore, direct: KLVectorStore) -> None:
    assert wrapped.dim == direct.dim
    for query in QUERIES:
        got, want = _scores(wrapped, query), _scores(direct, query)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-5)


@pytest.fixture
def emb(tiny_encoder: Any) -> KLEmbeddings:
    return KLEmbeddings(tiny_encoder, batch_size=4)


@pytest.fixture
def direct(emb: KLEmbeddings) -> KLVectorStore:
    store = KLVectorStore(emb)
    store.add_texts(TEXTS, ids=IDS)
    return store


def test_cache_backed_klembeddings_store_scores_as_the_model_and_uses_the_cache(
    emb: KLEmbeddings, direct: KLVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = InMemoryByteStore()
    cbe = _cache_backed().from_bytes_store(emb, cache, namespace="kl", key_encoder="sha256")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        store = KLVectorStore(cbe)
        store.add_texts(TEXTS, ids=IDS)
        _assert_same_ranking(store, direct)
    assert store.embeddings is emb
    assert len(list(cache.yield_keys())) == len(TEXTS)  # the documents' d~, cached
    # a second store over the same cache encodes no document: every d~ comes from the cache
    monkeypatch.setattr(emb, "encode_documents", lambda *a, **k: pytest.fail("the cache was not used"))
    again = KLVectorStore(cbe)
    again.add_texts(TEXTS, ids=IDS)
    _assert_same_ranking(again, direct)
    hits = again.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.01})
    assert len(hits.invoke(TEXTS[0])) >= 1  # -KL relevance scores, not the L2 of q~ and d~


def test_cache_backed_klembeddings_separate_query_cache_is_used(emb: KLEmbeddings, direct: KLVectorStore) -> None:
    queries = InMemoryByteStore()
    cbe = _cache_backed().from_bytes_store(
        emb, InMemoryByteStore(), namespace="kl", key_encoder="sha256", query_embedding_cache=queries
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = KLVectorStore(cbe)
        store.add_texts(TEXTS, ids=IDS)
        _assert_same_ranking(store, direct)
    assert len(list(queries.yield_keys())) == len(set(QUERIES))  # the queries' q~, cached


def test_cache_backed_klembeddings_shared_query_cache_warns_and_is_bypassed(
    emb: KLEmbeddings, direct: KLVectorStore
) -> None:
    cbe = _cache_backed().from_bytes_store(
        emb, InMemoryByteStore(), namespace="kl", key_encoder="sha256", query_embedding_cache=True
    )
    with pytest.warns(UserWarning, match=r"CacheBackedEmbeddings caches the queries .* query_embedding_cache=") as seen:
        store = KLVectorStore(cbe)
        KLVectorStore(cbe)  # once per KLEmbeddings
    assert len([w for w in seen if "caches the queries" in str(w.message)]) == 1
    store.add_texts(TEXTS, ids=IDS)
    _assert_same_ranking(store, direct)


def test_cache_backed_klembeddings_shared_query_cache_warns_when_embedding(emb: KLEmbeddings) -> None:
    cbe = _cache_backed().from_bytes_store(
        emb, InMemoryByteStore(), namespace="kl", key_encoder="sha256", query_embedding_cache=True
    )
    with pytest.warns(UserWarning, match=r"a text's query vector q~ and document vector d~ differ") as seen:
        cbe.embed_documents(TEXTS[:2])
        cbe.embed_documents(TEXTS[2:])
    assert len([w for w in seen if "q~ and document vector d~ differ" in str(w.message)]) == 1


def test_same_byte_store_and_namespace_for_queries_is_a_shared_cache(emb: KLEmbeddings) -> None:
    cache = InMemoryByteStore()
    cbe = _cache_backed().from_bytes_store(
        emb, cache, namespace="kl", key_encoder="sha256", query_embedding_cache=cache
    )
    with pytest.warns(UserWarning, match=r"caches the queries"):
        KLVectorStore(cbe)


def test_cache_holding_query_vectors_for_documents_is_refused(emb: KLEmbeddings) -> None:
    cache = InMemoryByteStore()
    CacheBackedEmbeddings = _cache_backed()
    writer = CacheBackedEmbeddings.from_bytes_store(
        emb, InMemoryByteStore(), namespace="kl", key_encoder="sha256", query_embedding_cache=cache
    )
    writer.embed_query(TEXTS[0])  # a q~ under the key the reader's documents use
    reader = CacheBackedEmbeddings.from_bytes_store(emb, cache, namespace="kl", key_encoder="sha256")
    with pytest.raises(ValueError, match=r"CacheBackedEmbeddings.embed_documents returned vectors that are not"):
        KLVectorStore(reader).add_texts(TEXTS)


class _Wrapper(Embeddings):
    """A wrapper that changes the vectors (as HypotheticalDocumentEmbedder's embed_query does)."""

    def __init__(self, base_embeddings: Embeddings) -> None:
        self.base_embeddings = base_embeddings

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.base_embeddings.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.base_embeddings.embed_documents([text])[0]


def test_other_wrapper_of_klembeddings_is_bypassed_with_a_warning(emb: KLEmbeddings, direct: KLVectorStore) -> None:
    with pytest.warns(UserWarning, match=r"_Wrapper wraps a KLEmbeddings"):
        store = KLVectorStore(_Wrapper(emb))
    store.add_texts(TEXTS, ids=IDS)
    _assert_same_ranking(store, direct)
    assert store.embeddings is emb


def _cosine_similarity(x: Any, y: Any) -> np.ndarray:
    x, y = np.asarray(x), np.asarray(y)
    return (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))


class _CosineCompressor(BaseDocumentCompressor):
    """A compressor of the user's that compares by a cosine ``similarity_fn``, as LangChain's filters do."""

    embeddings: Any
    similarity_fn: Any = _cosine_similarity

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> list[Document]:
        d = self.embeddings.embed_documents([doc.page_content for doc in documents])
        scores = self.similarity_fn([self.embeddings.embed_query(query)], d)[0]
        return [documents[i] for i in np.argsort(-scores)[:2]]


class _KLCompressor(BaseDocumentCompressor):
    """A compressor of the user's that ranks by <q~, d~> (-KL up to the query's constant): no similarity_fn."""

    embeddings: Any

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> list[Document]:
        d = np.asarray(self.embeddings.embed_documents([doc.page_content for doc in documents]))
        scores = d @ np.asarray(self.embeddings.embed_query(query))
        return [documents[i] for i in np.argsort(-scores)[:2]]


class _KLCrossEncoder(BaseCrossEncoder):
    """A cross-encoder scoring each (query, text) pair by its -KL, through KLEmbeddings."""

    def __init__(self, embeddings: KLEmbeddings) -> None:
        self.embeddings = embeddings

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        emb = self.embeddings
        return [
            float(np.dot(emb.embed_query(q), emb.embed_documents([t])[0]) + emb.query_constant(q))
            for q, t in text_pairs
        ]


def test_document_compressor_using_klembeddings_warns_once(emb: KLEmbeddings) -> None:
    docs = [Document(page_content=t) for t in TEXTS]
    message = (
        r"KLEmbeddings used by _CosineCompressor \(a LangChain document compressor\): it compares their vectors by "
        r"cosine similarity \(its similarity_fn\).*KLRetriever\(min_conf"
    )
    with pytest.warns(UserWarning, match=message) as seen:
        _CosineCompressor(embeddings=emb).compress_documents(docs, "cat")
        _CosineCompressor(embeddings=emb).compress_documents(docs, "tea")
    assert len([w for w in seen if "_CosineCompressor" in str(w.message)]) == 1


def test_langchain_embeddings_filter_and_redundant_filter_warn(emb: KLEmbeddings) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        filters = pytest.importorskip("langchain_classic.retrievers.document_compressors")
        transformers = pytest.importorskip("langchain_community.document_transformers")
    docs = [Document(page_content=t) for t in TEXTS]
    with pytest.warns(UserWarning, match=r"KLEmbeddings used by EmbeddingsFilter \(a LangChain document compressor\)"):
        filters.EmbeddingsFilter(embeddings=emb, k=2, similarity_threshold=None).compress_documents(docs, "cat")
    with pytest.warns(
        UserWarning, match=r"KLEmbeddings used by EmbeddingsRedundantFilter \(a LangChain document transformer\)"
    ):
        transformers.EmbeddingsRedundantFilter(embeddings=emb).transform_documents(docs)


class _InnerWrapper(Embeddings):
    """A custom wrapper holding its model under a name of its own (``self.inner``)."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.me = self  # a cycle: searched once

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


class _PydanticWrapper(BaseModel, Embeddings):
    model: Any

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return list(self.model.embed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return list(self.model.embed_query(text))


@pytest.mark.parametrize(
    "make", [_InnerWrapper, lambda e: _PydanticWrapper(model=e), lambda e: _Wrapper(_InnerWrapper(e))]
)
def test_wrapper_holding_klembeddings_under_another_name_is_found(
    emb: KLEmbeddings, direct: KLVectorStore, make: Any
) -> None:
    with pytest.warns(UserWarning, match=r"wraps a KLEmbeddings"):
        store = KLVectorStore(make(emb))
    store.add_texts(TEXTS, ids=IDS)
    _assert_same_ranking(store, direct)  # -KL scores, not the L2 of q~ and d~
    assert store.embeddings is emb


def test_wrapper_known_attribute_is_preferred(emb: KLEmbeddings, tiny_encoder: Any) -> None:
    other = KLEmbeddings(tiny_encoder, batch_size=2)
    wrapper = _InnerWrapper(other)
    wrapper.base_embeddings = emb  # type: ignore[attr-defined]
    with pytest.warns(UserWarning, match=r"wraps a KLEmbeddings"):
        store = KLVectorStore(wrapper)
    assert store.embeddings is emb


def test_embeddings_filter_with_a_dot_product_does_not_warn(emb: KLEmbeddings) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        filters = pytest.importorskip("langchain_classic.retrievers.document_compressors")

    def dot(x: Any, y: Any) -> np.ndarray:
        return np.asarray(x) @ np.asarray(y).T

    docs = [Document(page_content=t) for t in TEXTS]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # -KL = <q~, d~> + c(q): a dot product ranks as -KL
        kept = filters.EmbeddingsFilter(embeddings=emb, similarity_fn=dot, k=2, similarity_threshold=None)
        assert len(kept.compress_documents(docs, "cat")) == 2


class _PlainEmbeddings(Embeddings):
    """An ordinary embedding model of KLEmbeddings' width whose coordinates 1..k happen to be negative."""

    def __init__(self, width: int) -> None:
        self.width = width

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        rng = np.random.default_rng(len(texts))
        return (-np.abs(rng.normal(size=(len(texts), self.width))) - 0.1).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_cache_filled_by_another_model_is_refused(emb: KLEmbeddings) -> None:
    cache = InMemoryByteStore()
    CacheBackedEmbeddings = _cache_backed()
    width = len(emb.embed_documents(["width"])[0])
    other = CacheBackedEmbeddings.from_bytes_store(_PlainEmbeddings(width), cache, namespace="kl", key_encoder="sha256")
    other.embed_documents(TEXTS)  # plain vectors under the keys the reader's documents use: they decode to Gaussians
    reader = CacheBackedEmbeddings.from_bytes_store(emb, cache, namespace="kl", key_encoder="sha256")
    message = r"returned vectors that are not this KLEmbeddings' document vectors d~ \(vectors\[0\] is not one: its"
    with pytest.raises(ValueError, match=message):
        KLVectorStore(reader).add_texts(TEXTS)


def test_embeddings_clustering_filter_and_a_subclassed_filter_warn(emb: KLEmbeddings) -> None:
    pytest.importorskip("sklearn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        filters = pytest.importorskip("langchain_classic.retrievers.document_compressors")
        transformers = pytest.importorskip("langchain_community.document_transformers")
    docs = [Document(page_content=t) for t in TEXTS]
    message = r"EmbeddingsClusteringFilter \(a LangChain document transformer\): it compares their vectors by Euclid"
    with pytest.warns(UserWarning, match=message):
        transformers.EmbeddingsClusteringFilter(embeddings=emb, num_clusters=2).transform_documents(docs)

    class MyFilter(filters.EmbeddingsFilter):  # type: ignore[misc,name-defined]
        pass

    with pytest.warns(UserWarning, match=r"MyFilter \(a LangChain document compressor\): .* cosine similarity"):
        MyFilter(embeddings=emb, k=2).compress_documents(docs, "cat")


def test_compressors_that_do_not_compare_vectors_by_cosine_do_not_warn(emb: KLEmbeddings) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        rerank = pytest.importorskip("langchain_classic.retrievers.document_compressors.cross_encoder_rerank")
    docs = [Document(page_content=t) for t in TEXTS]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both rank by -KL: nothing to warn about
        kept = _KLCompressor(embeddings=emb).compress_documents(docs, "the cat sat")
        reranked = rerank.CrossEncoderReranker(model=_KLCrossEncoder(emb), top_n=2).compress_documents(docs, "a dog")
    assert len(kept) == 2
    assert len(reranked) == 2


def _nested(emb: KLEmbeddings, depth: int) -> Embeddings:
    """``emb`` inside ``depth`` wrappers of the three kinds above, in turn."""
    makes = [_Wrapper, _InnerWrapper, lambda e: _PydanticWrapper(model=e)]
    wrapped: Embeddings = emb
    for level in range(depth):
        wrapped = makes[level % len(makes)](wrapped)
    return wrapped


@pytest.mark.parametrize("depth", [6, 8])
def test_klembeddings_deep_in_wrappers_is_found(emb: KLEmbeddings, direct: KLVectorStore, depth: int) -> None:
    with pytest.warns(UserWarning, match=r"wraps a KLEmbeddings"):
        store = KLVectorStore(_nested(emb, depth))
    assert store.embeddings is emb
    store.add_texts(TEXTS, ids=IDS)
    _assert_same_ranking(store, direct)  # -KL scores, not the L2 of q~ and d~


def test_wrapper_search_is_bounded(emb: KLEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.langchain as adapter

    class Registry(Embeddings):
        """An object graph of many embeddings (a router over models), none of them a KLEmbeddings."""

        def __init__(self, n: int) -> None:
            self.models = [_PlainEmbeddings(3) for _ in range(n)]
            for i, model in enumerate(self.models):
                setattr(self, f"model_{i}", _Wrapper(model))

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError

        def embed_query(self, text: str) -> list[float]:
            raise NotImplementedError

    looked_into: list[Any] = []
    held = adapter._held_embeddings

    def counting(wrapper: Any) -> tuple[list[Any], bool]:
        looked_into.append(wrapper)
        return held(wrapper)

    monkeypatch.setattr(adapter, "_held_embeddings", counting)
    cap = adapter._MAX_WRAPPERS_SEARCHED
    assert adapter._inner_klembeddings(_nested(emb, cap // 2)) is emb
    with pytest.warns(UserWarning, match=r"through 1024 Embeddings objects .* pass that KLEmbeddings"):
        assert adapter._inner_klembeddings(_nested(emb, 2 * cap)) is None  # not walked to the end
    looked_into.clear()
    with pytest.warns(UserWarning, match=r"inside Registry through 1024 Embeddings objects"):
        assert adapter._inner_klembeddings(Registry(1_000)) is None
    assert len(looked_into) == cap  # not the 2,001 objects of the graph
