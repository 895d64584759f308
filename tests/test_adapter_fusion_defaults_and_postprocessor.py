"""Review follow-ups to the stop-45 adapter fixes (commit cbf33cd).

* A store's ``weight=`` / ``normalization=`` are its defaults for convex searches with any default
  fusion again (``KLHybridStore(enc, weight=0.5)`` raised); a *retriever* whose own fusion is not
  convex refuses them, and its message says "this retriever".
* A blank query has confidence 0 only with a calibrator (``None`` without one, like any query).
* ``KLConfidencePostprocessor`` abstains on a blank query only when every KL node says so, and reads
  the query bundle only when no node comes from a KL retriever.
* LlamaIndex ``KLHybridRetriever.from_defaults(store=, weight=)`` passes the weight to the retriever.
* LangChain's hybrid retriever runs its setup checks before abstaining on a blank query.

Tiny random encoder (no calibrator of its own) and a synthetic ``max_score`` calibrator
(tests/conftest.py): a query equal to a stored text scores ``-KL ~ 0`` and is confident.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from conftest import HYBRID_TEXTS, make_tiny_encoder, max_score_calibrator
from kl_retrievers.calibration import ConfidenceCalibrator
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore
from kl_retrievers.langchain import KLHybridRetriever as LCHybrid
from kl_retrievers.llama_index import (
    CONFIDENCE_KEY,
    CONFIDENCE_REASON_KEY,
    KLConfidencePostprocessor,
)
from kl_retrievers.llama_index import KLHybridRetriever as LIHybrid
from kl_retrievers.llama_index import KLRetriever as LIRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

#: The corpus holds an empty text: a blank query matches it exactly (-KL 0).
TEXTS = [*HYBRID_TEXTS, ""]
IDS = [f"d{i}" for i in range(len(TEXTS))]
QUERY = TEXTS[2]  # equal to a stored text: confident under the max_score calibrator


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture(scope="module")
def calibrator() -> ConfidenceCalibrator:
    return max_score_calibrator()


@pytest.fixture(scope="module")
def rrf_store(encoder: Any) -> KLHybridStore:
    store = KLHybridStore(encoder, fusion="rrf")
    store.add(TEXTS, ids=IDS)
    return store


def _nodes() -> list[TextNode]:
    return [TextNode(text=t, id_=i) for t, i in zip(TEXTS, IDS, strict=True)]


def _li_store(encoder: Any, calibrator: ConfidenceCalibrator | None = None) -> LIVectorStore:
    vs = LIVectorStore(encoder=encoder, calibrator=calibrator)
    vs.add(_nodes())
    return vs


# ------------------------------------------------------------------ 1. and 2. the store keeps its convex defaults
def test_hybrid_store_takes_weight_and_normalization_with_any_fusion(encoder: Any) -> None:
    assert KLHybridStore(encoder, weight=0.5).fusion.weight == 0.5  # adaptive by default: raised in cbf33cd
    assert KLHybridStore(encoder, weight=0.5, normalization="minmax").fusion.normalization == "minmax"
    store = KLHybridStore(encoder, fusion="rrf", weight=0.3, normalization="zscore")
    store.add(HYBRID_TEXTS)
    assert (store.fusion.mode, store.fusion.weight, store.fusion.normalization) == ("rrf", 0.3, "zscore")
    assert store.search("black rock", k=1, fusion="convex")[0].dense_weight == pytest.approx(0.3)  # its default
    assert store.search("black rock", k=1)[0].dense_weight is None  # rrf by default
    with pytest.raises(ValueError, match=r"weight=0.2 applies to convex fusion only; this call fuses with 'rrf'"):
        store.search("black rock", k=1, weight=0.2)  # a search still refuses it
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\]"):
        KLHybridStore(encoder, fusion="rrf", weight=2.0)  # still checked


@pytest.mark.parametrize("fusion", ["rrf", "adaptive"])
def test_langchain_from_texts_refusal_names_the_retriever(encoder: Any, fusion: str) -> None:
    with pytest.raises(
        ValueError, match=rf"weight=0.3 applies to convex fusion only; this retriever fuses with '{fusion}'"
    ):
        LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), fusion=fusion, weight=0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"normalization='zscore' .* this retriever fuses with '{fusion}'"):
        LCHybrid.from_texts(HYBRID_TEXTS, KLEmbeddings(encoder), fusion=fusion, normalization="zscore")  # type: ignore[arg-type]


def test_langchain_from_texts_retriever_fusion_decides(encoder: Any) -> None:
    """The store fuses with rrf by default, the retriever (its search_kwargs) with convex: the weight serves it."""
    retriever = LCHybrid.from_texts(
        HYBRID_TEXTS, KLEmbeddings(encoder), k=1, fusion="rrf", weight=0.3, search_kwargs={"fusion": "convex"}
    )
    assert retriever.store.fusion.mode == "rrf" and retriever.store.fusion.weight == 0.3
    assert retriever.invoke("black rock")[0].metadata["dense_weight"] == pytest.approx(0.3)


def test_langchain_retriever_refusal_names_the_retriever(rrf_store: KLHybridStore) -> None:
    with pytest.raises(ValueError, match=r"weight=0.3 applies to convex fusion only; this retriever fuses with 'rrf'"):
        LCHybrid(store=rrf_store, weight=0.3)
    with pytest.raises(ValueError, match=r"weight=0.3 applies to convex fusion only; this call fuses with 'rrf'"):
        LCHybrid(store=rrf_store, k=1).invoke("black rock", weight=0.3)
    # search_kwargs picks rrf, the field weight serves the calls that switch to convex
    switching = LCHybrid(store=rrf_store, k=1, weight=0.3, search_kwargs={"fusion": "rrf"})
    assert switching.invoke("black rock")[0].metadata["dense_weight"] is None
    assert switching.invoke("black rock", fusion="convex")[0].metadata["dense_weight"] == pytest.approx(0.3)


@pytest.mark.parametrize("fusion", ["rrf", "adaptive"])
def test_llama_index_refusals_name_the_retriever(encoder: Any, rrf_store: KLHybridStore, fusion: str) -> None:
    with pytest.raises(
        ValueError, match=rf"weight=0.3 applies to convex fusion only; this retriever fuses with '{fusion}'"
    ):
        LIHybrid.from_defaults(nodes=_nodes(), encoder=encoder, fusion=fusion, weight=0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"normalization='zscore' .* this retriever fuses with '{fusion}'"):
        LIHybrid.from_defaults(nodes=_nodes(), encoder=encoder, fusion=fusion, normalization="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight=0.3 applies to convex fusion only; this retriever fuses with 'rrf'"):
        LIHybrid(rrf_store, weight=0.3)
    convex = LIHybrid.from_defaults(nodes=_nodes(), encoder=encoder, fusion="convex", weight=0.3, similarity_top_k=1)
    assert convex.store.fusion.weight == 0.3
    assert convex.retrieve("black rock")[0].node.metadata["dense_weight"] == pytest.approx(0.3)


# ------------------------------------------------------------------ 5. from_defaults(store=, weight=)
def test_llama_index_from_defaults_with_store_passes_weight_to_the_retriever(rrf_store: KLHybridStore) -> None:
    retriever = LIHybrid.from_defaults(store=rrf_store, fusion="convex", weight=0.3, similarity_top_k=1)
    direct = LIHybrid(rrf_store, fusion="convex", weight=0.3, similarity_top_k=1)
    got, want = retriever.retrieve("black rock")[0].node.metadata, direct.retrieve("black rock")[0].node.metadata
    assert got["dense_weight"] == want["dense_weight"] == pytest.approx(0.3)
    assert rrf_store.fusion.mode == "rrf" and rrf_store.fusion.weight == 0.5  # the store is not changed
    zscore = LIHybrid.from_defaults(store=rrf_store, fusion="convex", normalization="zscore", similarity_top_k=1)
    assert zscore.retrieve("black rock")[0].node.metadata["fusion"] == "convex"
    with pytest.raises(ValueError, match=r"this retriever fuses with 'rrf'"):
        LIHybrid.from_defaults(store=rrf_store, weight=0.3)  # the store's rrf: meaningless
    with pytest.raises(ValueError, match=r"store options \['candidates'\] apply only when no store is passed"):
        LIHybrid.from_defaults(store=rrf_store, candidates=5)


# ------------------------------------------------------------------ 4. blank query without a calibrator
def test_langchain_blank_query_without_calibrator_has_no_confidence(encoder: Any, rrf_store: KLHybridStore) -> None:
    dense = KLRetriever(vectorstore=KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), ids=IDS), k=2)
    assert {d.metadata["confidence"] for d in dense.invoke(QUERY)} == {None}
    blank = dense.invoke(" ")
    assert blank and {d.metadata["confidence"] for d in blank} == {None}  # was 0.0
    hybrid = LCHybrid(store=rrf_store, k=2)
    assert {d.metadata["confidence"] for d in hybrid.invoke(QUERY)} == {None}
    blank = hybrid.invoke(" ")
    assert blank and {d.metadata["confidence"] for d in blank} == {None}


def test_llama_index_blank_query_without_calibrator_has_no_confidence(encoder: Any) -> None:
    dense = LIRetriever(_li_store(encoder), similarity_top_k=2).retrieve(" ")
    assert dense and {n.node.metadata[CONFIDENCE_KEY] for n in dense} == {None}
    assert not any(CONFIDENCE_REASON_KEY in n.node.metadata for n in dense)
    queried = _li_store(encoder).query(VectorStoreQuery(query_str=" ", similarity_top_k=2)).nodes or []
    assert queried and {n.metadata[CONFIDENCE_KEY] for n in queried} == {None}
    assert not any(CONFIDENCE_REASON_KEY in n.metadata for n in queried)
    hybrid = LIHybrid.from_defaults(nodes=_nodes(), encoder=encoder, fusion="rrf").retrieve(" ")
    assert hybrid and {n.node.metadata[CONFIDENCE_KEY] for n in hybrid} == {None}
    assert not any(CONFIDENCE_REASON_KEY in n.node.metadata for n in hybrid)


def test_blank_query_with_calibrator_still_has_confidence_zero(
    encoder: Any, rrf_store: KLHybridStore, calibrator: ConfidenceCalibrator
) -> None:
    hybrid = LIHybrid(rrf_store, calibrator=calibrator).retrieve(" ")
    assert hybrid and {n.node.metadata[CONFIDENCE_KEY] for n in hybrid} == {0.0}
    assert {n.node.metadata[CONFIDENCE_REASON_KEY] for n in hybrid} == {
        "the query is empty (blank): it asks for nothing, so no document can answer it"
    }
    answered = LCHybrid(store=rrf_store, k=2, calibrator=calibrator).invoke("")
    assert answered and {d.metadata["confidence"] for d in answered} == {0.0}


# ------------------------------------------------------------------ 3. and 6. the postprocessor
def test_postprocessor_judges_a_merged_list_by_its_best_confidence(
    encoder: Any, calibrator: ConfidenceCalibrator
) -> None:
    retriever = LIRetriever(_li_store(encoder, calibrator), similarity_top_k=2)
    good, blank = retriever.retrieve(QUERY), retriever.retrieve("")
    assert good[0].node.metadata[CONFIDENCE_KEY] > 0.5 and blank[0].node.metadata[CONFIDENCE_KEY] == 0.0
    post = KLConfidencePostprocessor(min_confidence=0.5)
    assert post.postprocess_nodes(good + blank, query_bundle=QueryBundle(QUERY)) == good + blank  # was []
    assert post.postprocess_nodes(blank, query_bundle=QueryBundle(QUERY)) == []  # every KL node blank
    assert KLConfidencePostprocessor(min_confidence=0.01).postprocess_nodes(blank) == []  # at any floor above 0


def test_postprocessor_relies_on_the_nodes_not_the_bundle(encoder: Any, calibrator: ConfidenceCalibrator) -> None:
    """The hybrid retriever searches query_str: blank custom embedding strings do not make its query blank."""
    bundle = QueryBundle(query_str=QUERY, custom_embedding_strs=[" "])
    nodes = LIHybrid.from_defaults(nodes=_nodes(), encoder=encoder, fusion="rrf", calibrator=calibrator).retrieve(
        bundle
    )
    assert nodes and not any(CONFIDENCE_REASON_KEY in n.node.metadata for n in nodes)
    assert KLConfidencePostprocessor(min_confidence=1e-9).postprocess_nodes(nodes, query_bundle=bundle) == nodes
    # KLRetriever encodes the custom embedding strings: a blank query_str beside them is not blank
    dense_bundle = QueryBundle(query_str=" ", custom_embedding_strs=[QUERY])
    dense = LIRetriever(_li_store(encoder, calibrator), similarity_top_k=2).retrieve(dense_bundle)
    assert not any(CONFIDENCE_REASON_KEY in n.node.metadata for n in dense)
    assert KLConfidencePostprocessor(min_confidence=0.5).postprocess_nodes(dense, query_bundle=dense_bundle) == dense


def test_postprocessor_reads_the_bundle_only_without_kl_nodes() -> None:
    plain = [NodeWithScore(node=TextNode(text="x"), score=1.0)]  # another retriever's: no confidence
    post = KLConfidencePostprocessor(min_confidence=0.5)
    assert post.postprocess_nodes(plain, query_bundle=QueryBundle(" ")) == []
    kept = post.postprocess_nodes(plain, query_bundle=QueryBundle(query_str="x", custom_embedding_strs=[" "]))
    assert kept == plain  # the query string asks for something (kept unjudged, with one warning)


# ------------------------------------------------------------------ 7. one blank-query rule
def test_one_blank_query_rule() -> None:
    from kl_retrievers._confidence import EMPTY_QUERY_REASON, blank_query_confidence, is_blank_query

    assert [is_blank_query(t) for t in ("", " \n\t", "a", None)] == [True, True, False, False]
    assert blank_query_confidence(True) == (0.0, EMPTY_QUERY_REASON)
    assert blank_query_confidence(False) == (None, None)


# ------------------------------------------------------------------ 8. setup checks before a blank abstention
def test_langchain_hybrid_blank_query_runs_the_setup_checks(
    encoder: Any, calibrator: ConfidenceCalibrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KLHybridStore(encoder, fusion="adaptive")
    store.add(TEXTS, ids=IDS)

    def missing() -> Any:
        raise FileNotFoundError("no adaptive fusion parameters (test)")

    monkeypatch.setattr(store, "adaptive_params", missing)
    retriever = LCHybrid(store=store, k=2, calibrator=calibrator, min_confidence=0.5)
    with pytest.raises(FileNotFoundError, match="no adaptive fusion parameters"):
        retriever.invoke(" ")  # returned [] before: a bad setup fails on any query
    with pytest.raises(FileNotFoundError, match="no adaptive fusion parameters"):
        retriever.invoke(QUERY)


def test_langchain_hybrid_blank_query_checks_the_calibrator_stemmer(
    rrf_store: KLHybridStore, caplog: pytest.LogCaptureFixture
) -> None:
    cal = ConfidenceCalibrator(["gap12"], kind="hybrid")
    cal.fit([[0.0], [1.0]], [0, 1], info={"bm25_stemmer": None, "fingerprint": "test-f45d-blank-stemmer"})
    retriever = LCHybrid(store=rrf_store, k=2, calibrator=cal, min_confidence=0.5)  # the store is stemmed
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert retriever.invoke(" ") == []
    assert any("fitted on BM25 not stemmed" in r.getMessage() for r in caplog.records)
