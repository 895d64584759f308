"""LangChain: calibrated confidence on every result, abstention (``min_confidence``) and KLHybridRetriever.

Unit tests on a tiny random encoder (no calibration of its own): the confidence path is tested
with a :class:`ConfidenceCalibrator` fitted on synthetic scores. With this encoder a query equal
to a stored text scores ``-KL ~ 0`` (identical Gaussians) and any other query about ``-2e-4`` or
less, so a calibrator on ``max_score`` separates "found it" from "nothing relevant".
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableBranch, RunnableLambda, RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests

import kl_retrievers._confidence as confidence_module
from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.calibration import CALIBRATION_FILE, ConfidenceCalibrator
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.langchain import (
    ABSTENTION_EVENT,
    CONFIDENCE_KEY,
    KLEmbeddings,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
)

TEXTS = HYBRID_TEXTS
META = [{"n": i, "even": i % 2 == 0} for i in range(len(TEXTS))]
UNRELATED = "hello world query"


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


@pytest.fixture(scope="module")
def store(encoder: Any) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), META, ids=[f"d{i}" for i in range(len(TEXTS))])


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which models were already warned about (the warning is once per model per process)."""
    monkeypatch.setattr(confidence_module, "_WARNED", set())


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


# ------------------------------------------------------------------ confidence on every result
def test_dense_results_carry_neg_kl_uncertainty_and_confidence(
    store: KLVectorStore, calibrator: ConfidenceCalibrator
) -> None:
    retriever = KLRetriever.from_store(store, k=3, calibrator=calibrator)
    hit = retriever.invoke(TEXTS[2])
    miss = retriever.invoke(UNRELATED)
    assert hit[0].page_content == TEXTS[2] and len(hit) == 3
    for docs in (hit, miss):
        values = {d.metadata[CONFIDENCE_KEY] for d in docs}
        assert len(values) == 1  # the query's confidence, on each of its documents
        (value,) = values
        assert 0.0 <= value <= 1.0
        assert all(d.metadata["neg_kl"] <= 0 and math.isfinite(d.metadata["query_uncertainty"]) for d in docs)
    assert hit[0].metadata[CONFIDENCE_KEY] > 0.9 > 0.1 > miss[0].metadata[CONFIDENCE_KEY]
    # exactly the calibrator's probability for the query's top scores
    scores = [s for _, s in store.similarity_search_with_score(UNRELATED, k=3)]
    assert miss[0].metadata[CONFIDENCE_KEY] == pytest.approx(calibrator.confidence(scores, 0.0))
    # the stored documents are not changed
    assert CONFIDENCE_KEY not in store.get_by_ids(["d2"])[0].metadata


def test_k1_still_reads_the_top_two_scores(store: KLVectorStore) -> None:
    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [1e-4], [2e-4], [3e-4]], [0, 0, 1, 1])
    docs = KLRetriever.from_store(store, k=1, calibrator=cal).invoke(TEXTS[0])
    top2 = [s for _, s in store.similarity_search_with_score(TEXTS[0], k=2)]
    assert len(docs) == 1
    assert docs[0].metadata[CONFIDENCE_KEY] == pytest.approx(cal.confidence(top2, 0.0))


def test_the_models_own_calibrator_is_found(encoder: Any, calibrator: ConfidenceCalibrator, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    calibrator.save(folder / CALIBRATION_FILE)
    named = make_tiny_encoder(seed=1)
    named.name_or_path = str(folder)  # a saved model folder that ships its calibration
    retriever = KLRetriever.from_texts(TEXTS, KLEmbeddings(named), k=2)
    assert retriever.invoke(TEXTS[1])[0].metadata[CONFIDENCE_KEY] > 0.9


def test_the_default_models_calibrator_is_the_shipped_one() -> None:
    class Encoder:
        name_or_path = "kl_retrievers:minilm-gauss-soup"

    from kl_retrievers.calibration import default_calibrator

    cal = confidence_module.ConfidenceScorer().calibrator(Encoder())
    assert cal is not None and cal.to_dict()["coef"] == default_calibrator().to_dict()["coef"]


def test_no_calibration_gives_none_and_one_warning(
    store: KLVectorStore, fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    retriever = KLRetriever.from_store(store, k=2)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        first = retriever.invoke(TEXTS[0])
        retriever.invoke(TEXTS[1])
        KLRetriever.from_store(store, k=2).invoke(TEXTS[2])
    assert [d.metadata[CONFIDENCE_KEY] for d in first] == [None, None]
    warnings = [r for r in caplog.records if "ships no confidence calibration" in r.getMessage()]
    assert len(warnings) == 1 and "tiny-random" in warnings[0].getMessage()


def test_relevance_scores_and_threshold_are_unchanged(store: KLVectorStore) -> None:
    pairs = store.similarity_search_with_relevance_scores(TEXTS[0], k=2)
    assert pairs[0][1] == pytest.approx(1.0) and set(pairs[0][0].metadata) == {"n", "even"}
    kept = store.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9999999})
    assert [d.page_content for d in kept.invoke(TEXTS[0])] == [TEXTS[0]]


# ------------------------------------------------------------------ abstention
def test_min_confidence_abstains_with_empty_list_log_and_event(
    store: KLVectorStore, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    retriever = KLRetriever.from_store(store, k=2, calibrator=calibrator, min_confidence=0.5)
    handler = _Events()
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers._confidence"):
        refused = retriever.invoke(UNRELATED, config={"callbacks": [handler]})
    assert refused == []
    assert any("abstained on 'hello world query'" in r.getMessage() for r in caplog.records)
    assert len(handler.events) == 1
    name, data = handler.events[0]
    assert name == ABSTENTION_EVENT and data["query"] == UNRELATED and data["min_confidence"] == 0.5
    assert data["confidence"] < 0.5
    answered = retriever.invoke(TEXTS[3], config={"callbacks": [handler]})
    assert answered[0].page_content == TEXTS[3] and answered[0].metadata[CONFIDENCE_KEY] >= 0.5
    assert len(handler.events) == 1  # no event when answering
    assert len(retriever.invoke(UNRELATED, min_confidence=0.0)) == 2  # per-call override
    assert asyncio.run(retriever.ainvoke(UNRELATED)) == []


def test_abstention_shows_in_astream_events(store: KLVectorStore, calibrator: ConfidenceCalibrator) -> None:
    retriever = KLRetriever.from_store(store, calibrator=calibrator, min_confidence=0.5)

    async def events() -> list[Any]:
        return [e async for e in retriever.astream_events(UNRELATED, version="v2")]

    custom = [e for e in asyncio.run(events()) if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [ABSTENTION_EVENT]


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True, [0.5]])
def test_min_confidence_outside_0_1_or_not_a_number_is_refused(
    store: KLVectorStore, calibrator: ConfidenceCalibrator, bad: Any
) -> None:
    pattern = r"min_confidence must be a number in \[0, 1\].*got " + repr(bad).replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ValueError, match=pattern):
        KLRetriever.from_store(store, calibrator=calibrator, min_confidence=bad)
    with pytest.raises(ValueError, match=pattern):
        KLRetriever.from_store(store, calibrator=calibrator).invoke("x", min_confidence=bad)
    hybrid = KLHybridStore(store.store.encoder, fusion="rrf")
    with pytest.raises(ValueError, match=pattern):
        KLHybridRetriever(store=hybrid, calibrator=calibrator, min_confidence=bad)


def test_min_confidence_without_a_calibrator_is_refused(store: KLVectorStore, fresh_warnings: None) -> None:
    retriever = KLRetriever.from_store(store, min_confidence=0.3)
    with pytest.raises(ValueError, match=r"min_confidence=0.3 needs a confidence calibrator.*'tiny-random'"):
        retriever.invoke(TEXTS[0])


def test_bad_calibrators_are_refused(store: KLVectorStore) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        KLRetriever.from_store(store, calibrator=ConfidenceCalibrator())
    needs_ref = ConfidenceCalibrator(["nqc"]).fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ValueError, match=r"\['nqc'\] need a corpus reference"):
        KLRetriever.from_store(store, calibrator=needs_ref)
    with pytest.raises(TypeError, match="ConfidenceCalibrator"):
        KLRetriever.from_store(store, calibrator=42)


def _branching_chain(retriever: BaseRetriever) -> Any:
    """Answer with the LLM from the documents, or say so without calling it when the retriever abstains."""
    prompt = ChatPromptTemplate.from_template("Answer from the context.\n{context}\n\nQuestion: {question}")
    llm = FakeListChatModel(responses=["an answer"] * 10)

    def inputs(x: dict[str, Any]) -> dict[str, Any]:
        return {"context": "\n".join(d.page_content for d in x["docs"]), "question": x["question"]}

    answer = RunnableLambda(inputs) | prompt | llm | StrOutputParser()
    return {"docs": retriever, "question": RunnablePassthrough()} | RunnableBranch(
        (lambda x: not x["docs"], RunnableLambda(lambda x: "I don't know.")), answer
    )


def test_lcel_chain_branches_on_abstention(store: KLVectorStore, calibrator: ConfidenceCalibrator) -> None:
    chain = _branching_chain(KLRetriever.from_store(store, k=2, calibrator=calibrator, min_confidence=0.5))
    assert chain.invoke(TEXTS[4]) == "an answer"
    assert chain.invoke(UNRELATED) == "I don't know."
    assert asyncio.run(chain.ainvoke(UNRELATED)) == "I don't know."
    assert chain.batch([TEXTS[4], UNRELATED]) == ["an answer", "I don't know."]


# ------------------------------------------------------------------ hybrid
@pytest.fixture(scope="module")
def hybrid(encoder: Any) -> KLHybridStore:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))], metadatas=META)
    return store


HYBRID_KEYS = {"fused_score", "fusion", "neg_kl", "bm25", "dense_rank", "bm25_rank", "dense_weight"}


def test_hybrid_retriever_metadata_and_fusion_modes(hybrid: KLHybridStore, calibrator: ConfidenceCalibrator) -> None:
    retriever = KLHybridRetriever(store=hybrid, k=3, calibrator=calibrator)
    docs = retriever.invoke("black rock")
    assert docs[0].page_content == TEXTS[4] and docs[0].id == "d4"  # BM25 finds the words
    meta = docs[0].metadata
    assert HYBRID_KEYS | {"query_uncertainty", CONFIDENCE_KEY, "n", "even"} == set(meta)
    assert meta["fusion"] == "rrf" and meta["bm25_rank"] == 1 and meta["dense_weight"] is None
    assert 0.0 <= meta[CONFIDENCE_KEY] <= 1.0 and len({d.metadata[CONFIDENCE_KEY] for d in docs}) == 1
    expected = hybrid.search("black rock", k=3)
    assert [d.id for d in docs] == [r.id for r in expected]
    assert [d.metadata["fused_score"] for d in docs] == pytest.approx([r.score for r in expected])
    convex = retriever.invoke("black rock", fusion="convex", weight=1.0)  # dense only
    dense = KLRetriever.from_texts(TEXTS, hybrid.encoder, ids=[f"d{i}" for i in range(len(TEXTS))], k=3)
    assert [d.id for d in convex] == [d.id for d in dense.invoke("black rock")]
    assert {d.metadata["dense_weight"] for d in convex} == {1.0}
    assert retriever.invoke("black rock", filter={"even": True})[0].metadata["n"] % 2 == 0
    adaptive = KLHybridRetriever(store=hybrid, k=2, fusion="adaptive").invoke("black rock")
    assert all(0.0 <= d.metadata["dense_weight"] <= 1.0 for d in adaptive)


def test_hybrid_bad_fusion_settings_fail_at_construction(hybrid: KLHybridStore) -> None:
    with pytest.raises(ValueError, match="sum"):
        KLHybridRetriever(store=hybrid, fusion="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\].*got 1.5"):
        KLHybridRetriever(store=hybrid, fusion="convex", weight=1.5)
    with pytest.raises(ValueError, match="k must be"):
        KLHybridRetriever(store=hybrid, k=0)
    with pytest.raises(ValueError):
        KLHybridRetriever(store="not a store")  # type: ignore[arg-type]


def test_hybrid_abstains_and_branches_in_lcel_sync_and_async(
    hybrid: KLHybridStore, calibrator: ConfidenceCalibrator
) -> None:
    retriever = KLHybridRetriever(store=hybrid, k=2, calibrator=calibrator, min_confidence=0.5)
    handler = _Events()
    assert retriever.invoke(UNRELATED, config={"callbacks": [handler]}) == []
    assert [name for name, _ in handler.events] == [ABSTENTION_EVENT]
    chain = _branching_chain(retriever)
    assert chain.invoke(TEXTS[1]) == "an answer"
    assert chain.invoke(UNRELATED) == "I don't know."

    async def both() -> list[str]:
        return list(await asyncio.gather(chain.ainvoke(TEXTS[1]), chain.ainvoke(UNRELATED)))

    assert asyncio.run(both()) == ["an answer", "I don't know."]


def test_hybrid_from_texts_and_documents(encoder: Any) -> None:
    r = KLHybridRetriever.from_texts(TEXTS, KLEmbeddings(encoder), META, k=2, fusion="rrf")
    assert r.invoke("green tea")[0].page_content == TEXTS[2]
    docs = [Document(page_content=t, metadata=m, id=f"x{i}") for i, (t, m) in enumerate(zip(TEXTS, META, strict=True))]
    r2 = KLHybridRetriever.from_documents(docs, encoder, k=1, fusion="convex", weight=0.5)
    assert [d.id for d in r2.invoke("train at sea")] == ["x5"]


def test_hybrid_retriever_survives_save_and_load(hybrid: KLHybridStore, tmp_path: Path) -> None:
    hybrid.save(tmp_path / "h")
    loaded = KLHybridStore.load(tmp_path / "h", encoder=hybrid.encoder)
    before = [d.id for d in KLHybridRetriever(store=hybrid, k=3).invoke("the moon")]
    assert [d.id for d in KLHybridRetriever(store=loaded, k=3).invoke("the moon")] == before


# ------------------------------------------------------------------ LangChain's standard retriever suite
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function")
class TestKLHybridRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return KLHybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        store = KLHybridStore(make_tiny_encoder(seed=1), fusion="rrf")
        store.add(TEXTS, metadatas=META)
        return {"store": store, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "the cat"


def test_async_calls_take_the_same_per_call_settings_as_sync(
    store: KLVectorStore, hybrid: KLHybridStore, calibrator: ConfidenceCalibrator
) -> None:
    """ainvoke/abatch pass k, filter, min_confidence (and the fusion settings) on, as invoke/batch do."""
    dense = KLRetriever.from_store(store, k=3, calibrator=calibrator)
    fused = KLHybridRetriever(store=hybrid, k=3, calibrator=calibrator)

    def ids(docs: list[Document]) -> list[str | None]:
        return [d.id for d in docs]

    for retriever, extra in ((dense, {}), (fused, {"fusion": "convex", "weight": 0.3})):
        calls: list[dict[str, Any]] = [
            {"k": 1},
            {"k": 2, "filter": {"even": True}},
            {"min_confidence": 1.0},
            {"k": 2, **extra},
        ]
        for kwargs in calls:
            sync = retriever.invoke("black rock", **kwargs)
            assert ids(asyncio.run(retriever.ainvoke("black rock", **kwargs))) == ids(sync)
            batched = asyncio.run(retriever.abatch(["black rock", TEXTS[0]], **kwargs))
            assert [ids(b) for b in batched] == [ids(b) for b in retriever.batch(["black rock", TEXTS[0]], **kwargs)]
        assert len(asyncio.run(retriever.ainvoke("black rock", k=1))) == 1
        assert asyncio.run(retriever.ainvoke("black rock", min_confidence=1.0)) == []  # abstains
        assert all(d.metadata["even"] for d in asyncio.run(retriever.ainvoke("black rock", filter={"even": True})))
