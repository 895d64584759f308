"""The hybrid confidence calibrator records its BM25 stemmer; store/hybrid duplication removed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import kl_retrievers._confidence as confidence_module
from kl_retrievers._confidence import ConfidenceScorer, hybrid_search
from kl_retrievers.calibration import ConfidenceCalibrator, default_hybrid_calibrator
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")
pytest.importorskip("scipy")

TEXTS = ["the cats sat on the mats", "a dog running in the sun", "green tea and bread", "water on black rocks"]
DIM = 4


class _Encoder:
    """Encodes every query as the same Gaussian (the test is about the calibrator, not the ranking)."""

    name_or_path = "toy-encoder"

    def encode_queries(self, batch: list[str], **_: object) -> Gaussians:
        return Gaussians(np.zeros((len(batch), DIM)), np.ones((len(batch), DIM)))


def _store(stemmer: str | None) -> KLHybridStore:
    store = KLHybridStore(_Encoder(), fusion="rrf", stemmer=stemmer)
    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(len(TEXTS), DIM)), rng.uniform(0.5, 2.0, size=(len(TEXTS), DIM)))
    store.add(TEXTS, gaussians=g, ids=[f"d{i}" for i in range(len(TEXTS))])
    return store


def _hybrid_calibrator(**info: object) -> ConfidenceCalibrator:
    """A tiny hybrid calibrator; ``info`` (e.g. ``bm25_stemmer=...``) is recorded as given."""
    x = np.array([[0.0], [0.2], [0.4], [0.6]])
    return ConfidenceCalibrator(["bm25_matched"], kind="hybrid").fit(x, [0, 0, 1, 1], info=info)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence_module, "_WARNED", set())


def _stemmer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "fitted on BM25" in r.getMessage()
    ]


# ------------------------------------------------------------------ the record


def test_a_hybrid_calibrator_records_its_bm25_stemmer_and_keeps_it_on_save(tmp_path: Path) -> None:
    stemmed = _hybrid_calibrator(bm25_stemmer="English")
    plain = _hybrid_calibrator(bm25_stemmer=None)
    unknown = _hybrid_calibrator()
    assert (stemmed.records_bm25_stemmer, stemmed.bm25_stemmer) == (True, "english")
    assert (plain.records_bm25_stemmer, plain.bm25_stemmer) == (True, None)
    assert (unknown.records_bm25_stemmer, unknown.bm25_stemmer) == (False, None)
    for name, cal in {"stemmed": stemmed, "plain": plain, "unknown": unknown}.items():
        back = ConfidenceCalibrator.load(cal.save(tmp_path / f"{name}.json"))
        assert (back.records_bm25_stemmer, back.bm25_stemmer) == (cal.records_bm25_stemmer, cal.bm25_stemmer)
    assert json.loads((tmp_path / "plain.json").read_text(encoding="utf-8"))["info"]["bm25_stemmer"] is None


@pytest.mark.parametrize("bad", [3, "", True, ["english"]])
def test_a_bm25_stemmer_that_is_not_a_name_or_none_is_refused(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bm25_stemmer.*PyStemmer language name.*or None") as fit_error:
        _hybrid_calibrator(bm25_stemmer=bad)
    assert repr(bad) in str(fit_error.value)
    data = _hybrid_calibrator(bm25_stemmer="english").to_dict()
    data["info"]["bm25_stemmer"] = bad
    with pytest.raises(ValueError, match=r"calibrator field 'info'\['bm25_stemmer'\]"):
        ConfidenceCalibrator.from_dict(data)


def test_the_shipped_hybrid_calibrators_record_the_stemmer_they_were_fitted_with() -> None:
    # the default model's was refitted on the stemmed hybrid at stop 42 (its training dumps record "english");
    # bge's was refitted on its stemmed hybrid at stop 43 (fitted unstemmed before; benchmarks/calibration.py now
    # records the stemmer of the dumps)
    default = default_hybrid_calibrator()
    assert (default.records_bm25_stemmer, default.bm25_stemmer) == (True, "english")
    bge = default_hybrid_calibrator("bge-small-unit-variance")
    assert (bge.records_bm25_stemmer, bge.bm25_stemmer) == (True, "english")


# ------------------------------------------------------------------ the warning


@pytest.mark.parametrize(("fitted", "store_stemmer"), [(None, "english"), ("english", None), ("porter", "english")])
def test_a_hybrid_store_warns_once_about_a_calibrator_fitted_with_another_stemmer(
    fitted: str | None, store_stemmer: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(store_stemmer)
    scorer = ConfidenceScorer(_hybrid_calibrator(bm25_stemmer=fitted), "hybrid")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        for query in ["cats on mats", "black rocks", "tea"]:
            hits, confidence, _ = hybrid_search(store, query, 2, scorer=scorer)
            assert hits and confidence is not None  # the calibrator is still used
    (message,) = _stemmer_warnings(caplog)
    assert ("not stemmed" if fitted is None else f"stemmed with {fitted!r}") in message
    assert ("not stemmed" if store_stemmer is None else f"stemmed with {store_stemmer!r}") in message
    assert f"stemmer={fitted!r}" in message


@pytest.mark.parametrize(
    ("info", "store_stemmer"), [({"bm25_stemmer": "english"}, "english"), ({}, None), ({}, "english")]
)
def test_no_stemmer_warning_for_a_matching_or_unrecorded_stemmer(
    info: dict[str, object], store_stemmer: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(store_stemmer)
    scorer = ConfidenceScorer(_hybrid_calibrator(**info), "hybrid")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert hybrid_search(store, "cats", 2, scorer=scorer)[1] is not None
    assert _stemmer_warnings(caplog) == []


def test_dense_calibrators_have_no_bm25_stemmer_to_check() -> None:
    from kl_retrievers._confidence import check_calibrator_stemmer

    dense = ConfidenceCalibrator(["gap12"]).fit([[0.0], [1.0]], [0, 1], info={"bm25_stemmer": "english"})
    assert check_calibrator_stemmer(dense, None) is True
    assert check_calibrator_stemmer(_hybrid_calibrator(bm25_stemmer="english"), None) is False


# ------------------------------------------------------------------ the factoring (no behaviour change)


def test_tunable_settings_are_the_saved_parameters_that_do_not_shape_the_index() -> None:
    pytest.importorskip("faiss")
    from kl_retrievers.store.faiss import BUILD_SETTINGS, TUNABLE_SETTINGS

    assert TUNABLE_SETTINGS == (
        "ef_search",
        "ef_construction",
        "nprobe",
        "rescore_pool",
        "rescore_factor",
        "norm_headroom",
        "exact_threshold",
        "compact_threshold",
        "seed",
        "batch_size",
    )
    assert not set(TUNABLE_SETTINGS) & set(BUILD_SETTINGS)
