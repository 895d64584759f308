"""``benchmarks/calibration.py`` dumps record how their encodings were made; ``fit`` and ``report`` say when it differs.

The shipped hybrid calibrator and its committed dumps were made from int8 ONNX encodings of the old rule
(queries batched, documents sorted longest first); since 2026-12-06 ``encode_dataset`` encodes such an
encoder's queries one at a time and its documents in input order, so today's dumps differ in every dense
feature. Nothing said so: the dumps recorded no rule, and ``fit`` / ``report`` read them silently.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.calibration import HYBRID_FEATURES, ConfidenceCalibrator
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.gaussian import Gaussians

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import calibration  # noqa: E402

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

DIM = 4
CORPUS = {
    "d1": "the cat sat on the mat",
    "d2": "a dog ran in the park today",
    "d3": "green tea",
    "d4": "water flows over black rocks in the river bed",
    "d5": "cats and dogs sleep",
}
QUERIES = {"q1": "where did the cat sit", "q2": "dog in a park", "q3": "tea"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}


class _Int8LikeEncoder:
    """A batch-dependent encoder (as an int8 ONNX graph is) that records the batches it is given."""

    batch_invariant = False
    name_or_path = "toy-int8"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def _encode(self, kind: str, texts: list[str]) -> Gaussians:
        self.calls.append((kind, list(texts)))
        mean = np.array([[len(t), t.count(" "), t.count("a"), t.count("e")] for t in texts], dtype=np.float32)
        return Gaussians(mean / 10.0, np.ones((len(texts), DIM), dtype=np.float32))

    def encode_queries(self, texts: list[str], batch_size: int = 32, **_: Any) -> Gaussians:
        return self._batched("queries", texts, batch_size)

    def encode_documents(self, texts: list[str], batch_size: int = 32, **_: Any) -> Gaussians:
        return self._batched("documents", texts, batch_size)

    def _batched(self, kind: str, texts: list[str], batch_size: int) -> Gaussians:
        parts = [self._encode(kind, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return Gaussians(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]))


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The script's folders under ``tmp_path`` (the dumps, the logs, the encoding cache)."""
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "ROOT", tmp_path)
    monkeypatch.setattr(calibration, "CALIB_DIR", tmp_path / "calib")
    monkeypatch.setattr(calibration, "CALIB_LOG", tmp_path / "calibration.jsonl")
    monkeypatch.setattr(calibration, "MODEL", calibration.REFERENCE_MODEL)
    monkeypatch.setattr(calibration, "STEMMER", "english")
    return tmp_path


def test_hybrid_dump_records_the_rule_its_encodings_were_made_by(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.pretrained

    encoder = _Int8LikeEncoder()
    monkeypatch.setattr(kl_retrievers.pretrained, "load_model", lambda *a, **k: encoder)
    dataset = BeirDataset(tiny, "test", {d: {"title": "", "text": t} for d, t in CORPUS.items()}, QUERIES, QRELS)
    monkeypatch.setattr(calibration, "load_split", lambda spec: dataset)
    args = argparse.Namespace(sets=["scifact:test"], batch_size=2, threads=1, backend=None)
    calibration.cmd_hybrid_dump(args)

    meta = json.loads((tiny / "calib" / "hybrid.scifact.test.json").read_text(encoding="utf-8"))["meta"]
    want = {
        "batch_invariant": False,
        "batch_size": 2,
        "queries": {"batch_size": 1, "order": "input"},
        "documents": {"batch_size": 2, "order": "input"},
    }
    assert meta["encoding"] == want
    # and it is what encode_dataset did: queries one at a time, documents in input order in batches of 2
    queries = [texts for kind, texts in encoder.calls if kind == "queries"]
    documents = [texts for kind, texts in encoder.calls if kind == "documents"]
    assert all(len(batch) == 1 for batch in queries) and len(queries) == len(QUERIES)
    assert [t for batch in documents for t in batch] == [f" {t}".strip() for t in CORPUS.values()]
    assert max(len(batch) for batch in documents) == 2
    assert calibration.warn_encoding(tiny / "calib" / "hybrid.scifact.test.json", meta) is False


def _write_dump(path: Path, encoding: dict[str, Any] | None, *, seed: int, n: int = 60) -> None:
    """A hybrid dump of ``n`` random rows (answerable or not, 10 articles), with ``encoding`` in its meta."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(n):
        x = rng.normal(size=len(HYBRID_FEATURES)).round(5).tolist()
        label = int(x[1] + rng.normal(scale=0.5) > 0)
        row = {"x": x, "top1": "d", "top1_relevant": label, "unanswerable": 1 - label, "article": f"a{i % 10}"}
        rows[f"q{i}"] = row
    meta: dict[str, Any] = {
        "model": calibration.REFERENCE_MODEL, "encoder": "OnnxGaussianEncoder", "backend": None,
        "fingerprint": "0123456789abcdef", "features": list(HYBRID_FEATURES), "stemmer": "english",
        "time": "2026-12-05T00:19:15",
    }  # fmt: skip
    if encoding is not None:
        meta["encoding"] = encoding
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "per_query": rows}) + "\n", encoding="utf-8")


def _encoding_warnings(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Dump file name -> its warning."""
    out = {}
    for r in caplog.records:
        if r.levelno == logging.WARNING and r.name == "benchmarks.calibration" and "rule" in r.getMessage():
            out[r.getMessage().split(":")[0].split("/")[-1]] = r.getMessage()
    return out


#: Today's rule for an int8 encoder at batch size 32, and the one before 2026-12-06.
TODAY = {
    "batch_invariant": False,
    "batch_size": 32,
    "queries": {"batch_size": 1, "order": "input"},
    "documents": {"batch_size": 32, "order": "input"},
}
OLD_RULE = {
    "batch_invariant": False,
    "batch_size": 32,
    "queries": {"batch_size": 32, "order": "longest first"},
    "documents": {"batch_size": 32, "order": "longest first"},
}


def test_fit_and_report_warn_about_dumps_of_another_rule_or_of_none(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    today = TODAY
    squad, scifact, nfcorpus = calibration.HYBRID_TRAIN_SETS
    sets = {squad: today, scifact: None, nfcorpus: OLD_RULE, "scifact:test": today}
    for i, (spec, encoding) in enumerate(sets.items()):
        _write_dump(calibration.hybrid_path(spec), encoding, seed=i)
    monkeypatch.setattr(calibration, "TEST_SETS", ("scifact:test",))
    monkeypatch.setattr(calibration, "HYBRID_CANDIDATES", {"two": ("max_score", "gap12")})
    out = tiny / "hybrid_confidence_calibration.json"

    with caplog.at_level(logging.WARNING, logger="benchmarks.calibration"):
        calibration.cmd_fit(argparse.Namespace(hybrid=True, out=out, l2=1.0))
    warned = _encoding_warnings(caplog)
    assert set(warned) == {"hybrid.scifact.train.json", "hybrid.nfcorpus-preprocessed.train.json"}
    assert "made before the encoding rule was recorded" in warned["hybrid.scifact.train.json"]
    old = warned["hybrid.nfcorpus-preprocessed.train.json"]
    assert "another rule than today's" in old
    assert "recorded queries in batches of 32, longest first" in old and "today queries one at a time" in old
    info = ConfidenceCalibrator.load(out).info
    assert info["encoding"][squad] == today  # the fit records the rules of the dumps it read

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmarks.calibration"):
        calibration.cmd_report(argparse.Namespace(hybrid=True, calibrator=out))
    assert set(_encoding_warnings(caplog)) == {"hybrid.scifact.train.json", "hybrid.nfcorpus-preprocessed.train.json"}
    assert len((tiny / "calibration.jsonl").read_text(encoding="utf-8").splitlines()) == 4


def test_dense_fit_and_report_read_the_same_record(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``dump`` records the rule too (an ONNX ``--backend``); a dense dump without one is named."""
    rng = np.random.default_rng(0)
    for spec in calibration.TRAIN_SETS:
        rows = {}
        for i in range(40):
            s1 = float(rng.normal())
            rows[f"q{i}"] = {"top_scores": [s1, s1 - abs(rng.normal())], "uncertainty": float(rng.normal()),
                             "top1_relevant": int(s1 > 0), "ndcg@10": float(s1 > 0)}  # fmt: skip
        meta: dict[str, Any] = {"fingerprint": "f", "time": "2026-12-02T13:50:33", "backend": "torch"}
        if spec != "squad:train":
            meta["encoding"] = {  # a torch encoder's: both sides longest first
                "batch_invariant": True,
                "batch_size": 32,
                "queries": {"batch_size": 32, "order": "longest first"},
                "documents": {"batch_size": 32, "order": "longest first"},
            }
        path = calibration.calib_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "per_query": rows}) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="benchmarks.calibration"):
        calibration.cmd_fit(argparse.Namespace(hybrid=False, out=tiny / "cal.json", l2=1.0))
    warned = _encoding_warnings(caplog)
    assert set(warned) == {"squad.train.json"} and "encoder torch" in warned["squad.train.json"]
    assert ConfidenceCalibrator.load(tiny / "cal.json").info["encoding"]["squad:train"] is None
