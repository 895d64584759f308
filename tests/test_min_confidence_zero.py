"""``min_confidence=0`` answers every query, in both adapters (the 0.00 row of a threshold sweep).

A query whose confidence is below the floor gets no documents, and no confidence is below 0. The rules
that refuse a query whatever its confidence (a blank query: confidence 0; a single candidate document:
no confidence) apply only to a floor above 0 (:func:`kl_retrievers._confidence.abstention_enabled`).

All on a tiny random encoder (``conftest.make_tiny_encoder``).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from llama_index.core.schema import QueryBundle, TextNode
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers._confidence import ConfidenceScorer, abstention_reason, hybrid_search
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.langchain import CONFIDENCE_KEY, KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore
from kl_retrievers.llama_index import KLConfidencePostprocessor
from kl_retrievers.llama_index import KLHybridRetriever as LIHybrid
from kl_retrievers.llama_index import KLRetriever as LIRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

pytestmark = pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")

TEXTS = HYBRID_TEXTS
IDS = [f"d{i}" for i in range(len(TEXTS))]
META = [{"n": i} for i in range(len(TEXTS))]
ONE_LEFT = {"n": 3}  # a filter that leaves one document
REASON = "confidence needs 2 candidates, 1 found (a filter or a small store)"


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


def _langchain_retrievers(encoder: Any, calibrator: ConfidenceCalibrator) -> list[Any]:
    store = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), META, ids=IDS)
    hybrid = KLHybridStore(encoder, fusion="rrf")
    hybrid.add(TEXTS, ids=IDS, metadatas=META)
    return [
        KLRetriever.from_store(store, k=2, calibrator=calibrator),
        KLHybridRetriever(store=hybrid, k=2, calibrator=calibrator),
    ]


def test_the_shared_rule() -> None:
    from kl_retrievers._confidence import abstention_enabled  # new: the other tests also run on an older tree

    assert [abstention_enabled(f) for f in (None, 0.0, 1e-9, 1.0)] == [False, False, True, True]
    assert abstention_reason(None, 0.0, candidates=1) is None
    assert abstention_reason(0.0, 0.0, candidates=5) is None
    assert abstention_reason(None, 1e-9, candidates=1) == REASON


@pytest.mark.parametrize("kind", ["dense", "hybrid"])
def test_langchain_zero_floor_answers_a_blank_query_and_a_single_candidate(
    encoder: Any, calibrator: ConfidenceCalibrator, kind: str
) -> None:
    retriever = _langchain_retrievers(encoder, calibrator)[kind == "hybrid"]
    handler = _Events()
    config: Any = {"callbacks": [handler]}
    blank = retriever.invoke("", config=config, min_confidence=0.0)
    assert len(blank) == 2 and {d.metadata[CONFIDENCE_KEY] for d in blank} == {0.0}
    one = retriever.invoke(TEXTS[3], config=config, filter=ONE_LEFT, min_confidence=0.0)
    assert [d.page_content for d in one] == [TEXTS[3]] and one[0].metadata[CONFIDENCE_KEY] is None
    assert handler.events == []  # no abstention event either
    # any floor above 0 still refuses both (fail closed)
    assert retriever.invoke("", min_confidence=1e-6) == []
    assert retriever.invoke(TEXTS[3], filter=ONE_LEFT, min_confidence=1e-6) == []


def test_hybrid_search_zero_floor_searches_a_blank_query(encoder: Any, calibrator: ConfidenceCalibrator) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(TEXTS, ids=IDS)
    hits, confidence, reason = hybrid_search(
        store, " ", 2, scorer=ConfidenceScorer(calibrator, "hybrid"), min_confidence=0.0
    )
    assert len(hits) == 2 and confidence == 0.0 and reason is None


def test_llama_index_zero_floor_keeps_a_blank_query_and_a_single_candidate(
    encoder: Any, calibrator: ConfidenceCalibrator
) -> None:
    vs = LIVectorStore(encoder=encoder, calibrator=calibrator)
    vs.add([TextNode(text=t, id_=i, metadata=m) for t, i, m in zip(TEXTS, IDS, META, strict=True)])
    zero, above = KLConfidencePostprocessor(min_confidence=0.0), KLConfidencePostprocessor(min_confidence=1e-6)
    blank = LIRetriever(vs, similarity_top_k=2).retrieve("")
    assert {n.node.metadata[CONFIDENCE_KEY] for n in blank} == {0.0}
    assert zero.postprocess_nodes(blank, query_bundle=QueryBundle("")) == blank
    assert above.postprocess_nodes(blank, query_bundle=QueryBundle("")) == []
    one_left = MetadataFilters(filters=[MetadataFilter(key="n", value=3)])
    one = LIRetriever(vs, similarity_top_k=2, filters=one_left).retrieve(TEXTS[3])
    assert len(one) == 1 and one[0].node.metadata["confidence_reason"] == REASON
    assert zero.postprocess_nodes(one, query_bundle=QueryBundle(TEXTS[3])) == one
    assert above.postprocess_nodes(one, query_bundle=QueryBundle(TEXTS[3])) == []
    hybrid = LIHybrid.from_defaults(nodes=vs.get_nodes(), encoder=encoder, fusion="rrf", calibrator=calibrator)
    fused_blank = hybrid.retrieve("")
    assert fused_blank and zero.postprocess_nodes(fused_blank, query_bundle=QueryBundle("")) == fused_blank


def test_a_zero_floor_needs_no_calibrator(encoder: Any) -> None:
    """A floor of 0 never abstains, so a model without a calibrator is answered (confidence ``None``), as
    ``KLConfidencePostprocessor(0)`` keeps its nodes; a floor above 0 still asks for one."""
    store = KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), META, ids=IDS)
    hybrid = KLHybridStore(encoder, fusion="adaptive")
    hybrid.add(TEXTS, ids=IDS, metadatas=META)
    for retriever in (
        KLRetriever.from_store(store, k=2, min_confidence=0.0),
        KLHybridRetriever(store=hybrid, k=2, min_confidence=0.0),
    ):
        docs = retriever.invoke(TEXTS[0])
        assert len(docs) == 2 and {d.metadata[CONFIDENCE_KEY] for d in docs} == {None}
        assert len(retriever.invoke("")) == 2  # a blank query too
        with pytest.raises(ValueError, match=r"min_confidence=1e-06 needs a confidence calibrator"):
            retriever.invoke(TEXTS[0], min_confidence=1e-6)
    hits, confidence, reason = hybrid_search(
        hybrid, TEXTS[0], 2, scorer=ConfidenceScorer(None, "hybrid"), min_confidence=0.0
    )
    assert len(hits) == 2 and confidence is None and reason is None


def test_llama_index_blank_query_abstention_logs_why(
    encoder: Any, calibrator: ConfidenceCalibrator, caplog: pytest.LogCaptureFixture
) -> None:
    """Above 0, a blank query's nodes are refused for being blank (``EMPTY_QUERY_REASON`` in the DEBUG line), not
    for their confidence 0 being below the floor."""
    from kl_retrievers._confidence import EMPTY_QUERY_REASON

    vs = LIVectorStore(encoder=encoder, calibrator=calibrator)
    vs.add([TextNode(text=t, id_=i, metadata=m) for t, i, m in zip(TEXTS, IDS, META, strict=True)])
    blank = LIRetriever(vs, similarity_top_k=2).retrieve(" ")
    with caplog.at_level(logging.DEBUG, logger="kl_retrievers.llama_index"):
        assert KLConfidencePostprocessor(min_confidence=0.5).postprocess_nodes(blank, QueryBundle(" ")) == []
    lines = [r.getMessage() for r in caplog.records if "abstained" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(EMPTY_QUERY_REASON), lines
