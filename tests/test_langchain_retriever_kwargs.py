"""KLRetriever / KLHybridRetriever as drop-ins for LangChain's own retrievers (kl_retrievers/langchain.py).

Fixed here (each test below failed on the previous code):

1. Keywords that are no field were dropped by pydantic: ``KLRetriever(vectorstore=s, search_kwargs={"k": 1})``
   (``VectorStoreRetriever``'s spelling) returned 4 documents, a misspelt ``min_confidance=0.9`` never
   abstained, ``search_type="mmr"`` searched by similarity. Now ``search_kwargs`` is a field (per-call
   defaults, a ``configurable_fields`` target), ``search_type="similarity"`` is accepted, and anything
   else is refused naming the keyword (and, for ``EnsembleRetriever`` / ``BM25Retriever`` options, the
   equivalent here).
2. ``from_texts`` passed every extra keyword to the store: ``filter=`` or ``search_kwargs=`` raised
   ``KLStore.__init__() got an unexpected keyword argument``, ``c=`` / ``weights=`` / ``bm25_params=`` named
   ``KLStore`` and no equivalent; ``ids`` was keyword-only (``KLVectorStore.from_texts`` and FAISS take it
   fourth).
3. Run metadata lacked ``ls_vector_store_provider`` / ``ls_embedding_provider`` that ``VectorStoreRetriever``
   reports.

Also pinned (already right): per-call ``k`` through ``batch`` / ``abatch`` / ``ainvoke`` / ``astream``,
documents' ``id``, metadata copies, ``RunnableParallel``. All on a tiny random encoder.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.runnables import ConfigurableField, RunnableParallel

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.langchain import KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore

TEXTS = HYBRID_TEXTS
IDS = [f"d{i}" for i in range(len(TEXTS))]
META = [{"n": i, "even": i % 2 == 0, "nest": {"a": [i]}} for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def embeddings() -> KLEmbeddings:
    return KLEmbeddings(make_tiny_encoder(seed=1))


@pytest.fixture
def store(embeddings: KLEmbeddings) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, embeddings, META, IDS)


@pytest.fixture
def hybrid(embeddings: KLEmbeddings) -> KLHybridRetriever:
    return KLHybridRetriever.from_texts(TEXTS, embeddings, META, ids=IDS, k=3)


class _Starts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.metadata.append(dict(kwargs.get("metadata") or {}))


# ------------------------------------------------------------------ 1. search_kwargs, search_type, unknown keywords
def test_search_kwargs_are_per_call_defaults(store: KLVectorStore) -> None:
    retriever = KLRetriever(vectorstore=store, search_kwargs={"k": 1})
    assert len(retriever.invoke("cat")) == 1
    assert len(retriever.invoke("cat", k=3)) == 3  # a call keyword wins over search_kwargs
    assert len(KLRetriever(vectorstore=store, k=5, search_kwargs={"k": 2}).invoke("cat")) == 2  # over the field too
    filtered = KLRetriever(vectorstore=store, k=len(TEXTS), search_kwargs={"filter": {"even": True}})
    assert {d.metadata["n"] % 2 for d in filtered.invoke("cat")} == {0}
    assert len(filtered.invoke("cat", filter=None)) == len(TEXTS)  # filter=None clears it for the call
    assert [len(d) for d in retriever.batch(["cat", "tea"])] == [1, 1]
    assert [len(d) for d in asyncio.run(retriever.abatch(["cat", "tea"]))] == [1, 1]


def test_search_kwargs_is_a_configurable_field(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    dense = KLRetriever(vectorstore=store).configurable_fields(search_kwargs=ConfigurableField(id="search_kwargs"))
    assert len(dense.with_config(configurable={"search_kwargs": {"k": 1}}).invoke("cat")) == 1
    assert len(dense.invoke("cat")) == 4
    fused = hybrid.configurable_fields(search_kwargs=ConfigurableField(id="sk"))
    docs = fused.with_config(configurable={"sk": {"fusion": "rrf", "k": 2}}).invoke("cat")
    assert len(docs) == 2 and {d.metadata["fusion"] for d in docs} == {"rrf"}


def test_hybrid_search_kwargs_fusion_settings(hybrid: KLHybridRetriever) -> None:
    convex = KLHybridRetriever(store=hybrid.store, search_kwargs={"fusion": "convex", "weight": 0.9})
    assert {d.metadata["dense_weight"] for d in convex.invoke("cat")} == {0.9}
    assert {d.metadata["fusion"] for d in convex.invoke("cat", fusion="rrf")} == {"rrf"}
    with pytest.raises(ValueError, match="rfr"):
        KLHybridRetriever(store=hybrid.store, search_kwargs={"fusion": "rfr"})


@pytest.mark.parametrize(
    ("key", "hint"),
    [("score_threshold", "similarity_score_threshold"), ("fetch_k", "search_type='mmr'"), ("foo", "takes k")],
)
def test_search_kwargs_a_search_does_not_take_are_refused(store: KLVectorStore, key: str, hint: str) -> None:
    with pytest.raises(TypeError, match=key) as info:
        KLRetriever(vectorstore=store, search_kwargs={key: 0.5})
    assert hint in str(info.value)


def test_bad_search_kwargs_values_are_refused(store: KLVectorStore) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer; got 0"):
        KLRetriever(vectorstore=store, search_kwargs={"k": 0})
    with pytest.raises(ValueError, match="min_confidence"):
        KLRetriever(vectorstore=store, search_kwargs={"min_confidence": 2})
    with pytest.raises(TypeError, match="search_kwargs must be a dict; got list"):
        KLRetriever(vectorstore=store, search_kwargs=[("k", 1)])  # type: ignore[arg-type]


def test_search_type_similarity_only(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    assert len(KLRetriever(vectorstore=store, search_type="similarity").invoke("cat")) == 4
    for bad in ("mmr", "similarity_score_threshold"):
        with pytest.raises(ValueError, match=f"search_type='similarity' only; got '{bad}'.*as_retriever"):
            KLRetriever(vectorstore=store, search_type=bad)
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            KLHybridRetriever(store=hybrid.store, search_type=bad)


def test_unknown_keywords_are_refused_not_dropped(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    with pytest.raises(TypeError, match=r"KLRetriever got unexpected keyword argument\(s\) \['min_confidance'\]"):
        KLRetriever(vectorstore=store, min_confidance=0.9)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="min_confidence"):  # the fields are listed
        KLRetriever.from_store(store, min_confidance=0.9)
    with pytest.raises(TypeError, match=r"\['c', 'weights'\].*rrf_k.*fusion='rrf'"):
        KLHybridRetriever(store=hybrid.store, weights=[0.5, 0.5], c=60)  # type: ignore[call-arg]


# ------------------------------------------------------------------ 2. from_texts / from_documents
def test_from_texts_takes_ids_by_position(embeddings: KLEmbeddings) -> None:
    dense = KLRetriever.from_texts(TEXTS, embeddings, META, IDS, k=len(TEXTS))
    assert {d.id for d in dense.invoke("cat")} == set(IDS)
    fused = KLHybridRetriever.from_texts(TEXTS, embeddings, META, IDS, k=len(TEXTS))
    assert {d.id for d in fused.invoke("cat")} == set(IDS)


def test_from_texts_gives_retriever_fields_to_the_retriever(embeddings: KLEmbeddings) -> None:
    dense = KLRetriever.from_texts(
        TEXTS, embeddings, META, filter={"even": True}, search_kwargs={"k": 2}, relevance="inverse", tags=["mine"]
    )
    assert dense.vectorstore.relevance == "inverse" and dense.tags == ["mine"]  # the store's option, the retriever's
    docs = dense.invoke("cat")
    assert len(docs) == 2 and all(d.metadata["even"] for d in docs)
    fused = KLHybridRetriever.from_texts(
        TEXTS, embeddings, META, fusion="convex", weight=0.8, filter={"even": True}, search_kwargs={"k": 2}
    )
    docs = fused.invoke("cat")
    assert len(docs) == 2 and all(d.metadata["even"] for d in docs) and docs[0].metadata["dense_weight"] == 0.8
    from_docs = KLRetriever.from_documents(
        [Document(page_content=t, metadata=m, id=i) for t, m, i in zip(TEXTS, META, IDS, strict=True)],
        embeddings,
        search_kwargs={"k": 1},
    )
    assert [d.id for d in from_docs.invoke(TEXTS[3])] == [IDS[3]]


@pytest.mark.parametrize(
    ("option", "value", "hint"),
    [
        ("c", 60, "rrf_k="),
        ("weights", [0.3, 0.7], "fusion='convex' with weight="),
        ("id_key", "doc_id", "fused by their store id"),
        ("bm25_params", {"k1": 1.2}, "k1= and b="),
        ("preprocess_func", str.split, "token_pattern="),
    ],
)
def test_ensemble_and_bm25_options_name_the_equivalent(
    embeddings: KLEmbeddings, option: str, value: Any, hint: str
) -> None:
    with pytest.raises(
        TypeError, match=f"KLHybridRetriever.from_texts got unexpected keyword argument.*'{option}'"
    ) as info:
        KLHybridRetriever.from_texts(TEXTS, embeddings, **{option: value})
    assert hint in str(info.value)
    with pytest.raises(TypeError, match=option):
        KLRetriever.from_texts(TEXTS, embeddings, **{option: value})


# ------------------------------------------------------------------ 3. tracing metadata
def test_runs_report_store_and_embedding_providers(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    starts = _Starts()
    KLRetriever(vectorstore=store).invoke("cat", config={"callbacks": [starts], "metadata": {"mine": 1}})
    hybrid.invoke("cat", config={"callbacks": [starts]})
    store.as_retriever().invoke("cat", config={"callbacks": [starts]})
    dense, fused, langchain = starts.metadata
    assert dense == {"mine": 1, "ls_retriever_name": "kl", "ls_vector_store_provider": "KLVectorStore",
                     "ls_embedding_provider": "KLEmbeddings"}  # fmt: skip
    assert fused["ls_retriever_name"] == "klhybrid" and fused["ls_vector_store_provider"] == "KLHybridStore"
    assert fused["ls_embedding_provider"] == "KLEmbeddings"
    # the same providers as LangChain's own VectorStoreRetriever over the store
    assert {k: v for k, v in langchain.items() if k != "ls_retriever_name"} == {
        k: v for k, v in dense.items() if k.startswith("ls_") and k != "ls_retriever_name"
    }


# ------------------------------------------------------------------ pinned behaviour
def test_documents_have_ids_and_copied_metadata(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    for retriever in (KLRetriever(vectorstore=store), hybrid, store.as_retriever()):
        doc = retriever.invoke("cat")[0]
        assert doc.id in IDS
        doc.metadata["nest"]["a"].append(99)
        doc.metadata["added"] = True
        stored = store.get_by_ids([doc.id])[0].metadata if retriever is not hybrid else None
        assert stored is None or stored == META[IDS.index(str(doc.id))]
    again = {d.id: d.metadata for d in hybrid.invoke("cat", k=len(TEXTS))}
    assert all(m["nest"] == META[IDS.index(str(i))]["nest"] and "added" not in m for i, m in again.items())


def test_async_stream_and_parallel_keep_per_call_settings(store: KLVectorStore, hybrid: KLHybridRetriever) -> None:
    dense = KLRetriever(vectorstore=store, k=3)

    async def run() -> tuple[int, int, list[int]]:
        one = await dense.ainvoke("cat", k=1)
        streamed = [chunk async for chunk in hybrid.astream("cat", k=2)]
        both = await RunnableParallel(dense=dense, hybrid=hybrid).ainvoke("cat")
        return len(one), len(streamed[0]), [len(both["dense"]), len(both["hybrid"])]

    assert asyncio.run(run()) == (1, 2, [3, 3])


# --------------------------------------------------------------------------- review fixes (stop 41)
def test_hybrid_fusion_in_search_kwargs_is_checked_as_a_call_uses_it() -> None:
    base = KLHybridRetriever.from_texts(TEXTS, KLEmbeddings(make_tiny_encoder()))
    store = base.store
    retriever = KLHybridRetriever(store=store, fusion="convex", weight=0.3, search_kwargs={"fusion": "rrf"})
    assert retriever.invoke("cat")  # rrf: the convex field weight does not apply, as in invoke(q, fusion="rrf")
    assert KLHybridRetriever(store=store, weight=0.3, search_kwargs={"fusion": "convex"}).invoke("cat")
    with pytest.raises(ValueError, match="weight"):
        KLHybridRetriever(store=store, fusion="rrf", weight=0.3)  # refused at construction, as before


def test_search_kwargs_assigned_later_are_checked_at_the_call() -> None:
    retriever = KLRetriever.from_texts(TEXTS, KLEmbeddings(make_tiny_encoder()))
    retriever.search_kwargs = {"score_threshold": 0.9}
    with pytest.raises(TypeError, match=r"search_kwargs holds \['score_threshold'\], which it does not take"):
        retriever.invoke("cat")


def test_min_confidence_in_search_kwargs_abstains() -> None:
    retriever = KLRetriever.from_texts(
        TEXTS,
        KLEmbeddings(make_tiny_encoder()),
        calibrator=max_score_calibrator(),
        search_kwargs={"min_confidence": 1.0},
    )
    assert retriever.invoke("cat") == []  # a floor of 1.0 is never reached
    assert retriever.invoke("cat", min_confidence=None)  # a per-call None clears it
