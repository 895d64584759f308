"""``benchmarks/abstention.py``: the unanswerable halving, the abstention curve, and the recorded default threshold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import abstention  # noqa: E402

from kl_retrievers.calibration import (  # noqa: E402
    DEFAULT_HYBRID_FEATURES,
    DEFAULT_HYBRID_MIN_CONFIDENCE,
    DEFAULT_MIN_CONFIDENCE,
)


def test_halve_removes_whole_paragraphs_and_splits_about_half() -> None:
    rng = np.random.default_rng(1)
    qrels = {f"q{i}": {f"p{int(rng.integers(0, 40))}": 1} for i in range(200)}
    qids = sorted(qrels)
    h = abstention.halve(qrels, qids, seed=3)
    assert sorted(h.answerable + h.unanswerable) == qids  # every question is exactly one kind
    assert all(next(iter(qrels[q])) in h.removed for q in h.unanswerable)
    assert not any(next(iter(qrels[q])) in h.removed for q in h.answerable)
    assert 100 <= len(h.unanswerable) <= 100 + max(sum(1 for r in qrels.values() if p in r) for p in h.removed)
    assert abstention.halve(qrels, qids, seed=3).removed == h.removed  # seeded
    assert abstention.halve(qrels, qids, seed=4).removed != h.removed


def test_curve_counts_by_hand() -> None:
    conf = np.array([0.1, 0.3, 0.6, 0.2, 0.7, 0.9])
    unans = np.array([True, True, True, False, False, False])
    top1 = np.array([False, False, False, True, False, True])
    rows = abstention.abstention_curve(conf, unans, [0.0, 0.25, 0.65, 1.0], top1)
    assert [r["abstained"] for r in rows] == [0, 2, 4, 6]
    r = rows[2]  # abstains on 0.1, 0.3, 0.6 (unanswerable) and 0.2 (answerable)
    assert (r["precision"], r["recall"], r["answered"]) == (0.75, 1.0, round(2 / 3, 6))
    assert r["f1"] == pytest.approx(2 * 0.75 / 1.75, abs=1e-6)
    assert r["answered_p@1"] == 0.5
    assert rows[0]["f1"] == 0.0 and rows[3]["answered"] == 0.0 and rows[3]["answered_p@1"] is None
    with pytest.raises(ValueError, match="confidences"):
        abstention.abstention_curve(conf, unans[:3], [0.5])


def test_choose_threshold_respects_the_answered_floor() -> None:
    rows = [{"threshold": t, "f1": f, "answered": a} for t, f, a in [(0.1, 0.2, 1.0), (0.2, 0.4, 0.9), (0.3, 0.6, 0.8)]]
    assert abstention.choose_threshold(rows, 0.9)["threshold"] == 0.2
    assert abstention.choose_threshold(rows, 0.5)["threshold"] == 0.3
    with pytest.raises(ValueError, match="no threshold"):
        abstention.choose_threshold(rows, 1.01)


def test_held_out_articles_are_every_tenth() -> None:
    ids = [f"{a}-{p}" for a in range(25) for p in range(3)]
    assert abstention.held_out_articles(ids) == set(sorted(str(a) for a in range(25))[::10])


def test_default_min_confidence_is_the_logged_choice() -> None:
    """The constant is the threshold the last full run (not --quick, default backend) chose on the training articles."""
    log = REPO / "runs" / "abstention" / "abstention.jsonl"
    runs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    full = [r for r in runs if not r["quick"] and r.get("backend") is None and r["model"] == "minilm-gauss-soup"]
    assert full, f"{log} holds no full run"
    assert full[-1]["summary"]["dense"]["threshold"] == pytest.approx(DEFAULT_MIN_CONFIDENCE)
    assert 0.0 <= DEFAULT_MIN_CONFIDENCE <= 1.0


def test_the_hybrid_run_uses_the_shipped_hybrid_threshold() -> None:
    """The last full --hybrid run evaluated the shipped hybrid calibrator at DEFAULT_HYBRID_MIN_CONFIDENCE,
    and the training articles' curve chose that same threshold (the held-out articles chose nothing)."""
    log = REPO / "runs" / "abstention" / "abstention.jsonl"
    runs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    full = [
        r
        for r in runs
        if not r["quick"]
        and r.get("backend") is None
        and r["model"] == "minilm-gauss-soup"
        and "hybrid_dense_cal" in r["summary"]
    ]
    assert full, f"{log} holds no full --hybrid run with the hybrid calibrator"
    hybrid = full[-1]["summary"]["hybrid"]
    assert hybrid["threshold"] == pytest.approx(DEFAULT_HYBRID_MIN_CONFIDENCE)
    assert hybrid["train_choice"] == pytest.approx(DEFAULT_HYBRID_MIN_CONFIDENCE)
    assert full[-1]["hybrid_calibrator"]["features"] == list(DEFAULT_HYBRID_FEATURES)
