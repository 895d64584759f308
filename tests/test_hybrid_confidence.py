"""The hybrid retriever's calibrated confidence: features, the calibrator kind, the shipped file, the adapters.

A hybrid calibrator (``kind="hybrid"``) reads dense and BM25 signals of a query's
:class:`~kl_retrievers.hybrid.Candidates`; the default model ships one
(``hybrid_confidence_calibration.json``) that ``KLHybridRetriever`` (LangChain and LlamaIndex) uses
by default. The adapter tests use a tiny random encoder that *claims* to be the default model
(``name_or_path``), so the shipped hybrid calibrator is the one found; its values on such an
encoder mean nothing, so the tests compare them with :func:`hybrid_confidence` computed directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.calibration as calibration
from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers._confidence import ConfidenceScorer, check_calibrator
from kl_retrievers.calibration import (
    CALIBRATION_FILE,
    DEFAULT_HYBRID_FEATURES,
    DEFAULT_HYBRID_MIN_CONFIDENCE,
    HYBRID_CALIBRATION_FILE,
    HYBRID_FEATURES,
    ConfidenceCalibrator,
    default_calibrator,
    default_hybrid_calibrator,
    hybrid_confidence,
    hybrid_query_features,
)
from kl_retrievers.hybrid import SIGNALS, Candidates, KLHybridStore

TEXTS = HYBRID_TEXTS
UNRELATED = "hello world query"
DEFAULT_NAME = "kl_retrievers:minilm-gauss-soup"


def _candidates(bm25_rank: list[int]) -> Candidates:
    signals = {name: i + 0.5 for i, name in enumerate(SIGNALS)}
    return Candidates(
        ["a", "b", "c", "d"],
        np.array([-1.0, -1.5, -3.0, -2.0]),
        np.array([2.0, 0.0, 5.0, 1.0]),
        np.array([1, 2, 0, 3]),
        np.array(bm25_rank),
        0.01,
        signals,
    )


# ------------------------------------------------------------------ features
def test_features_match_a_hand_computation() -> None:
    c = _candidates([2, 0, 1, 3])  # dense list: a, b, d; BM25 list: c (5), a (2), d (1)
    f = dict(zip(HYBRID_FEATURES, hybrid_query_features(c, None, list(HYBRID_FEATURES)), strict=True))
    assert f["uncertainty"] == 0.01
    assert (f["max_score"], f["gap12"], f["gap1_10"]) == (-1.0, 0.5, 0.5)  # -1 - mean(-1, -1.5, -2)
    assert f["std10"] == pytest.approx(math.sqrt(1 / 6))
    assert (f["bm25_max_raw"], f["bm25_gap12_raw"], f["bm25_of_dense_top1_raw"]) == (5.0, 3.0, 2.0)
    assert f["bm25_rr_dense_top1"] == 0.5  # the dense top-1 (a) is BM25's 2nd
    assert f["bm25_ratio_dense_top1"] == pytest.approx(0.4)  # 2 / 5
    assert f["dense_rr_bm25_top1"] == 0.0  # BM25's top-1 (c) is not in the dense list
    for name in SIGNALS[1:]:  # the store's signals pass through unchanged
        assert f[name] == c.signals[name]
    assert SIGNALS[1:] == calibration._SIGNAL_FEATURES  # calibration does not import hybrid: kept in step here
    agree = _candidates([1, 0, 2, 3])  # now a is BM25's top-1 too
    g = hybrid_query_features(agree, 0.7, ["dense_rr_bm25_top1", "bm25_rr_dense_top1", "uncertainty"])
    assert g.tolist() == [1.0, 1.0, 0.7]


def test_features_without_a_bm25_list_and_bad_inputs() -> None:
    c = Candidates(["a", "b"], np.array([-1.0, -2.0]), np.zeros(2), np.array([1, 2]), np.zeros(2, int), 0.0, {})
    names = ["bm25_max_raw", "bm25_ratio_dense_top1", "bm25_rr_dense_top1", "dense_rr_bm25_top1", "gap12"]
    assert hybrid_query_features(c, None, names).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown feature"):
        hybrid_query_features(c, None, ["nqc"])
    with pytest.raises(ValueError, match="need the candidates' signals"):
        hybrid_query_features(c, None, ["overlap10"])
    one = Candidates(["a"], np.array([-1.0]), np.zeros(1), np.array([1]), np.zeros(1, int), 0.0, {})
    with pytest.raises(ValueError, match="at least 2"):
        hybrid_query_features(one, None, ["gap12"])
    with pytest.raises(ValueError, match="uncertainty is nan"):
        hybrid_query_features(c, float("nan"), ["gap12"])


def test_features_of_a_real_store_match_its_candidates() -> None:
    store = KLHybridStore(make_tiny_encoder(seed=1), fusion="adaptive")
    store.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))])
    c = store.candidates(["black rock"])[0]
    f = dict(zip(HYBRID_FEATURES, hybrid_query_features(c, None, list(HYBRID_FEATURES)), strict=True))
    dense = np.sort(c.neg_kl[c.dense_rank > 0])[::-1]
    assert f["max_score"] == dense[0] and f["gap12"] == pytest.approx(dense[0] - dense[1])
    assert f["bm25_max_raw"] == pytest.approx(c.bm25.max()) and f["overlap10"] == c.signals["overlap10"]
    assert f["uncertainty"] == pytest.approx(c.uncertainty)


# ------------------------------------------------------------------ the calibrator kind
def _hybrid_cal() -> ConfidenceCalibrator:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = (x[:, 0] - x[:, 1] + rng.normal(size=300) > 0).astype(float)
    return ConfidenceCalibrator(["bm25_rr_dense_top1", "dense_gap12"], kind="hybrid").fit(x, y, info={"data": "syn"})


def test_hybrid_calibrator_round_trip(tmp_path: Path) -> None:
    cal = _hybrid_cal()
    path = cal.save(tmp_path / HYBRID_CALIBRATION_FILE)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "hybrid" and data["features"] == ["bm25_rr_dense_top1", "dense_gap12"]
    assert data["feature_definitions"]["dense_gap12"] == HYBRID_FEATURES["dense_gap12"]
    assert data["library_version"] and data["info"]["data"] == "syn"
    back = ConfidenceCalibrator.load(path)
    x = np.array([[0.5, -1.0], [0.0, 2.0]])
    assert back.kind == "hybrid" and back.predict(x) == pytest.approx(cal.predict(x))
    assert "kind='hybrid'" in repr(back)
    with pytest.raises(ValueError, match="hybrid calibrator.*hybrid_confidence"):
        back.confidence([-1.0, -2.0], 0.0)
    data["kind"] = "sparse"
    with pytest.raises(ValueError, match="'kind' must be one of"):
        ConfidenceCalibrator.from_dict(data)
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['bm25_coverage'\]"):
        ConfidenceCalibrator(["bm25_coverage"])  # a hybrid feature is not a dense one
    with pytest.raises(ValueError, match="kind must be one of"):
        ConfidenceCalibrator(["gap12"], kind="bm25")  # type: ignore[arg-type]
    dense = default_calibrator().to_dict()
    dense.pop("kind")  # files written before calibrator kinds existed
    assert ConfidenceCalibrator.from_dict(dense).kind == "dense"


def test_dense_retrievers_refuse_a_hybrid_calibrator_and_hybrid_ones_take_both() -> None:
    from kl_retrievers.langchain import KLHybridRetriever, KLRetriever
    from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever
    from kl_retrievers.llama_index import KLVectorStore

    hybrid_cal, dense_cal = _hybrid_cal(), default_calibrator()
    with pytest.raises(ValueError, match="kind 'hybrid'.*a dense retriever takes kind 'dense' only"):
        check_calibrator(hybrid_cal)
    enc = make_tiny_encoder(seed=1)
    with pytest.raises(ValueError, match="kind 'hybrid'"):
        KLRetriever.from_texts(TEXTS, enc, calibrator=hybrid_cal)
    with pytest.raises(ValueError, match="kind 'hybrid'"):
        KLVectorStore(encoder=enc, calibrator=hybrid_cal)
    with pytest.raises(ValueError, match="kind 'hybrid'"):
        ConfidenceScorer(hybrid_cal)
    store = KLHybridStore(enc, fusion="rrf")
    store.add(TEXTS)
    for cal in (hybrid_cal, dense_cal):
        assert KLHybridRetriever(store=store, calibrator=cal).calibrator is cal
        assert LIHybridRetriever(store, calibrator=cal)._scorer.explicit is cal
    with pytest.raises(ValueError, match="retriever must be one of"):
        check_calibrator(hybrid_cal, "sparse")


# ------------------------------------------------------------------ the shipped calibrator
def test_the_shipped_hybrid_calibrator_and_threshold() -> None:
    cal = default_hybrid_calibrator()
    assert cal.kind == "hybrid" and tuple(cal.features) == DEFAULT_HYBRID_FEATURES
    info = cal.info
    assert info["recommended_min_confidence"]["threshold"] == pytest.approx(DEFAULT_HYBRID_MIN_CONFIDENCE)
    assert info["recommended_min_confidence"]["training_articles_at_threshold"]["answered"] >= 0.9
    assert "fit --hybrid" in info["command"] and info["selection"]["chosen"] in info["selection"]["candidates"]
    assert all("test" not in d["set"] for d in info["training_data"])  # training data only
    assert ConfidenceScorer(retriever="hybrid").calibrator(type("E", (), {"name_or_path": DEFAULT_NAME})()) is not None


def test_bge_small_unit_variance_ships_its_own_hybrid_calibrator() -> None:
    """Fitted like the default's (benchmarks/calibration.py fit --hybrid --model ...), found by the model's name."""
    cal = default_hybrid_calibrator("bge-small-unit-variance")
    assert cal.kind == "hybrid" and cal.info["model"] == "bge-small-unit-variance"
    default = default_hybrid_calibrator()
    assert cal.coef is not None and default.coef is not None  # both fitted
    # not the default model's: another feature set (the selection rule may choose one) or other coefficients
    assert list(cal.features) != list(default.features) or not np.allclose(cal.coef, default.coef)
    assert "--model bge-small-unit-variance" in cal.info["command"]
    assert 0.0 <= cal.info["recommended_min_confidence"]["threshold"] <= 1.0
    assert cal.info["recommended_min_confidence"]["training_articles_at_threshold"]["answered"] >= 0.9
    assert all("test" not in d["set"] for d in cal.info["training_data"])  # training data only
    bge = type("E", (), {"name_or_path": "kl_retrievers:bge-small-unit-variance"})()
    found = ConfidenceScorer(retriever="hybrid").calibrator(bge)
    assert found is not None and found.info["model"] == "bge-small-unit-variance"
    np.testing.assert_array_equal(found.coef, cal.coef)


def test_bge_small_unit_variance_ships_its_own_dense_calibrator() -> None:
    """``benchmarks/calibration.py fit --model ...`` on bge's training dumps; its threshold from the abstention run."""
    cal = default_calibrator("bge-small-unit-variance")
    assert cal.kind == "dense" and cal.info["model"] == "bge-small-unit-variance"
    default_coef = default_calibrator().coef
    assert cal.coef is not None and default_coef is not None  # both fitted
    assert not np.allclose(cal.coef, default_coef)  # not the default model's
    assert "--model bge-small-unit-variance" in cal.info["command"]
    assert [d["set"] for d in cal.info["training_data"]] == [
        "scifact:train",
        "nfcorpus-preprocessed:train",
        "squad:train",
    ]
    rec = cal.info["recommended_min_confidence"]
    assert 0.0 < rec["threshold"] < 1.0 and rec["training_articles_at_threshold"]["answered"] >= 0.9
    assert "--record-threshold" in rec["command"]
    bge = type("E", (), {"name_or_path": "kl_retrievers:bge-small-unit-variance"})()
    found = ConfidenceScorer().calibrator(bge)  # what a dense KLRetriever over a bge encoder uses
    assert found is not None and found.kind == "dense"
    np.testing.assert_array_equal(found.coef, cal.coef)
    # a clear winner at the top is more confident than a tie (bge's -KL scores: -||mu_q - mu_d||^2 / 2)
    assert cal.confidence([-0.3, -0.5, -0.55], 0.0) > cal.confidence([-0.5, -0.5, -0.55], 0.0)


def _named_encoder() -> Any:
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = DEFAULT_NAME  # the default model's name: its shipped calibrators are found
    return enc


@pytest.fixture(scope="module")
def named_store() -> KLHybridStore:
    store = KLHybridStore(_named_encoder(), fusion="adaptive")
    store.add(TEXTS, ids=[f"d{i}" for i in range(len(TEXTS))], metadatas=[{"n": i} for i in range(len(TEXTS))])
    return store


def _expected(store: KLHybridStore, query: str) -> float:
    return hybrid_confidence(default_hybrid_calibrator(), store.candidates([query])[0])


def test_langchain_hybrid_retriever_uses_the_shipped_hybrid_calibrator(named_store: KLHybridStore) -> None:
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLHybridRetriever

    retriever = KLHybridRetriever(store=named_store, k=3)
    shipped = retriever._scorer.calibrator(named_store.encoder)
    assert shipped is not None and shipped.kind == "hybrid"
    for query in ("black rock", UNRELATED):
        docs = retriever.invoke(query)
        expected = _expected(named_store, query)
        assert len(docs) == 3 and [d.metadata[CONFIDENCE_KEY] for d in docs] == pytest.approx([expected] * 3)
        assert expected != pytest.approx(default_calibrator().confidence([d.metadata["neg_kl"] for d in docs], 0.0))
        above, below = min(1.0, expected + 1e-6), max(0.0, expected - 1e-6)
        assert retriever.invoke(query, min_confidence=above) == []  # abstains just above its confidence
        assert len(retriever.invoke(query, min_confidence=below)) == 3
        strict = KLHybridRetriever(store=named_store, k=2, min_confidence=above)
        assert strict.invoke(query) == []


def test_llama_index_hybrid_retriever_uses_the_shipped_hybrid_calibrator(named_store: KLHybridStore) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    from kl_retrievers.llama_index import CONFIDENCE_KEY, KLConfidencePostprocessor, KLHybridRetriever

    retriever = KLHybridRetriever(named_store, similarity_top_k=3)
    hits = retriever.retrieve("black rock")
    expected = _expected(named_store, "black rock")
    assert len(hits) == 3 and [h.node.metadata[CONFIDENCE_KEY] for h in hits] == pytest.approx([expected] * 3)
    for floor, n in ((min(1.0, expected + 1e-6), 0), (max(0.0, expected - 1e-6), 3)):
        engine = RetrieverQueryEngine.from_args(
            retriever, llm=MockLLM(), node_postprocessors=[KLConfidencePostprocessor(min_confidence=floor)]
        )
        assert len(engine.query("black rock").source_nodes) == n


def test_a_model_with_only_a_dense_calibrator_falls_back_to_it(tmp_path: Path) -> None:
    """A saved model folder with confidence_calibration.json only: the hybrid retriever uses it (dense confidence)."""
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLHybridRetriever

    folder = tmp_path / "model"
    folder.mkdir()
    default_calibrator().save(folder / CALIBRATION_FILE)
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = str(folder)
    store = KLHybridStore(enc, fusion="rrf")
    store.add(TEXTS)
    docs = KLHybridRetriever(store=store, k=2).invoke("black rock")
    c = store.candidates(["black rock"])[0]
    dense = np.sort(c.neg_kl[c.dense_rank > 0])[::-1]
    assert docs[0].metadata[CONFIDENCE_KEY] == pytest.approx(default_calibrator().confidence(dense[:2], c.uncertainty))
