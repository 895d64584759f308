"""Fixes of stop 38: a calibrator of another model warns, NQC with a run-mean reference, finite calibrator JSON.

1. An explicit calibrator whose ``info["model"]`` names another model than the encoder's is used,
   with one WARNING naming both (``kl_retrievers._confidence``).
2. Without a corpus reference, NQC divides by the mean of the retrieved scores: a run whose scores
   cross 0 for some query leaves NQC out, with a reason under ``missing``, instead of 1e16 or a
   ``ValueError`` (``kl_retrievers.qpp``).
3. ``ConfidenceCalibrator.save`` writes standard JSON when ``info`` holds NaN or infinity.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers._confidence as confidence_module
from kl_retrievers._confidence import ConfidenceScorer
from kl_retrievers.calibration import (
    CALIBRATION_FILE,
    ConfidenceCalibrator,
    default_calibrator,
    default_hybrid_calibrator,
)
from kl_retrievers.pretrained import bundled_model_path
from kl_retrievers.qpp import post_retrieval_predictors, qpp_for_run

MINILM = "minilm-gauss-soup"
BGE = "bge-small-unit-variance"
LOGGER = "kl_retrievers._confidence"


def _encoder(name_or_path: str) -> Any:
    return type("Encoder", (), {"name_or_path": name_or_path})()


def _mismatch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == LOGGER and "fitted for the model" in r.getMessage()
    ]


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence_module, "_WARNED", set())


# ----------------------------------------------------------------- 1. a calibrator of another model


def test_a_calibrator_of_another_model_warns_once_naming_both(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = bundled_model_path(MINILM) / CALIBRATION_FILE
    bge = _encoder(f"kl_retrievers:{BGE}")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        scorer = ConfidenceScorer(path)
        cal = scorer.calibrator(bge)
        scorer.calibrator(bge)
        ConfidenceScorer(path).calibrator(_encoder(f"kl_retrievers:{BGE}"))  # same pair: no second warning
    assert cal is not None and cal.info["model"] == MINILM  # still used: a reuse may be deliberate
    warned = _mismatch_warnings(caplog)
    assert len(warned) == 1 and MINILM in warned[0] and BGE in warned[0]


def test_a_hybrid_calibrator_of_another_model_warns_too(fresh_warnings: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cal = ConfidenceScorer(default_hybrid_calibrator(BGE), "hybrid").calibrator(_encoder(MINILM))
    assert cal is not None and cal.kind == "hybrid"
    warned = _mismatch_warnings(caplog)
    assert len(warned) == 1 and MINILM in warned[0] and BGE in warned[0]


def test_matching_or_unknown_models_do_not_warn(fresh_warnings: None, caplog: pytest.LogCaptureFixture) -> None:
    synthetic = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # the model's own calibrators (dense and hybrid carry different fingerprints: names are compared)
        for name in (MINILM, f"kl_retrievers:{MINILM}", str(bundled_model_path(MINILM))):
            assert ConfidenceScorer(default_calibrator()).calibrator(_encoder(name)) is not None
            assert ConfidenceScorer(default_hybrid_calibrator(), "hybrid").calibrator(_encoder(name)) is not None
            assert ConfidenceScorer(default_calibrator(), "hybrid").calibrator(_encoder(name)) is not None
        assert ConfidenceScorer(default_calibrator(BGE)).calibrator(_encoder(f"kl_retrievers:{BGE}")) is not None
        # a calibrator recording no model, or an encoder of no known model (a hub id, a test encoder)
        assert ConfidenceScorer(synthetic).calibrator(_encoder(f"kl_retrievers:{BGE}")) is synthetic
        assert ConfidenceScorer(default_calibrator()).calibrator(_encoder("tiny-random")) is not None
        assert ConfidenceScorer(default_calibrator()).calibrator(_encoder("org/some-hub-model")) is not None
        assert ConfidenceScorer(default_calibrator()).calibrator(None) is not None
    assert _mismatch_warnings(caplog) == []


def test_a_saved_model_folder_is_named_by_its_folder_and_its_own_calibrators(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    copy = tmp_path / "my-copy"  # e.g. a copy of the default model: its calibrator records minilm-gauss-soup
    copy.mkdir()
    default_calibrator().save(copy / CALIBRATION_FILE)
    own = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1], info={"model": "mine"})
    mine = tmp_path / "mine"
    mine.mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert ConfidenceScorer(default_calibrator()).calibrator(_encoder(str(copy))) is not None
        assert ConfidenceScorer(own).calibrator(_encoder(str(mine) + "/")) is own  # the folder's name
        assert _mismatch_warnings(caplog) == []
        ConfidenceScorer(default_calibrator(BGE)).calibrator(_encoder(str(copy)))
    warned = _mismatch_warnings(caplog)
    assert len(warned) == 1 and BGE in warned[0] and "my-copy" in warned[0]


def test_a_resaved_copy_or_an_onnx_export_of_the_default_does_not_warn_with_its_calibrator(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Review finding: a re-saved copy (no calibrator files) or an ONNX export of the default was named
    by its folder, so the default's own calibrator, passed as the missing-calibrator message asks,
    was warned about as another model's."""
    resaved = tmp_path / "my-soup"  # what save_pretrained writes: no calibration files
    resaved.mkdir()
    (resaved / "config.json").write_text(json.dumps({"encoder": {"dim": 8}}), encoding="utf-8")
    exported = tmp_path / "soup-onnx"  # an ONNX export records the model it came from
    exported.mkdir()
    (exported / "config.json").write_text(
        json.dumps({"source": {"name_or_path": f"kl_retrievers:{MINILM}"}}), encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for folder in (resaved, exported):
            assert ConfidenceScorer(default_calibrator()).calibrator(_encoder(str(folder))) is not None
        assert _mismatch_warnings(caplog) == []
        ConfidenceScorer(default_calibrator(BGE)).calibrator(_encoder(str(exported)))  # really another model
    warned = _mismatch_warnings(caplog)
    assert len(warned) == 1 and BGE in warned[0] and "soup-onnx" in warned[0]


def test_the_langchain_retriever_warns_for_a_calibrator_of_another_model(
    fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import make_tiny_encoder
    from kl_retrievers.langchain import CONFIDENCE_KEY, KLEmbeddings, KLRetriever, KLVectorStore

    enc = make_tiny_encoder(seed=1)
    enc.name_or_path = f"kl_retrievers:{BGE}"  # as a bge encoder reports it
    store = KLVectorStore.from_texts(["black rock", "white sand", "green tea"], KLEmbeddings(enc))
    retriever = KLRetriever.from_store(store, k=2, calibrator=bundled_model_path(MINILM) / CALIBRATION_FILE)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        docs = retriever.invoke("black rock")
        retriever.invoke("green tea")
    assert len(docs) == 2 and docs[0].metadata[CONFIDENCE_KEY] is not None
    warned = _mismatch_warnings(caplog)
    assert len(warned) == 1 and MINILM in warned[0] and BGE in warned[0]


# ----------------------------------------------------------------- 2. NQC with a run-mean reference


def test_nqc_is_left_out_when_retrieved_scores_cross_zero() -> None:
    run = {"a": {"d1": 0.30, "d2": -0.10, "d3": -0.1999}, "b": {"d1": 0.30, "d2": -0.10, "d3": -0.2}}
    out = post_retrieval_predictors(run)  # was {'a': 6479.8, 'b': 2.3e16}
    assert "nqc" not in out
    assert out["max_score"] == {"a": 0.3, "b": 0.3} and out["gap12"] == pytest.approx({"a": 0.4, "b": 0.4})
    with_ref = post_retrieval_predictors(run, reference={"a": -1.0, "b": -1.0})  # a corpus reference: kept
    assert set(with_ref["nqc"]) == {"a", "b"}


def test_a_run_mean_of_exactly_zero_does_not_raise() -> None:
    out = post_retrieval_predictors({"q": {"x": 1.0, "y": -1.0}, "r": {"x": 2.0, "y": 1.0}})  # was a ValueError
    assert "nqc" not in out and out["wig"]["q"] == 0.0


def test_one_sign_runs_keep_their_nqc_unchanged() -> None:
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):  # BM25-like (>= 0, zeros allowed) and -KL-like (< 0) scores
        run = {f"q{i}": {f"d{j}": sign * float(v) for j, v in enumerate(rng.random(20) * 5)} for i in range(6)}
        run["q0"]["d0"] = 0.0
        out = post_retrieval_predictors(run, nqc_k=10)
        for qid, docs in run.items():
            s = np.sort(np.array(list(docs.values())))[::-1]
            assert out["nqc"][qid] == float(s[:10].std()) / abs(float(s.mean()))


def _judged(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {q: {"ndcg@10": i / len(run)} for i, q in enumerate(run)}


def test_qpp_for_run_reports_nqc_missing_with_a_reason() -> None:
    rng = np.random.default_rng(1)
    run = {f"q{i}": {f"d{j}": float(v) for j, v in enumerate(rng.uniform(0.2, 1.0, 10))} for i in range(12)}
    run["q3"] = {"d0": 0.3, "d1": -0.1, "d2": -0.2}  # one query whose scores cross 0: its mean is 0
    qids = list(run)
    report, values = qpp_for_run(run, _judged(run), query_ids=qids, query_texts=["x"] * len(qids), depth=100, n_boot=0)
    assert "nqc" not in values and "nqc" not in report["predictors"]
    reason = report["missing"]["nqc"]
    assert "both signs" in reason and "'q3'" in reason and "1 of the 12" in reason
    assert {"max_score", "gap12", "wig"} <= set(report["predictors"])
    json.dumps(report, allow_nan=False)  # the evaluate --json object stays standard JSON
    one_sign = {q: {d: abs(v) for d, v in docs.items()} for q, docs in run.items()}
    report2, _ = qpp_for_run(
        one_sign, _judged(one_sign), query_ids=qids, query_texts=["x"] * len(qids), depth=100, n_boot=0
    )
    assert "nqc" in report2["predictors"] and "nqc" not in report2["missing"]


# ----------------------------------------------------------------- 3. finite calibrator JSON


def _fitted(info: dict[str, Any] | None = None) -> ConfidenceCalibrator:
    return ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1], info=info)


def test_save_writes_standard_json_for_non_finite_info(tmp_path: Path) -> None:
    cal = _fitted({"note": "a", "ece": float("nan"), "per_set": {"x": [1.0, float("inf")]}})
    with pytest.warns(UserWarning, match=r"info\.ece, info\.per_set\.x\[1\]"):  # the caller's facts: a warning
        path = cal.save(tmp_path / "cal.json")
    text = path.read_text(encoding="utf-8")

    def refuse(constant: str) -> float:
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)  # no NaN / Infinity in the file
    assert data["info"]["ece"] is None and data["info"]["per_set"]["x"] == [1.0, None]
    loaded = ConfidenceCalibrator.load(path)
    assert loaded.info["note"] == "a" and loaded.info["ece"] is None
    assert math.isnan(cal.info["ece"])  # the calibrator itself is not changed
    np.testing.assert_array_equal(loaded.predict([[0.05], [0.25]]), cal.predict([[0.05], [0.25]]))


def test_save_refuses_a_non_finite_parameter_naming_it(tmp_path: Path) -> None:
    cal = _fitted()
    assert cal.coef is not None
    cal.coef[0] = float("nan")
    with pytest.raises(ValueError, match="'coef'"):
        cal.save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
