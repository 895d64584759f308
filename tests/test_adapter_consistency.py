"""The LangChain and LlamaIndex adapters agree with the store they wrap, and refuse what they cannot do.

* LlamaIndex's ``VectorStoreIndex`` embeds through ``KLEmbedding.get_text_embedding_batch``: the whole list
  is one encoder call, as ``KLStore.add`` encodes it (an int8 graph's Gaussians depend on their batch), with
  LlamaIndex's callback / instrumentation events and progress bar; a store filled that way records the
  model, so ``kl-retrievers search FOLDER`` needs no ``--model``.
* LangChain's ``KLVectorStore`` uses the batch size of the ``KLEmbeddings`` it is given and returns that
  object as ``embeddings``; the retrievers' ``k`` refuses ``True`` / ``2.0`` / ``"2"``; the dense retriever
  warns once when documents use the keys it writes its scores under; the store and the retrievers refuse
  pickling and deep copies with a message that says how to save (LangChain's own copies still work).
* LlamaIndex's store and retriever refuse an object that is no encoder; its store and retrievers have
  informative reprs.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("langchain_core")

from langchain_core.runnables import ConfigurableField, RunnableLambda
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.callbacks.schema import EventPayload
from llama_index.core.schema import TextNode

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, Gaussians, load_model
from kl_retrievers import langchain as klc
from kl_retrievers import llama_index as kli
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.index import KLStore

pytestmark = [
    pytest.mark.usefixtures("mock_llm_settings"),  # tests/conftest.py
    pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning"),
]

TEXTS = [
    "the cat sat on the mat",
    "green tea",
    "a dog in the sun and the moon and the star over black rock",
    "the moon and the star",
    "bee",
]


@pytest.fixture(scope="module")
def encoder() -> GaussianEncoder:
    return make_tiny_encoder(seed=3)


class BatchDependent:
    """The tiny encoder made batch-dependent the way int8 is (``batch_invariant`` ``False``), recording its calls.

    Each forward pass of ``batch_size`` texts (cut from the texts sorted by length, as the package's encoders
    cut them) shifts its means by a multiple of the pass's mean (a per-batch activation scale).
    """

    batch_invariant = False

    def __init__(self, inner: GaussianEncoder) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int, bool]] = []  # (texts, batch_size, show_progress_bar) per call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_documents(self, texts: Any, batch_size: int = 32, show_progress_bar: bool | None = False) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append((len(texts), batch_size, bool(show_progress_bar)))
        order = np.argsort([-len(t) for t in texts], kind="stable")
        mean = np.zeros((len(texts), self.inner.config.dim), np.float32)
        var = np.zeros_like(mean)
        for s in range(0, len(texts), batch_size):
            rows = order[s : s + batch_size]
            g = self.inner.encode_documents([texts[i] for i in rows], show_progress_bar=False).numpy()
            m = np.asarray(g.mean, dtype=np.float32)
            mean[rows] = m + np.float32(0.3) * m.mean(axis=0)
            var[rows] = g.var
        return Gaussians(mean, var)

    def encode_queries(self, texts: Any, batch_size: int = 32, show_progress_bar: bool | None = False) -> Gaussians:
        return self.inner.encode_queries(texts, batch_size=1, show_progress_bar=False)


def _index(embed: kli.KLEmbedding, texts: list[str] = TEXTS) -> kli.KLVectorStore:
    """A ``VectorStoreIndex`` over ``texts`` (ids ``"0"``, ``"1"``...) embedded by ``embed``: its vector store."""
    store = kli.KLVectorStore()
    nodes = [TextNode(text=t, id_=str(i)) for i, t in enumerate(texts)]
    VectorStoreIndex(nodes, embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=store))
    return store


# ------------------------------------------------------------------ LlamaIndex: the batch path (T4-1)
def test_vector_store_index_encodes_the_nodes_in_one_call_as_klstore_add(encoder: GaussianEncoder) -> None:
    spy = BatchDependent(encoder)
    store = _index(kli.KLEmbedding(spy, embed_batch_size=2))
    assert spy.calls == [(len(TEXTS), 2, False)]  # LlamaIndex's own batching: three calls of 2, 2 and 1
    ids = [str(i) for i in range(len(TEXTS))]
    reference = KLStore(spy, batch_size=2)
    reference.add(TEXTS, ids=ids)
    got, want = store.kl_store.get_gaussians(ids), reference.get_gaussians(ids)
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.var, want.var)


def test_batch_keeps_llama_index_events_and_progress(encoder: GaussianEncoder) -> None:
    debug = LlamaDebugHandler()
    spy = BatchDependent(encoder)
    embed = kli.KLEmbedding(spy, embed_batch_size=2, callback_manager=CallbackManager([debug]))
    vectors = embed.get_text_embedding_batch(TEXTS, show_progress=True)
    assert spy.calls == [(len(TEXTS), 2, True)]  # show_progress: the encoder's progress bar
    pairs = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert len(pairs) == 1
    end = pairs[0][1].payload or {}
    assert end[EventPayload.CHUNKS] == TEXTS
    assert end[EventPayload.EMBEDDINGS] == vectors
    assert embed.get_text_embedding_batch([]) == []


def test_async_batch_is_one_call_with_the_sync_vectors(encoder: GaussianEncoder) -> None:
    debug = LlamaDebugHandler()
    spy = BatchDependent(encoder)
    embed = kli.KLEmbedding(spy, embed_batch_size=2, callback_manager=CallbackManager([debug]))
    got = asyncio.run(embed.aget_text_embedding_batch(TEXTS, show_progress=True))
    assert spy.calls == [(len(TEXTS), 2, True)]
    assert got == embed.get_text_embedding_batch(TEXTS)
    assert len(debug.get_event_pairs(CBEventType.EMBEDDING)) == 2


def test_embeddings_cache_encodes_the_missing_texts_in_one_call(encoder: GaussianEncoder) -> None:
    from llama_index.core.storage.kvstore import SimpleKVStore

    spy = BatchDependent(encoder)
    embed = kli.KLEmbedding(spy, embed_batch_size=2, embeddings_cache=SimpleKVStore())
    first = embed.get_text_embedding_batch(TEXTS[:2])
    again = embed.get_text_embedding_batch(TEXTS)
    assert spy.calls == [(2, 2, False), (len(TEXTS) - 2, 2, False)]
    assert again[:2] == first


# ------------------------------------------------------------------ LlamaIndex: the model is recorded (T4-7)
def test_vector_store_index_records_the_klembedding_model(
    encoder: GaussianEncoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    folder = tmp_path / "model"
    encoder.save_pretrained(folder)
    loaded = load_model(str(folder), backend="torch")
    store = _index(kli.KLEmbedding(loaded))
    assert store.kl_store.encoder is loaded
    persist = tmp_path / "storage"
    store.persist(str(persist / "default__vector_store.json"))
    reloaded = KLStore.load(persist / "default__vector_store.klstore")
    assert reloaded.saved_encoder == loaded.name_or_path
    capsys.readouterr()
    assert main(["search", str(persist), "the moon", "-k", "2"]) == 0  # no --model needed
    assert "moon" in capsys.readouterr().out


def test_an_encoder_of_another_dimension_is_not_recorded(encoder: GaussianEncoder) -> None:
    store = kli.KLVectorStore()
    vectors = kli.KLEmbedding(encoder).get_text_embedding_batch(TEXTS[:2])
    store._adopt_document_encoder(make_tiny_encoder(dim=4), vectors)  # noted as if it gave these vectors
    store.add([TextNode(text=t, id_=t, embedding=v) for t, v in zip(TEXTS[:2], vectors, strict=True)])
    assert store.kl_store.encoder is None


def test_two_encoders_embedding_for_one_store_record_none(encoder: GaussianEncoder) -> None:
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SemanticSplitterNodeParser

    other = make_tiny_encoder(seed=11)
    store = kli.KLVectorStore()
    splitter = SemanticSplitterNodeParser(embed_model=kli.KLEmbedding(other))
    pipeline = IngestionPipeline(transformations=[splitter, kli.KLEmbedding(encoder)], vector_store=store)
    pipeline.run(documents=[Document(text="the cat sat on the mat. green tea. the moon and the star. bee.")])
    assert len(store.kl_store) and store.kl_store.encoder is None  # the splitter's or the pipeline's: unknown


def test_clear_forgets_the_recorded_encoder(encoder: GaussianEncoder) -> None:
    other = make_tiny_encoder(seed=12)
    store = _index(kli.KLEmbedding(encoder))
    assert store.kl_store.encoder is encoder
    store.clear()
    assert store.kl_store.encoder is None
    nodes = [TextNode(text=t, id_=t) for t in TEXTS[:2]]
    VectorStoreIndex(
        nodes, embed_model=kli.KLEmbedding(other), storage_context=StorageContext.from_defaults(vector_store=store)
    )
    assert store.kl_store.encoder is other
    store.delete_nodes([t for t in TEXTS[:2]])  # emptied by deletes: forgotten too
    assert store.kl_store.encoder is None
    given = kli.KLVectorStore(encoder=encoder)  # an encoder the user gave stays
    given.add([TextNode(text="x", id_="x")])
    given.clear()
    assert given.kl_store.encoder is encoder


def test_a_failed_build_leaves_no_encoder_for_later_nodes(encoder: GaussianEncoder) -> None:
    other = make_tiny_encoder(seed=13)
    store = kli.KLVectorStore()
    with pytest.raises(Exception, match="serialize"):
        VectorStoreIndex(
            [TextNode(text="the cat", metadata={"x": object()})],
            embed_model=kli.KLEmbedding(encoder),
            storage_context=StorageContext.from_defaults(vector_store=store),
        )
    assert store.kl_store.encoder is None and not len(store.kl_store)
    embed = kli.KLEmbedding(other)
    nodes = [TextNode(text=t, id_=t, embedding=embed.get_text_embedding(t)) for t in TEXTS[:2]]
    VectorStoreIndex(nodes, embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=store))
    assert len(store.kl_store) == 2 and store.kl_store.encoder is None  # embedded elsewhere: model unknown


def test_nodes_embedded_by_another_encoder_are_not_recorded(encoder: GaussianEncoder) -> None:
    store = kli.KLVectorStore()
    store._adopt_document_encoder(encoder, kli.KLEmbedding(encoder).get_text_embedding_batch(TEXTS[:2]))
    vectors = kli.KLEmbedding(make_tiny_encoder(seed=14)).get_text_embedding_batch(TEXTS[:2])
    store.add([TextNode(text=t, id_=t, embedding=v) for t, v in zip(TEXTS[:2], vectors, strict=True)])
    assert store.kl_store.encoder is None


# ------------------------------------------------------------------ LlamaIndex: encoders and reprs (T5-2, T5-6)
@pytest.mark.parametrize("bad", [42, object(), 2.5])
def test_llama_index_store_refuses_an_object_that_is_no_encoder(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"encoder must be a Gaussian encoder .*got (int|object|float)"):
        kli.KLVectorStore(encoder=bad)


def test_llama_index_retriever_refuses_top_k_as_its_encoder(encoder: GaussianEncoder) -> None:
    store = kli.KLVectorStore(encoder=encoder)
    with pytest.raises(TypeError, match=r"got int 3 \(for similarity_top_k=3, pass it by keyword\)"):
        kli.KLRetriever(store, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="encoder must be a Gaussian encoder"):
        kli.KLRetriever.from_defaults(vector_store=store, encoder=object())


def test_llama_index_reprs_name_the_store_and_settings(encoder: GaussianEncoder) -> None:
    store = _index(kli.KLEmbedding(encoder))
    assert repr(store) == "KLVectorStore(KLStore(index_type='flat', dim=8, documents=5), relevance='exp')"
    assert "is_embedding_query=False" in repr(kli.KLVectorStore(is_embedding_query=False))
    retriever = kli.KLRetriever(store, similarity_top_k=2, doc_ids=["d"])
    assert repr(retriever) == f"KLRetriever(similarity_top_k=2, vector_store={store!r}, doc_ids=['d'])"
    hybrid = KLHybridStore(encoder)
    hybrid.add(TEXTS)
    text = repr(kli.KLHybridRetriever(hybrid, similarity_top_k=3, fusion="rrf"))
    assert text.startswith("KLHybridRetriever(similarity_top_k=3, store=KLHybridStore(fusion='adaptive', documents=5")
    assert text.endswith(", fusion='rrf')")


# ------------------------------------------------------------------ LangChain: the embeddings given (T4-3)
def test_langchain_store_uses_the_klembeddings_batch_size(encoder: GaussianEncoder) -> None:
    spy = BatchDependent(encoder)
    embeddings = klc.KLEmbeddings(spy, batch_size=2)
    store = klc.KLVectorStore.from_texts(TEXTS, embeddings, ids=[str(i) for i in range(len(TEXTS))])
    assert spy.calls == [(len(TEXTS), 2, False)]
    assert store.batch_size == 2 and store.embeddings is embeddings
    vectors = np.asarray(embeddings.embed_documents(TEXTS))
    k = (vectors.shape[1] - 1) // 2
    stored = store.store.get_gaussians([str(i) for i in range(len(TEXTS))])
    np.testing.assert_allclose(vectors[:, k + 1 :] * (-1 / (2 * vectors[:, 1 : k + 1])), stored.mean, rtol=1e-6)
    assert klc.KLVectorStore(embeddings, batch_size=3).batch_size == 3  # an explicit batch_size wins


def test_langchain_loading_keeps_the_klembeddings_given(encoder: GaussianEncoder, tmp_path: Path) -> None:
    embeddings = klc.KLEmbeddings(encoder, batch_size=5)
    store = klc.KLVectorStore.from_texts(TEXTS, embeddings)
    store.save_local(tmp_path / "lc")
    for loaded in (
        klc.KLVectorStore.load_local(tmp_path / "lc", embeddings),
        klc.KLVectorStore.load_local(tmp_path / "lc", embeddings=embeddings),
        klc.KLVectorStore.deserialize_from_bytes(store.serialize_to_bytes(), embeddings),
    ):
        assert loaded.embeddings is embeddings and loaded.batch_size == 5
        assert (
            loaded.similarity_search("moon", k=1)[0].page_content
            == store.similarity_search("moon", k=1)[0].page_content
        )


def test_langchain_store_returns_one_embeddings_object(encoder: GaussianEncoder) -> None:
    store = klc.KLVectorStore(encoder)
    assert store.embeddings is store.embeddings
    assert store.embeddings.batch_size == 32


# ------------------------------------------------------------------ LangChain: k (T4-8)
@pytest.mark.parametrize("k", [True, 2.0, "2"])
def test_langchain_retrievers_refuse_a_k_that_is_no_int(encoder: GaussianEncoder, k: Any) -> None:
    store = klc.KLVectorStore.from_texts(TEXTS, encoder)
    message = f"k must be a positive integer; got {k!r}"
    with pytest.raises(ValueError, match=message) as at_invoke:
        klc.KLRetriever.from_store(store).invoke("cat", k=k)
    assert message in str(at_invoke.value)
    with pytest.raises(ValueError, match=message):
        klc.KLRetriever.from_store(store, k=k)
    with pytest.raises(ValueError, match=message):
        klc.KLHybridRetriever(store=KLHybridStore(encoder), k=k)


# ------------------------------------------------------------------ LangChain: reserved keys (T5-3)
def test_langchain_dense_retriever_warns_once_about_reserved_keys(
    encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    metadatas = [{"neg_kl": "mine", "confidence": "high"} for _ in TEXTS]
    retriever = klc.KLRetriever.from_texts(TEXTS, encoder, metadatas=metadatas, k=2)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        retriever.invoke("cat")
        retriever.invoke("tea")
    warned = [r.getMessage() for r in caplog.records if "which a search writes its scores under" in r.getMessage()]
    assert len(warned) == 1
    assert "'confidence', 'neg_kl'" in warned[0] and "query_uncertainty" in warned[0]


def test_langchain_reserved_key_warning_is_once_per_store(
    encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    metadatas = [{"neg_kl": "mine"} for _ in TEXTS]
    retriever = klc.KLRetriever.from_texts(TEXTS, encoder, metadatas=metadatas, k=2)
    configurable = retriever.configurable_fields(k=ConfigurableField(id="top_k"))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        for _ in range(3):  # a new retriever per invoke
            configurable.invoke("cat", config={"configurable": {"top_k": 1}})
        retriever.invoke("tea")
        klc.KLRetriever.from_store(retriever.vectorstore).invoke("bee")
    warned = [r.getMessage() for r in caplog.records if "which a search writes its scores under" in r.getMessage()]
    assert len(warned) == 1
    assert "the returned documents' metadata uses the key(s) 'neg_kl'" in warned[0]
    assert "added document metadata" not in warned[0]


def test_langchain_retriever_with_other_keys_does_not_warn(
    encoder: GaussianEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    metadatas = [{"neg_kl": "mine"} for _ in TEXTS]
    retriever = klc.KLRetriever.from_texts(TEXTS, encoder, metadatas=metadatas, k=2, score_key="kl_score")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.langchain"):
        docs = retriever.invoke("cat")
    assert docs[0].metadata["neg_kl"] == "mine"
    assert not [r for r in caplog.records if "which a search writes its scores under" in r.getMessage()]


# ------------------------------------------------------------------ LangChain: copies (T5-4)
def _langchain_objects(encoder: GaussianEncoder) -> list[Any]:
    store = klc.KLVectorStore.from_texts(TEXTS, encoder)
    return [store, klc.KLRetriever.from_store(store, k=2), klc.KLHybridRetriever.from_texts(TEXTS, encoder, k=2)]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_langchain_objects_refuse_deep_copies_naming_how_to_save(encoder: GaussianEncoder, how: str) -> None:
    for obj, saving in zip(_langchain_objects(encoder), ["save_local", "save_local", "store.save"], strict=True):
        with pytest.raises(TypeError, match=f"cannot be pickled or deep-copied .*{saving}"):
            copy.deepcopy(obj) if how == "deepcopy" else pickle.dumps(obj)


def test_langchain_copies_and_runnables_still_work(encoder: GaussianEncoder) -> None:
    store, *retrievers = _langchain_objects(encoder)
    view = copy.copy(store)
    assert view.store is store.store and len(view.similarity_search("cat", k=2)) == 2
    for retriever in retrievers:
        assert copy.copy(retriever).invoke("cat")
        assert len(retriever.model_copy(update={"k": 1}).invoke("cat")) == 1
        assert len(retriever.with_config(tags=["t"]).invoke("cat")) == 2
        assert [len(d) for d in retriever.batch(["cat", "tea"])] == [2, 2]
        assert len((retriever | RunnableLambda(lambda docs: docs[:1])).invoke("cat")) == 1
        configurable = retriever.configurable_fields(k=ConfigurableField(id="top_k"))
        assert len(configurable.invoke("cat", config={"configurable": {"top_k": 1}})) == 1
