"""Evaluations that say which evaluator made them; the hybrid threshold of a dense-only model.

1. Each evaluation of a training run records its evaluator (``"evaluator"``: a :class:`RetrievalEvaluator`'s
   dataset, split, metric, depth and similarity; any other callable's qualified name). A ``resume`` with another
   evaluator keeps the checkpoint's entries, warns naming both evaluators, and counts only its own evaluator's
   entries as done: a finished checkpoint is evaluated once by the new evaluator (before, it was taken as
   evaluated and the list silently mixed incomparable entries). Entries of older checkpoints (no description)
   are kept, with one warning line, and are not counted as done.
2. ``recommended_min_confidence(model, retriever="hybrid")`` of a model that ships only the dense calibrator is
   that calibrator's threshold, with a warning, as the hybrid retrievers fall back to it (before, it raised).

Everything runs on a tiny random BERT, a tiny BEIR folder and calibrators written under ``tmp_path``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_tiny_encoder, tiny_train_beir, tiny_train_config
from kl_retrievers import GaussianEncoder
from kl_retrievers._confidence import ConfidenceScorer
from kl_retrievers.calibration import (
    _UNSTEMMED_HYBRID_CALIBRATION_FILE,
    CALIBRATION_FILE,
    DEFAULT_MIN_CONFIDENCE,
    HYBRID_CALIBRATION_FILE,
    ConfidenceCalibrator,
    recommended_min_confidence,
)
from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path
from kl_retrievers.training import (
    RetrievalEvaluator,
    TrainingSet,
    from_beir,
    retrieval_evaluator,
    train_encoder,
    train_heads_cached,
)
from kl_retrievers.training.trainer import evaluator_description

TRAINER_LOGGER = "kl_retrievers.training.trainer"
OTHER = "made by another evaluator"  # the resume warning about other evaluators' entries
UNKNOWN = "record no evaluator"  # the resume warning about entries written before stop 45


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny training BEIR folder, with its train qrels also as a ``dev`` split."""
    folder = tiny_train_beir(tmp_path_factory.mktemp("stop45_beir") / "beir")
    shutil.copy(folder / "qrels" / "train.tsv", folder / "qrels" / "dev.tsv")
    return folder


@pytest.fixture(scope="module")
def ts(beir: Path) -> TrainingSet:
    return from_beir(beir, split="train")


class _MetricA:
    """An evaluator that counts its calls and reports one head weight."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, encoder: GaussianEncoder) -> Mapping[str, float]:
        self.calls += 1
        return {"w0": float(encoder.mean_head.weight[0, 0])}


class _MetricB(_MetricA):
    """Another evaluator (another class: another description)."""


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == TRAINER_LOGGER and r.levelno == logging.WARNING and text in r.getMessage()
    ]


def _state_evaluations(ckpt: Path) -> list[dict[str, object]]:
    evaluations = json.loads((ckpt / "state.json").read_text())["evaluations"]
    assert isinstance(evaluations, list)
    return evaluations


# ------------------------------------------------------------------ 1. each entry names its evaluator
def test_each_evaluation_records_its_evaluator(ts: TrainingSet, beir: Path, tmp_path: Path) -> None:
    ev = retrieval_evaluator(beir, split="dev", metric="mrr@10", k=5)
    ckpt = tmp_path / "ckpt"
    encoder = make_tiny_encoder(seed=2)
    result = train_heads_cached(encoder, ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=ev, eval_every=1)
    assert ev.description()["similarity"] is None  # similarity=None, no encoder: what the encoder records
    described = ev.description(encoder)
    assert described == {
        "type": "RetrievalEvaluator",
        "dataset": str(beir.resolve()),
        "split": "dev",
        "data_sha256": described["data_sha256"],
        "metric": "mrr@10",
        "k": 5,
        "similarity": "neg_kl",  # resolved from the encoder, as the evaluation scores
    }
    assert len(described["data_sha256"]) == 64
    # the same measurement given its similarity explicitly (as the command line does) is the same evaluator
    explicit = retrieval_evaluator(beir, split="dev", metric="mrr@10", k=5, similarity="neg_kl")
    assert explicit.description() == explicit.description(encoder) == described
    assert [e["step"] for e in result.evaluations] == [1, 2]
    assert all(e["evaluator"] == described and 0.0 <= e["mrr@10"] <= 1.0 for e in result.evaluations)
    assert _state_evaluations(ckpt) == result.evaluations  # in the checkpoint too (JSON-ready)
    # another callable: its qualified name (of its class for an instance)
    rec = _MetricA()
    plain = train_heads_cached(make_tiny_encoder(seed=2), ts, tiny_train_config(1), evaluator=rec)
    assert plain.evaluations[0]["evaluator"] == {"callable": f"{__name__}._MetricA"}
    assert set(plain.evaluations[0]) == {"step", "w0", "evaluator"}  # the metrics' keys are unchanged
    assert evaluator_description(rec) != evaluator_description(_MetricB())
    assert evaluator_description(retrieval_evaluator(beir, split="dev", metric="ndcg@10")) != described


def test_the_evaluator_key_is_reserved(ts: TrainingSet) -> None:
    with pytest.raises(ValueError, match="the evaluator returned the key 'evaluator'.*reserved"):
        train_heads_cached(make_tiny_encoder(), ts, tiny_train_config(1), evaluator=lambda e: {"evaluator": 1.0})


# ------------------------------------------------------------------ resume with the same evaluator
def test_a_resume_with_the_same_evaluator_warns_nothing_and_does_not_evaluate_again(
    ts: TrainingSet, beir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    first = train_heads_cached(
        make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=retrieval_evaluator(beir)
    )
    again_ev = retrieval_evaluator(beir)  # another instance, the same settings
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        again = train_heads_cached(
            make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, resume=True, evaluator=again_ev
        )
    assert _warnings(caplog, OTHER) == [] and _warnings(caplog, UNKNOWN) == []
    assert again.losses == [] and again.evaluations == first.evaluations
    assert [e["step"] for e in again.evaluations] == [2]


# ------------------------------------------------------------------ resume with another evaluator
def test_a_finished_checkpoint_resumed_with_another_evaluator_is_evaluated_once_by_it(
    ts: TrainingSet, beir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    old_ev = retrieval_evaluator(beir, split="train", metric="ndcg@10")
    first = train_heads_cached(
        make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=old_ev
    )
    new_ev = retrieval_evaluator(beir, split="dev", metric="mrr@10")
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        again = train_heads_cached(
            make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, resume=True, evaluator=new_ev
        )
    warned = _warnings(caplog, OTHER)
    assert len(warned) == 1
    enc = make_tiny_encoder(seed=2)
    for described in (old_ev.description(enc), new_ev.description(enc)):  # both evaluators named
        assert json.dumps(described, sort_keys=True) in warned[0]
    assert "kept" in warned[0]
    assert again.losses == []
    assert again.evaluations[:1] == first.evaluations  # the earlier entry kept as it was
    assert [e["step"] for e in again.evaluations] == [2, 2]
    new = again.evaluations[1]
    assert new["evaluator"] == new_ev.description(enc) and "mrr@10" in new and "ndcg@10" not in new
    assert _state_evaluations(ckpt) == again.evaluations
    # resumed again with either evaluator: both have evaluated the last step, nothing runs
    for ev in (_same(new_ev, beir), _same(old_ev, beir)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
            third = train_heads_cached(
                make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, resume=True, evaluator=ev
            )
        assert third.evaluations == again.evaluations
        assert len(_warnings(caplog, OTHER)) == 1  # the other one's entry, still kept


def _same(ev: RetrievalEvaluator, beir: Path) -> RetrievalEvaluator:
    """A new retrieval evaluator with ``ev``'s settings."""
    described = evaluator_description(ev)
    return retrieval_evaluator(beir, split=described["split"], metric=described["metric"], k=described["k"])


def test_a_resume_with_another_callable_evaluator_warns_and_evaluates_with_it(
    ts: TrainingSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mid-run (a time-budget stop) and in the full loop: the new evaluator's entries follow the old one's."""
    ckpt = tmp_path / "ckpt"
    first = train_encoder(
        make_tiny_encoder(seed=4),
        ts,
        tiny_train_config(3, time_budget_s=0),
        checkpoint_dir=ckpt,
        evaluator=_MetricA(),
        eval_every=1,
    )
    assert first.stopped == "time_budget" and [e["step"] for e in first.evaluations] == [1]
    b = _MetricB()
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        resumed = train_encoder(
            make_tiny_encoder(seed=4), ts, tiny_train_config(3), checkpoint_dir=ckpt, resume=True, evaluator=b,
            eval_every=1,
        )  # fmt: skip
    warned = _warnings(caplog, OTHER)
    assert len(warned) == 1 and "_MetricA" in warned[0] and "_MetricB" in warned[0]
    assert [e["step"] for e in resumed.evaluations] == [1, 2, 3] and b.calls == 2
    assert [e["evaluator"]["callable"].rsplit(".", 1)[-1] for e in resumed.evaluations] == [
        "_MetricA",
        "_MetricB",
        "_MetricB",
    ]


# ------------------------------------------------------------------ checkpoints of older versions
def test_entries_without_a_description_are_kept_with_one_warning_and_not_counted_as_done(
    ts: TrainingSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    train_heads_cached(
        make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, evaluator=_MetricA(), eval_every=1
    )
    state = json.loads((ckpt / "state.json").read_text())
    for entry in state["evaluations"]:
        entry.pop("evaluator")  # as a version before stop 45 wrote them
    (ckpt / "state.json").write_text(json.dumps(state))
    rec = _MetricA()
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        again = train_heads_cached(
            make_tiny_encoder(seed=2), ts, tiny_train_config(2), checkpoint_dir=ckpt, resume=True, evaluator=rec
        )
    warned = _warnings(caplog, "evaluat")  # one line about the earlier evaluations, nothing more
    assert len(warned) == 1 and UNKNOWN in warned[0] and "2 earlier" in warned[0]
    assert rec.calls == 1  # the finished checkpoint evaluated once, by this evaluator
    assert [e["step"] for e in again.evaluations] == [1, 2, 2]
    assert [("evaluator" in e) for e in again.evaluations] == [False, False, True]
    assert again.evaluations[:2] == state["evaluations"]


# ------------------------------------------------------------------ 2. the hybrid threshold of a dense-only model
def _dense_only_folder(tmp_path: Path, threshold: float | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
    if threshold is not None:
        cal.info["recommended_min_confidence"] = {"threshold": threshold}
    cal.save(folder / CALIBRATION_FILE)
    return folder


def test_the_hybrid_threshold_of_a_dense_only_model_is_the_dense_calibrators(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _dense_only_folder(tmp_path, 0.42)
    # what the hybrid scorer uses for that model: its dense calibrator
    used = ConfidenceScorer(retriever="hybrid").calibrator(SimpleNamespace(name_or_path=str(folder)))
    assert used is not None and used.kind == "dense"
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.calibration"):
        for stemmer in ("english", None):
            assert recommended_min_confidence(str(folder), retriever="hybrid", stemmer=stemmer) == 0.42
    assert used.info["recommended_min_confidence"]["threshold"] == 0.42
    # recommended_min_confidence's own (the scorer above warned once too, from kl_retrievers._confidence)
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "kl_retrievers.calibration"
    ]
    assert len(warned) == 2  # one per call: the value answers the dense calibrator, which the warning names
    assert all(
        "ships no hybrid confidence calibrator" in w and "fall back" in w and CALIBRATION_FILE in w for w in warned
    )
    assert recommended_min_confidence(str(folder)) == 0.42  # dense: unchanged, no fallback involved


def test_a_copy_of_the_default_dense_calibrator_alone_gives_the_dense_constant(tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(bundled_model_path(DEFAULT_MODEL) / CALIBRATION_FILE, folder / CALIBRATION_FILE)
    assert recommended_min_confidence(str(folder), retriever="hybrid") == DEFAULT_MIN_CONFIDENCE


def test_the_hybrid_threshold_still_raises_without_any_calibrator_or_threshold(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="ships no hybrid confidence calibrator") as info:
        recommended_min_confidence(str(empty), retriever="hybrid")
    for file in (HYBRID_CALIBRATION_FILE, _UNSTEMMED_HYBRID_CALIBRATION_FILE, CALIBRATION_FILE):
        assert file in str(info.value)
    no_threshold = _dense_only_folder(tmp_path, None)
    with pytest.raises(ValueError, match="records no recommended min_confidence"):
        recommended_min_confidence(str(no_threshold), retriever="hybrid")


def test_a_subset_of_the_same_split_is_another_evaluator(beir: Path) -> None:
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.training import RetrievalEvaluator, evaluator_description

    full = load_beir(beir, "dev")
    small = full.subset(full.query_ids[:1], full.doc_ids)
    whole, part = RetrievalEvaluator(full, similarity="neg_kl"), RetrievalEvaluator(small, similarity="neg_kl")
    assert evaluator_description(whole) != evaluator_description(part)
    # the same data loaded again is the same evaluator
    assert evaluator_description(whole) == evaluator_description(
        RetrievalEvaluator(load_beir(beir, "dev"), similarity="neg_kl")
    )
