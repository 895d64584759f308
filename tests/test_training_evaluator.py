"""Evaluation during training: ``evaluator=`` / ``eval_every=`` of the trainers and ``kl-retrievers train --eval-data``.

The evaluator runs after every ``eval_every`` optimiser steps and once at the end, in evaluation mode under
``torch.no_grad`` (modes restored after), sees the current weights, is recorded in ``TrainResult.evaluations``
and in checkpoints (restored on resume); :func:`retrieval_evaluator` scores as ``evaluate_model`` does; the
command line validates its flags before loading anything and records the evaluations in the saved model.
Everything runs on a tiny random BERT and tiny BEIR folders.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import (
    TrainWorld,
    heads_cached_train_argv,
    make_tiny_encoder,
    tiny_train_beir,
    tiny_train_config,
    train_world_with_dev,
)
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import ShallowRunWarning, evaluate_model
from kl_retrievers.training import (
    TrainingSet,
    from_beir,
    retrieval_evaluator,
    train_encoder,
    train_heads_cached,
)
from kl_retrievers.training.trainer import _run_evaluation


def _beir_with_dev(root: Path) -> Path:
    """The tiny training BEIR folder, with its train qrels also as a ``dev`` split."""
    folder = tiny_train_beir(root)
    shutil.copy(folder / "qrels" / "train.tsv", folder / "qrels" / "dev.tsv")
    return folder


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _beir_with_dev(tmp_path_factory.mktemp("eval_beir") / "beir")


@pytest.fixture(scope="module")
def ts(beir: Path) -> TrainingSet:
    return from_beir(beir, split="train")


class _Recorder:
    """An evaluator that records each call: the step's head weights, the modes and whether grad was on."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.training: list[bool] = []
        self.grad: list[bool] = []

    def __call__(self, encoder: GaussianEncoder) -> Mapping[str, float]:
        self.weights.append(encoder.mean_head.weight.detach().clone())
        self.training.append(any(m.training for m in encoder.modules()))
        self.grad.append(torch.is_grad_enabled())
        return {"calls": float(len(self.weights)), "w0": float(encoder.mean_head.weight[0, 0])}


# ------------------------------------------------------------------ when it runs, what it sees, what is recorded
@pytest.mark.parametrize(("steps", "every", "expected"), [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (3, 0, [3])])
def test_evaluator_runs_every_n_steps_and_once_at_the_end(
    ts: TrainingSet, steps: int, every: int, expected: list[int]
) -> None:
    enc = make_tiny_encoder(seed=1)
    rec = _Recorder()
    result = train_heads_cached(enc, ts, tiny_train_config(steps), evaluator=rec, eval_every=every)
    assert [e["step"] for e in result.evaluations] == expected
    assert [e["calls"] for e in result.evaluations] == [float(i + 1) for i in range(len(expected))]
    # evaluation mode and no autograd during each call
    assert rec.training == [False] * len(expected) and rec.grad == [False] * len(expected)
    # the last call saw the final (trained) head weights; the heads changed between calls
    assert torch.equal(rec.weights[-1], enc.mean_head.weight.detach())
    if len(expected) > 1:
        assert not torch.equal(rec.weights[0], rec.weights[-1])


def test_no_evaluator_leaves_evaluations_empty(ts: TrainingSet) -> None:
    result = train_heads_cached(make_tiny_encoder(seed=1), ts, tiny_train_config(2))
    assert result.evaluations == []


def test_evaluation_restores_each_module_mode() -> None:
    enc = make_tiny_encoder()
    enc.train()
    enc.var_head.eval()  # a mixed state must come back as it was
    before = [m.training for m in enc.modules()]
    seen: list[bool] = []

    def evaluator(encoder: GaussianEncoder) -> dict[str, float]:
        seen.append(any(m.training for m in encoder.modules()))
        return {"x": 1.0}

    record = _run_evaluation(enc, evaluator, 7)
    assert record == {"step": 7, "x": 1.0}
    assert seen == [False]
    assert [m.training for m in enc.modules()] == before


def test_full_encoder_training_is_unchanged_by_evaluations(ts: TrainingSet) -> None:
    """Dropout is on while the whole encoder trains: a mode left in eval, or an RNG the evaluation moved,
    would change the losses and the weights."""
    runs = []
    for evaluator in (None, _Recorder()):
        enc = make_tiny_encoder(seed=2)
        result = train_encoder(enc, ts, tiny_train_config(3, lr=1e-3), evaluator=evaluator, eval_every=1)
        runs.append((result, enc.mean_head.weight.detach().clone()))
    (plain, w_plain), (evaluated, w_evaluated) = runs
    assert [e["step"] for e in evaluated.evaluations] == [1, 2, 3]
    assert evaluated.losses == plain.losses
    assert torch.equal(w_plain, w_evaluated)


def test_bad_evaluator_results_and_eval_every_are_refused(ts: TrainingSet) -> None:
    with pytest.raises(ValueError, match="eval_every must be an integer >= 0; got -1"):
        train_heads_cached(make_tiny_encoder(), ts, tiny_train_config(2), evaluator=_Recorder(), eval_every=-1)
    with pytest.raises(TypeError, match="evaluator must be a callable"):
        train_heads_cached(make_tiny_encoder(), ts, tiny_train_config(2), evaluator=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return a mapping"):
        train_heads_cached(make_tiny_encoder(), ts, tiny_train_config(2), evaluator=lambda e: 0.5)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="reserved for the step number"):
        train_heads_cached(make_tiny_encoder(), ts, tiny_train_config(2), evaluator=lambda e: {"step": 1.0})


# ------------------------------------------------------------------ checkpoints and resume
def test_resume_restores_the_evaluations(ts: TrainingSet, tmp_path: Path) -> None:
    full = train_heads_cached(make_tiny_encoder(seed=3), ts, tiny_train_config(4), evaluator=_Recorder(), eval_every=1)
    ck = tmp_path / "ck"
    first = train_heads_cached(
        make_tiny_encoder(seed=3),
        ts,
        tiny_train_config(4, time_budget_s=0),
        checkpoint_dir=ck,
        evaluator=_Recorder(),
        eval_every=1,
    )
    assert first.stopped == "time_budget" and [e["step"] for e in first.evaluations] == [1]
    saved = json.loads((ck / "state.json").read_text())
    assert saved["evaluations"] == first.evaluations
    resumed = train_heads_cached(
        make_tiny_encoder(seed=3),
        ts,
        tiny_train_config(4),
        checkpoint_dir=ck,
        resume=True,
        evaluator=_Recorder(),
        eval_every=1,
    )
    assert resumed.resumed_from == 1
    assert [e["step"] for e in resumed.evaluations] == [1, 2, 3, 4]
    # the same weights at each step as the uninterrupted run ("calls" counts per invocation, so it differs)
    assert [e["w0"] for e in resumed.evaluations] == pytest.approx([e["w0"] for e in full.evaluations], rel=1e-6)
    assert json.loads((ck / "state.json").read_text())["evaluations"] == resumed.evaluations


def test_resume_from_a_checkpoint_without_evaluations(ts: TrainingSet, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    train_heads_cached(make_tiny_encoder(seed=3), ts, tiny_train_config(3, time_budget_s=0), checkpoint_dir=ck)
    state = json.loads((ck / "state.json").read_text())
    state.pop("evaluations")  # as an older version wrote it
    (ck / "state.json").write_text(json.dumps(state))
    resumed = train_heads_cached(
        make_tiny_encoder(seed=3),
        ts,
        tiny_train_config(3),
        checkpoint_dir=ck,
        resume=True,
        evaluator=_Recorder(),
        eval_every=1,
    )
    assert [e["step"] for e in resumed.evaluations] == [2, 3]


def test_a_resume_with_no_step_left_still_evaluates_once(ts: TrainingSet, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    train_heads_cached(make_tiny_encoder(seed=3), ts, tiny_train_config(2), checkpoint_dir=ck, evaluator=_Recorder())
    again = train_heads_cached(
        make_tiny_encoder(seed=3), ts, tiny_train_config(2), checkpoint_dir=ck, resume=True, evaluator=_Recorder()
    )
    assert again.losses == [] and [e["step"] for e in again.evaluations] == [2]  # recorded, not repeated


class _Boom:
    """An evaluator that fails (e.g. out of memory while encoding the evaluation corpus)."""

    def __call__(self, encoder: GaussianEncoder) -> Mapping[str, float]:
        raise RuntimeError("evaluator failed")


def test_a_failing_final_evaluation_leaves_the_final_checkpoint(ts: TrainingSet, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="evaluator failed"):
        train_heads_cached(make_tiny_encoder(seed=3), ts, tiny_train_config(3), checkpoint_dir=ck, evaluator=_Boom())
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 3 and state["evaluations"] == []  # every trained step kept; a resume can evaluate it


def test_a_time_budget_stop_saves_before_it_evaluates(ts: TrainingSet, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="evaluator failed"):
        train_heads_cached(
            make_tiny_encoder(seed=3), ts, tiny_train_config(4, time_budget_s=0), checkpoint_dir=ck, evaluator=_Boom()
        )
    assert json.loads((ck / "state.json").read_text())["step"] == 1


def test_a_time_budget_stop_evaluates_the_returned_model_once(ts: TrainingSet, tmp_path: Path) -> None:
    """eval_every 0: only the stop's evaluation; a regular one that used the budget is not followed by another."""
    ck = tmp_path / "ck"
    stop = train_heads_cached(
        make_tiny_encoder(seed=3), ts, tiny_train_config(4, time_budget_s=0), checkpoint_dir=ck, evaluator=_Recorder()
    )
    assert stop.stopped == "time_budget" and [e["step"] for e in stop.evaluations] == [1]
    assert json.loads((ck / "state.json").read_text())["evaluations"] == stop.evaluations
    every = train_heads_cached(
        make_tiny_encoder(seed=3), ts, tiny_train_config(6, time_budget_s=0), evaluator=_Recorder(), eval_every=1
    )
    assert every.stopped == "time_budget" and [e["step"] for e in every.evaluations] == [1]


def test_a_resume_with_no_step_left_evaluates_a_model_never_evaluated(ts: TrainingSet, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    train_heads_cached(make_tiny_encoder(seed=3), ts, tiny_train_config(2), checkpoint_dir=ck)  # no evaluator
    again = train_heads_cached(
        make_tiny_encoder(seed=3), ts, tiny_train_config(2), checkpoint_dir=ck, resume=True, evaluator=_Recorder()
    )
    assert again.losses == [] and [e["step"] for e in again.evaluations] == [2]
    assert json.loads((ck / "state.json").read_text())["evaluations"] == again.evaluations


# ------------------------------------------------------------------ the ready-made evaluator
def test_retrieval_evaluator_matches_evaluate_model(beir: Path) -> None:
    enc = make_tiny_encoder(seed=4)
    dataset = load_beir(beir, "dev")
    expected = evaluate_model(enc, dataset, show_progress=False, use_cache=False).aggregate
    assert retrieval_evaluator(beir)(enc) == {"ndcg@10": pytest.approx(expected["ndcg@10"], abs=1e-12)}
    with pytest.warns(ShallowRunWarning, match="k=5 is below the cutoff of mrr@10"):  # shallow on purpose
        shallow = retrieval_evaluator(dataset, metric="mrr@10", k=5)
    got = shallow(enc)
    with pytest.warns(ShallowRunWarning, match="k=5 is below the cutoff"):
        short = evaluate_model(enc, dataset, k=5, show_progress=False, use_cache=False).aggregate
    assert got == {"mrr@10": pytest.approx(short["mrr@10"], abs=1e-12)}
    assert 0.0 < expected["ndcg@10"] <= 1.0


def test_retrieval_evaluator_refuses_bad_options(beir: Path) -> None:
    with pytest.raises(ValueError, match=r"metric must be one of .*'ndcg@10'.*; got 'ndcg@5'"):
        retrieval_evaluator(beir, metric="ndcg@5")
    with pytest.raises(ValueError, match="similarity must be one of"):
        retrieval_evaluator(beir, similarity="l2")
    with pytest.raises(ValueError, match="available splits"):
        retrieval_evaluator(beir, split="nope")


def test_training_with_the_retrieval_evaluator_records_ndcg(ts: TrainingSet, beir: Path) -> None:
    enc = make_tiny_encoder(seed=5)
    result = train_heads_cached(enc, ts, tiny_train_config(4), evaluator=retrieval_evaluator(beir), eval_every=2)
    assert [e["step"] for e in result.evaluations] == [2, 4]
    final = evaluate_model(enc, load_beir(beir, "dev"), show_progress=False, use_cache=False).aggregate["ndcg@10"]
    assert result.evaluations[-1]["ndcg@10"] == pytest.approx(final, abs=1e-12)


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return train_world_with_dev(tmp_path_factory.mktemp("train_eval_cli"))


_argv = heads_cached_train_argv


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("loaded before checking the evaluation flags")


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    monkeypatch.setattr(GaussianEncoder, "from_pretrained", _boom)
    monkeypatch.setattr("kl_retrievers.training.data.load_training_data", _boom)


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--eval-data", "{root}/missing"], "--eval-data {root}/missing (--eval-split dev): {root}/missing: dataset"),
        (["--eval-data", "{beir}", "--eval-split", "test"], "qrels for split 'test' not found; available splits"),
        (["--eval-every", "2"], "--eval-every configures the evaluation of --eval-data, which is not given"),
        (["--eval-metric", "mrr@10", "--eval-split", "x"], "--eval-split, --eval-metric configure the evaluation"),
        (["--eval-split", "dev"], "--eval-split configures the evaluation of --eval-data"),  # even at its default
        (["--eval-every", "0"], "--eval-every configures the evaluation of --eval-data"),
        (["--eval-data", "{out}", "--overwrite"], "--out {out}: it is the --eval-data folder"),
    ],
)
def test_bad_evaluation_flags_exit_2_before_loading(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    out = tmp_path / "m"
    names = {"root": str(tmp_path), "beir": str(world.beir), "out": str(out)}
    if "{out}" in extra:
        _beir_with_dev(out)
    assert main(_argv(world, out, *[x.format(**names) for x in extra])) == 2
    err = capsys.readouterr().err
    assert expected.format(**names) in err, err


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--eval-metric", "ndcg@5"], "--eval-metric: unknown metric 'ndcg@5'; choose from"),
        (["--eval-every", "-1"], "--eval-every: must be >= 0; got -1"),
    ],
)
def test_bad_evaluation_values_exit_2_at_parse_time(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_argv(world, tmp_path / "m", "--eval-data", str(world.beir), *extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err, err


def test_cli_records_the_evaluations_and_prints_a_summary(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = _argv(world, out, "--eval-data", str(world.beir), "--eval-every", "2", "--checkpoint-every", "2")
    assert main(argv) == 0
    training = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]
    evaluations = training["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 3]
    assert all(0.0 <= e["ndcg@10"] <= 1.0 for e in evaluations)
    assert training["evaluation"] == {
        "data": str(world.beir.resolve()),
        "split": "dev",
        "metric": "ndcg@10",
        "every": 2,
        "depth": 100,
        "evaluator": evaluations[-1]["evaluator"],  # the run's own evaluator (stop 45), as its entries record it
    }
    assert training["evaluation"]["evaluator"]["metric"] == "ndcg@10"
    # the last evaluation is of the saved model
    saved = GaussianEncoder.from_pretrained(out)
    score = evaluate_model(saved, load_beir(world.beir, "dev"), show_progress=False, use_cache=False)
    assert evaluations[-1]["ndcg@10"] == pytest.approx(score.aggregate["ndcg@10"], abs=1e-6)
    card = (out / "README.md").read_text()
    assert "## Evaluation during training" in card and f"| 3 | {evaluations[-1]['ndcg@10']:.4f} |" in card
    printed = capsys.readouterr().out  # the command's summary lines are on stdout
    line = next(x for x in printed.splitlines() if x.startswith("evaluation on "))
    assert f"ndcg@10 {evaluations[-1]['ndcg@10']:.4f} at the end (step 3)" in line and "(2 evaluations)" in line
    # the checkpoint records them too
    assert [e["step"] for e in json.loads((tmp_path / "m.checkpoint" / "state.json").read_text())["evaluations"]] == [
        2,
        3,
    ]
    assert np.isfinite([e["ndcg@10"] for e in evaluations]).all()
