"""Tests for kl_retrievers.calibration: the confidence calibrator, its features, ECE and the shipped file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.calibration import (
    CALIBRATION_FILE,
    FEATURES,
    NEEDS_REFERENCE,
    ConfidenceCalibrator,
    default_calibrator,
    expected_calibration_error,
    feature_matrix,
    query_features,
    reliability_table,
)
from kl_retrievers.qpp import post_retrieval_predictors


def _synthetic(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Two features on different scales and a known logistic relation."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(-1.0, 0.2, n), rng.normal(0.05, 0.03, n)])
    coef, intercept = np.array([4.0, 30.0]), 2.5
    p = 1.0 / (1.0 + np.exp(-(x @ coef + intercept)))
    y = (rng.random(n) < p).astype(float)
    return x, y, coef, intercept


def test_fit_recovers_a_known_logistic_relation() -> None:
    x, y, coef, intercept = _synthetic()
    cal = ConfidenceCalibrator(["max_score", "gap12"], l2=0.0).fit(x, y)
    assert cal.coef is not None and cal.scale is not None and cal.center is not None and cal.intercept is not None
    raw = cal.coef / cal.scale  # back to the original feature scale
    np.testing.assert_allclose(raw, coef, rtol=0.15)
    raw_intercept = cal.intercept - float(raw @ cal.center)
    assert raw_intercept == pytest.approx(intercept, abs=0.5)
    # the fitted probabilities are calibrated on fresh data from the same relation
    x2, y2, _, _ = _synthetic(seed=1)
    assert expected_calibration_error(cal.predict(x2), y2) < 0.03


def test_soft_targets_and_sample_weights() -> None:
    x, _, coef, intercept = _synthetic(2000)
    p = 1.0 / (1.0 + np.exp(-(x @ coef + intercept)))
    cal = ConfidenceCalibrator(["max_score", "gap12"], l2=0.0).fit(x, p)  # soft targets: exact probabilities
    np.testing.assert_allclose(cal.predict(x), p, atol=1e-3)
    # weights: a zero weight removes a row (same fit as without it)
    w = np.ones(len(p))
    w[:500] = 0.0
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 0.2, len(p)), 0, 1)
    a = ConfidenceCalibrator(["max_score", "gap12"], l2=0.0).fit(x, noisy, sample_weight=w).predict(x[:5])
    b = ConfidenceCalibrator(["max_score", "gap12"], l2=0.0).fit(x[500:], noisy[500:]).predict(x[:5])
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_outputs_are_probabilities_even_far_outside_the_training_range() -> None:
    x, y, _, _ = _synthetic(500)
    cal = ConfidenceCalibrator(["max_score", "gap12"]).fit(x, y)
    extreme = np.array([[-1e6, -1e6], [1e6, 1e6], [0.0, 0.0]])
    p = cal.predict(extreme)
    assert p.shape == (3,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert p[0] < 1e-6 and p[1] > 1 - 1e-6
    assert cal.predict(x[0]).shape == (1,)  # one query as a 1-D row


def test_extreme_finite_inputs_give_probabilities_at_the_monotone_limits() -> None:
    """1e308 overflowed the standardised features to inf, and inf - inf made the probability NaN (no abstention)."""
    cal = default_calibrator()
    assert cal.features == ["uncertainty", "max_score", "gap12"]
    assert cal.coef is not None and cal.coef[0] < 0 < cal.coef[1] and cal.coef[2] > 0
    typical = [0.0, -0.5, 0.05]
    huge = 1e308
    rows, expected = [], []
    for j, sign in enumerate(np.sign(cal.coef)):
        for value in (huge, -huge):
            row = list(typical)
            row[j] = value
            rows.append(row)
            expected.append(1.0 if value * sign > 0 else 0.0)  # the sigmoid's limit along that feature
    with np.errstate(all="raise"):  # no overflow or invalid-value warning escapes either
        p = cal.predict(np.array(rows))
        mixed = cal.predict([[0.0, -huge, huge], [huge, huge, 0.0]])
    np.testing.assert_array_equal(p, expected)
    assert np.isfinite(mixed).all() and ((mixed >= 0) & (mixed <= 1)).all()
    assert cal.confidence([huge, 0.0], 0.0) == 1.0  # a top-2 gap of 1e308: certain
    # inside any real range nothing changes
    x, y, _, _ = _synthetic(300)
    fit = ConfidenceCalibrator(["max_score", "gap12"]).fit(x, y)
    assert fit.center is not None and fit.scale is not None and fit.coef is not None
    plain = 1.0 / (1.0 + np.exp(-(((x - fit.center) / fit.scale) @ fit.coef + fit.intercept)))
    np.testing.assert_allclose(fit.predict(x), plain, rtol=1e-12)


def test_save_load_round_trip_is_readable_json(tmp_path: Path) -> None:
    x, y, _, _ = _synthetic(500)
    info = {"training_data": [{"set": "synthetic", "queries": 500}], "target": "top-1 relevant"}
    cal = ConfidenceCalibrator(["max_score", "gap12"], l2=0.5).fit(x, y, info=info)
    path = cal.save(tmp_path / "cal.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["features"] == ["max_score", "gap12"] and data["library_version"]
    assert data["info"]["training_data"][0]["set"] == "synthetic" and data["info"]["n_train"] == 500
    back = ConfidenceCalibrator.load(path)
    assert back.features == cal.features and back.l2 == 0.5
    np.testing.assert_array_equal(back.predict(x[:50]), cal.predict(x[:50]))
    assert "fitted" in repr(back)


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    x, y, _, _ = _synthetic(200)
    good = ConfidenceCalibrator(["max_score", "gap12"]).fit(x, y).to_dict()
    cases = {
        "not JSON": "{oops",
        "not a confidence calibrator": json.dumps({**good, "format": "something-else"}),
        "format_version 99": json.dumps({**good, "format_version": 99}),
        "'coef' must be 2 finite": json.dumps({**good, "coef": [1.0]}),
        "'scale' must be positive": json.dumps({**good, "scale": [1.0, 0.0]}),
        "'intercept' must be": json.dumps({**good, "intercept": "x"}),
        "unknown feature": json.dumps({**good, "features": ["max_score", "bogus"]}),
    }
    for message, text in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            ConfidenceCalibrator.load(path)


def test_bad_input_errors() -> None:
    x, y, _, _ = _synthetic(200)
    with pytest.raises(ValueError, match="unknown feature"):
        ConfidenceCalibrator(["max_score", "magic"])
    with pytest.raises(ValueError, match="distinct"):
        ConfidenceCalibrator(["gap12", "gap12"])
    with pytest.raises(ValueError, match="l2"):
        ConfidenceCalibrator(["gap12"], l2=-1.0)
    cal = ConfidenceCalibrator(["max_score", "gap12"])
    with pytest.raises(RuntimeError, match="not fitted"):
        cal.predict(x)
    with pytest.raises(ValueError, match=r"shape \(n_queries, 2\)"):
        cal.fit(x[:, :1], y)
    with pytest.raises(ValueError, match="targets must be in"):
        cal.fit(x, y * 2)
    with pytest.raises(ValueError, match="feature rows but"):
        cal.fit(x, y[:-1])
    with pytest.raises(ValueError, match="sample_weight"):
        cal.fit(x, y, sample_weight=-np.ones(len(y)))
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7, column 1 is nan"):
        cal.fit(bad, y)
    cal.fit(x, y)
    with pytest.raises(ValueError, match="row 7, column 1 is nan"):
        cal.predict(bad)
    with pytest.raises(ValueError, match=r"shape \(n_queries, 2\)"):
        cal.predict(np.zeros((3, 3)))


def test_query_features_definitions_and_errors() -> None:
    scores = [-2.0, -0.5, -1.0, -3.0, -1.5, -2.5, -0.8, -1.2, -2.2, -0.9, -4.0]  # unsorted, 11 scores
    f = dict(zip(FEATURES, query_features(scores, 0.25, list(FEATURES), reference=-3.5), strict=True))
    s = np.sort(scores)[::-1]
    assert f["uncertainty"] == 0.25 and f["max_score"] == -0.5 and f["gap12"] == pytest.approx(0.3)
    assert f["gap1_10"] == pytest.approx(s[0] - s[:10].mean()) and f["std10"] == pytest.approx(s[:10].std())
    # nqc, wig, max_score and gap12 are exactly the QPP predictors of kl_retrievers.qpp
    post = post_retrieval_predictors({"q": {f"d{i}": v for i, v in enumerate(scores)}}, reference={"q": -3.5})
    for name in ("max_score", "gap12", "nqc", "wig"):
        assert f[name] == pytest.approx(post[name]["q"])
    with pytest.raises(ValueError, match="at least 2 retrieved scores"):
        query_features([-1.0], 0.0)
    with pytest.raises(ValueError, match="position 1 is nan"):
        query_features([-1.0, float("nan")], 0.0)
    with pytest.raises(ValueError, match="uncertainty is inf"):
        query_features([-1.0, -2.0], float("inf"))
    with pytest.raises(ValueError, match="need the corpus reference"):
        query_features([-1.0, -2.0], 0.0, sorted(NEEDS_REFERENCE))
    with pytest.raises(ValueError, match="reference score of 0"):
        query_features([-1.0, -2.0], 0.0, ["nqc"], reference=0.0)
    with pytest.raises(ValueError, match="query row 1"):
        feature_matrix([{"top_scores": [-1.0, -2.0], "uncertainty": 0.0}, {"top_scores": [-1.0]}], ["gap12"])


def test_ece_and_reliability_table() -> None:
    # hand-computed: bin [0, 0.5) holds 0.1 and 0.15 (observed 1/2), bin [0.5, 1] holds 0.9 (observed 1)
    rows = reliability_table([0.1, 0.15, 0.9], [0, 1, 1], n_bins=2)
    assert [r["n"] for r in rows] == [2, 1]
    assert rows[0]["confidence"] == pytest.approx(0.125) and rows[1]["observed"] == 1.0
    assert expected_calibration_error([0.1, 0.15, 0.9], [0, 1, 1], n_bins=2) == pytest.approx((0.75 + 0.1) / 3)
    assert reliability_table([1.0], [1])[-1]["n"] == 1  # p = 1 falls in the last bin
    assert reliability_table([0.05], [0])[5]["confidence"] is None  # empty bins are listed
    # calibrated probabilities have a small ECE; a constant wrong one has ECE = |error|
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    assert expected_calibration_error(p, rng.random(20000) < p) < 0.02
    assert expected_calibration_error(np.full(100, 0.9), np.r_[np.ones(50), np.zeros(50)]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="one length"):
        expected_calibration_error([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_table([0.5], [1], n_bins=0)


def test_shipped_calibrator_is_fitted_on_training_data_only() -> None:
    cal = default_calibrator()
    assert set(cal.features) <= set(FEATURES) - NEEDS_REFERENCE  # a retriever has every input
    sets = [t["set"] for t in cal.info["training_data"]]
    assert sets == ["scifact:train", "nfcorpus-preprocessed:train", "squad:train"]
    assert not any(s.endswith(":test") for s in sets)
    assert cal.info["model"] == "minilm-gauss-soup" and "top-1" in cal.info["target"]
    p = cal.confidence([-0.3, -0.9, -1.0, -1.1, -1.2, -1.3, -1.3, -1.4, -1.5, -1.6], 0.0)
    q = cal.confidence([-0.9, -0.9, -1.0, -1.1, -1.2, -1.3, -1.3, -1.4, -1.5, -1.6], 0.0)
    assert 0.0 <= q < p <= 1.0  # a clear winner at the top is more likely relevant than a tie
    with pytest.raises(ValueError, match="ships no confidence calibrator"):
        default_calibrator("minilm-unit-variance")
    assert CALIBRATION_FILE.endswith(".json")


def test_recommended_min_confidence_per_model_and_retriever() -> None:
    from kl_retrievers.calibration import (
        DEFAULT_HYBRID_MIN_CONFIDENCE,
        DEFAULT_MIN_CONFIDENCE,
        default_hybrid_calibrator,
        recommended_min_confidence,
    )

    assert recommended_min_confidence() == DEFAULT_MIN_CONFIDENCE
    assert recommended_min_confidence("minilm-gauss-soup", retriever="hybrid") == DEFAULT_HYBRID_MIN_CONFIDENCE
    bge = "bge-small-unit-variance"
    for retriever, cal in (("dense", default_calibrator(bge)), ("hybrid", default_hybrid_calibrator(bge))):
        assert (
            recommended_min_confidence(bge, retriever=retriever) == cal.info["recommended_min_confidence"]["threshold"]  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match=r"retriever must be one of \['dense', 'hybrid'\]; got 'sparse'"):
        recommended_min_confidence(retriever="sparse")  # type: ignore[arg-type]
    assert recommended_min_confidence(f"kl_retrievers:{bge}") == recommended_min_confidence(bge)  # a name_or_path
    with pytest.raises(ValueError, match="'minilm-unit-variance' ships no dense confidence calibrator"):
        recommended_min_confidence("minilm-unit-variance")


def test_recommended_min_confidence_of_a_saved_model_folder(tmp_path: Path) -> None:
    from kl_retrievers.calibration import recommended_min_confidence

    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
    cal.save(tmp_path / CALIBRATION_FILE)
    with pytest.raises(ValueError, match="records no recommended min_confidence"):
        recommended_min_confidence(str(tmp_path))
    cal.info["recommended_min_confidence"] = {"threshold": 0.42}
    cal.save(tmp_path / CALIBRATION_FILE)
    assert recommended_min_confidence(str(tmp_path)) == 0.42
    # no hybrid calibrator: the hybrid retrievers fall back to the dense one, and so does its threshold (warned)
    assert recommended_min_confidence(str(tmp_path), retriever="hybrid") == 0.42


def test_recommended_min_confidence_of_the_default_models_folder_or_a_copy_is_the_constant(tmp_path: Path) -> None:
    """By name it was 0.3; its folder (or a copy) raised "records no recommended min_confidence"."""
    import shutil

    from kl_retrievers.calibration import recommended_min_confidence
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    folder = bundled_model_path(DEFAULT_MODEL)
    copy = tmp_path / "my-copy"
    shutil.copytree(folder, copy)
    for where in (str(folder), str(copy)):
        assert recommended_min_confidence(where) == recommended_min_confidence()
        assert recommended_min_confidence(where, retriever="hybrid") == recommended_min_confidence(retriever="hybrid")
    with pytest.raises(ValueError, match=r"model must be a bundled model \[.*minilm-gauss-soup.*got 'no-such-model'"):
        recommended_min_confidence("no-such-model")
    with pytest.raises(ValueError, match="ships no dense confidence calibrator"):
        recommended_min_confidence(str(tmp_path))  # a folder without one
