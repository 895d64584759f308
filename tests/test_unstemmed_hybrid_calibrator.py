"""Unstemmed hybrid confidence calibrators (stop 44): a ``stemmer=None`` store gets the model's unstemmed one.

Both bundled models with a hybrid calibrator ship ``hybrid_confidence_calibration.unstemmed.json`` (fitted by
``benchmarks/calibration.py fit --hybrid --stemmer none`` on unstemmed BM25). A hybrid store with
``stemmer=None`` (every store saved before the option) takes it, silently, as it takes
``hybrid_adaptive.unstemmed.json``; a stemmed store keeps the stemmed one; a model folder without the
unstemmed file falls back to the stemmed one with the stemmer warning; an explicit calibrator is never
replaced; the recommended ``min_confidence`` of an unstemmed store is the unstemmed calibrator's own.
The tiny random encoder *claims* to be a bundled model (``name_or_path``) so its shipped files are found;
the confidences are compared with :func:`hybrid_confidence` computed from the expected file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

import kl_retrievers._confidence as confidence_mod
from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers._confidence import ConfidenceScorer, hybrid_search, require_calibrator
from kl_retrievers.calibration import (
    _UNSTEMMED_HYBRID_CALIBRATION_FILE,
    DEFAULT_HYBRID_MIN_CONFIDENCE,
    HYBRID_CALIBRATION_FILE,
    ConfidenceCalibrator,
    default_hybrid_calibrator,
    hybrid_confidence,
    recommended_min_confidence,
)
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.pretrained import bundled_model_path

MODELS = ("minilm-gauss-soup", "bge-small-unit-variance")
QUERY = "black rock"
MISMATCH = "the hybrid confidence calibrator"  # the start of check_calibrator_stemmer's warning


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence_mod, "_WARNED", set())  # each test sees its own once-only warnings


def _store(name_or_path: str, stemmer: str | None, fusion: str = "rrf") -> KLHybridStore:
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = name_or_path
    store = KLHybridStore(enc, fusion=fusion, stemmer=stemmer)  # type: ignore[arg-type]
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(len(HYBRID_TEXTS))])
    return store


def _model_folder(tmp_path: Path, *files: str, model: str = "minilm-gauss-soup") -> Path:
    """A saved model folder under ``tmp_path`` holding copies of ``files`` from a bundled model's folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    for file in files:
        shutil.copy(bundled_model_path(model) / file, folder / file)
    return folder


def _confidence(store: KLHybridStore, scorer: ConfidenceScorer | None = None) -> float | None:
    return hybrid_search(store, QUERY, 3, scorer=scorer or ConfidenceScorer(retriever="hybrid"))[1]


def _expected(store: KLHybridStore, path: Path) -> float:
    return hybrid_confidence(ConfidenceCalibrator.load(path), store.candidates([QUERY])[0])


def _mismatch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(MISMATCH)]


@pytest.mark.parametrize("model", MODELS)
def test_an_unstemmed_store_gets_the_models_unstemmed_calibrator_without_a_warning(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = bundled_model_path(model)
    store = _store(f"kl_retrievers:{model}", None, fusion="adaptive")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store)
    assert got == pytest.approx(_expected(store, folder / _UNSTEMMED_HYBRID_CALIBRATION_FILE))
    assert got != pytest.approx(_expected(store, folder / HYBRID_CALIBRATION_FILE))
    assert _mismatch_warnings(caplog) == []
    cal = ConfidenceScorer(retriever="hybrid").calibrator(store.encoder, None)
    assert cal is not None and cal.records_bm25_stemmer and cal.bm25_stemmer is None


@pytest.mark.parametrize("model", MODELS)
def test_a_stemmed_store_keeps_the_stemmed_calibrator(model: str, caplog: pytest.LogCaptureFixture) -> None:
    store = _store(f"kl_retrievers:{model}", "english", fusion="adaptive")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store)
    assert got == pytest.approx(_expected(store, bundled_model_path(model) / HYBRID_CALIBRATION_FILE))
    assert _mismatch_warnings(caplog) == []


def test_one_scorer_serves_a_stemmed_and_an_unstemmed_store_of_one_encoder() -> None:
    """The scorer's per-encoder cache keeps the two apart (a retriever's scorer meets one store, but still)."""
    scorer = ConfidenceScorer(retriever="hybrid")
    enc = type("E", (), {"name_or_path": "kl_retrievers:minilm-gauss-soup"})()
    stemmed, plain = scorer.calibrator(enc), scorer.calibrator(enc, None)
    assert stemmed is not None and plain is not None
    assert stemmed.bm25_stemmer == "english" and plain.bm25_stemmer is None
    assert scorer.calibrator(enc) is stemmed and scorer.calibrator(enc, None) is plain


def test_a_folder_without_the_unstemmed_file_falls_back_with_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _model_folder(tmp_path, HYBRID_CALIBRATION_FILE)
    store = _store(str(folder), None)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store)
    assert got == pytest.approx(_expected(store, folder / HYBRID_CALIBRATION_FILE))
    messages = _mismatch_warnings(caplog)
    assert len(messages) == 1
    assert "fitted on BM25 stemmed with 'english', but this store's BM25 is not stemmed" in messages[0]
    assert "pass stemmer='english'" in messages[0]
    require_calibrator(ConfidenceScorer(retriever="hybrid"), store.encoder, 0.5, None)  # found: no error

    # the same folder with the unstemmed file too: that one, silently
    shutil.copy(bundled_model_path("minilm-gauss-soup") / _UNSTEMMED_HYBRID_CALIBRATION_FILE, folder)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store)
    assert got == pytest.approx(_expected(store, folder / _UNSTEMMED_HYBRID_CALIBRATION_FILE))
    assert _mismatch_warnings(caplog) == []


def test_an_explicit_calibrator_is_never_replaced(caplog: pytest.LogCaptureFixture) -> None:
    stemmed = default_hybrid_calibrator()
    store = _store("kl_retrievers:minilm-gauss-soup", None)
    scorer = ConfidenceScorer(stemmed, "hybrid")
    assert scorer.calibrator(store.encoder, None) is stemmed
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store, scorer)
    assert got == pytest.approx(hybrid_confidence(stemmed, store.candidates([QUERY])[0]))
    assert len(_mismatch_warnings(caplog)) == 1  # used as given, with the stemmer warning


@pytest.mark.parametrize("model", MODELS)
def test_the_shipped_unstemmed_calibrators_record_no_stemmer_and_their_own_threshold(model: str) -> None:
    path = bundled_model_path(model) / _UNSTEMMED_HYBRID_CALIBRATION_FILE
    cal = ConfidenceCalibrator.load(path)
    assert cal.kind == "hybrid" and cal.info["model"] == model
    assert cal.records_bm25_stemmer and cal.info["bm25_stemmer"] is None and cal.bm25_stemmer is None
    assert "--stemmer none" in cal.info["command"] and "fit --hybrid" in cal.info["command"]
    assert all("test" not in d["set"] for d in cal.info["training_data"])  # training data only
    assert all("hybrid-unstemmed" in d["file"] for d in cal.info["training_data"])
    rec = cal.info["recommended_min_confidence"]
    assert 0.0 <= rec["threshold"] <= 1.0 and rec["training_articles_at_threshold"]["answered"] >= 0.9
    for name in (model, f"kl_retrievers:{model}", str(bundled_model_path(model))):
        assert recommended_min_confidence(name, retriever="hybrid", stemmer=None) == rec["threshold"]
    assert default_hybrid_calibrator(model, None).info == cal.info
    stemmed = default_hybrid_calibrator(model)
    assert stemmed.bm25_stemmer == "english" and stemmed.info != cal.info


def test_the_recommended_threshold_follows_the_stemmer(tmp_path: Path) -> None:
    assert recommended_min_confidence(retriever="hybrid") == DEFAULT_HYBRID_MIN_CONFIDENCE
    plain = ConfidenceCalibrator.load(bundled_model_path("minilm-gauss-soup") / _UNSTEMMED_HYBRID_CALIBRATION_FILE)
    assert (
        recommended_min_confidence(retriever="hybrid", stemmer=None)
        == plain.info["recommended_min_confidence"]["threshold"]
    )
    assert recommended_min_confidence(stemmer=None) == recommended_min_confidence()  # dense: no BM25, no change
    # a folder with a stemmed calibrator only: its threshold, for an unstemmed store too
    folder = _model_folder(tmp_path)
    cal: Any = default_hybrid_calibrator("bge-small-unit-variance")
    cal.info["recommended_min_confidence"] = {"threshold": 0.42}
    cal.save(folder / HYBRID_CALIBRATION_FILE)
    assert recommended_min_confidence(str(folder), retriever="hybrid", stemmer=None) == 0.42
    cal.info["recommended_min_confidence"] = {"threshold": 0.07}
    cal.info["bm25_stemmer"] = None
    cal.save(folder / _UNSTEMMED_HYBRID_CALIBRATION_FILE)
    assert recommended_min_confidence(str(folder), retriever="hybrid", stemmer=None) == 0.07
    assert recommended_min_confidence(str(folder), retriever="hybrid") == 0.42


def test_a_folder_with_only_an_unstemmed_calibrator_names_its_model(tmp_path: Path) -> None:
    """The model an explicit calibrator is checked against is read from the unstemmed file too."""
    from kl_retrievers._confidence import encoder_model_names

    folder = _model_folder(tmp_path, _UNSTEMMED_HYBRID_CALIBRATION_FILE, model="bge-small-unit-variance")
    assert encoder_model_names(type("E", (), {"name_or_path": str(folder)})()) == {"bge-small-unit-variance"}


def test_the_default_models_unstemmed_threshold_comes_from_its_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not the library constant: the default model's unstemmed calibrator records its own threshold."""
    import kl_retrievers.calibration as calibration_mod

    real_load = ConfidenceCalibrator.load

    def load(path: Any) -> ConfidenceCalibrator:
        cal = real_load(path)
        if Path(path).name == _UNSTEMMED_HYBRID_CALIBRATION_FILE:
            cal.info["recommended_min_confidence"] = {"threshold": 0.375}
        return cal

    monkeypatch.setattr(calibration_mod.ConfidenceCalibrator, "load", staticmethod(load))
    assert recommended_min_confidence(retriever="hybrid", stemmer=None) == 0.375
    assert recommended_min_confidence("minilm-gauss-soup", retriever="hybrid", stemmer=None) == 0.375
    assert recommended_min_confidence(retriever="hybrid") == DEFAULT_HYBRID_MIN_CONFIDENCE


@pytest.mark.usefixtures("mock_llm_settings")
def test_llama_index_hybrid_retriever_finds_an_unstemmed_stores_calibrator(tmp_path: Path) -> None:
    """With one candidate the confidence is missing; the reason is given because the store's calibrator exists
    (here only the unstemmed file: looked up with the store's stemmer, not the stemmed default)."""
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import CONFIDENCE_KEY, CONFIDENCE_REASON_KEY, KLHybridRetriever

    folder = _model_folder(tmp_path, _UNSTEMMED_HYBRID_CALIBRATION_FILE)
    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = str(folder)
    store = KLHybridStore(enc, fusion="rrf", stemmer=None)
    store.add([HYBRID_TEXTS[0]], ids=["n0"])
    retriever = KLHybridRetriever.from_defaults(store=store)
    hits = retriever.retrieve("black rock")
    assert len(hits) == 1
    assert hits[0].node.metadata[CONFIDENCE_KEY] is None
    assert hits[0].node.metadata.get(CONFIDENCE_REASON_KEY)  # a calibrator exists, one candidate is too few


def test_a_stemmed_store_falls_back_to_an_unstemmed_only_folder_with_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Symmetric to the unstemmed fallback: a hybrid calibrator of the other stemmer, warned, not the dense one."""
    folder = _model_folder(tmp_path, _UNSTEMMED_HYBRID_CALIBRATION_FILE, "confidence_calibration.json")
    store = _store(str(folder), "english")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        got = _confidence(store)
    assert got == pytest.approx(_expected(store, folder / _UNSTEMMED_HYBRID_CALIBRATION_FILE))
    messages = _mismatch_warnings(caplog)
    assert len(messages) == 1 and "fitted on BM25 not stemmed" in messages[0]
    plain = ConfidenceCalibrator.load(folder / _UNSTEMMED_HYBRID_CALIBRATION_FILE)
    threshold = plain.info["recommended_min_confidence"]["threshold"]
    assert recommended_min_confidence(str(folder), retriever="hybrid") == threshold
    assert recommended_min_confidence(str(folder), retriever="hybrid", stemmer=None) == threshold
    with pytest.raises(ValueError, match="ships no hybrid confidence calibrator .*unstemmed"):
        recommended_min_confidence(str(tmp_path), retriever="hybrid")  # a folder with neither
