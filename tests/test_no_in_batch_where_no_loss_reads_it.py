"""``--no-in-batch`` (``in_batch=False``) where no loss reads it: refused, and old checkpoints with it resume.

Only the contrastive loss takes in-batch negatives, and not on the fast path's softmax over the pool. A distillation
loss (``margin_mse``, ``listwise``, ``lambdarank``) scores each query against its own candidates whatever
``in_batch`` says: ``--no-in-batch`` was accepted and ignored there; it is refused, as on the pool softmax.

Earlier versions accepted (and recorded) ``in_batch=False`` where it is not read, e.g. a fast-path checkpoint written
with ``--heads-only-cached --no-in-batch`` (before 8a50347). Such a checkpoint could not be resumed: with the flag
the run is refused, without it the recipe differed (``--no-in-batch (config.in_batch): checkpoint False, now
True``). ``in_batch`` is now compared only where a side reads it, so it resumes without the flag, to the weights of
an uninterrupted run. The checkpoints of earlier versions are made here by writing ``in_batch: false`` into the
recipe of a checkpoint's ``state.json``: that entry is all such a checkpoint differs in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import TrainWorld, cli_error_line, heads_cached_train_argv, make_tiny_encoder, rows_train_argv
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, TrainingSet, train_encoder, train_heads_cached

#: Rows with hard negatives and teacher scores (every loss trains on them).
ROWS: list[dict[str, Any]] = [
    {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun", "tea and bread"],
     "teacher_scores": {"positives": [3.0], "negatives": [1.0, 0.0]}},
    {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock", "the moon"],
     "teacher_scores": {"positives": [2.5], "negatives": [0.5, 0.2]}},
    {"query": "moon", "positives": ["the moon and the star"], "negatives": ["a train at sea", "a bee"],
     "teacher_scores": {"positives": [2.0], "negatives": [1.5, -1.0]}},
]  # fmt: skip


def _config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"steps": 4, "batch_size": 2, "negatives": 2, "lr": 1e-2, "show_progress": False}
    return TrainConfig(**(base | {"device": "cpu"} | kw))


def _as_an_earlier_version_wrote_it(ckpt: Path) -> None:
    """Record ``in_batch: false`` in the checkpoint's recipe, as a run with ``--no-in-batch`` before 8a50347 did."""
    state_file = ckpt / "state.json"
    state = json.loads(state_file.read_text())
    assert state["recipe"]["config"]["in_batch"] is True
    state["recipe"]["config"]["in_batch"] = False
    state_file.write_text(json.dumps(state))


@pytest.mark.parametrize("loss", ["margin_mse", "listwise", "lambdarank"])
def test_no_in_batch_with_a_distillation_loss_is_refused(loss: str) -> None:
    with pytest.raises(ValueError, match=rf"in_batch=False \(--no-in-batch\) would be ignored.*'contrastive'.*{loss}"):
        _config(loss=loss, in_batch=False)
    _config(loss="contrastive", in_batch=False)  # the loss that takes in-batch negatives


def test_the_command_refuses_no_in_batch_with_a_distillation_loss(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = rows_train_argv(train_world, tmp_path, ROWS)  # margin_mse, 2 negatives
    assert main([*argv, "--no-in-batch"]) == 2
    err = cli_error_line(capsys, "train")
    assert "--no-in-batch" in err and "'contrastive'" in err and "'margin_mse'" in err, err
    assert not (tmp_path / "m").exists()
    assert main(argv) == 0


@pytest.mark.parametrize(
    "recipe",
    [{"loss": "contrastive"}, {"loss": "contrastive", "corpus_sample": 3}, {"loss": "lambdarank"}],
    ids=["pool-softmax", "sampled-pool-softmax", "lambdarank"],
)
def test_a_fast_path_checkpoint_with_in_batch_off_where_unread_resumes_to_the_same_weights(
    tmp_path: Path, recipe: dict[str, Any]
) -> None:
    ts = TrainingSet.from_rows(ROWS)
    if recipe["loss"] == "contrastive":
        recipe = recipe | {"negatives": 0}
    whole = make_tiny_encoder(pooling="mean")
    train_heads_cached(whole, ts, _config(**recipe), cache_dir=tmp_path / "c")
    ck: dict[str, Any] = {"cache_dir": tmp_path / "c", "checkpoint_dir": tmp_path / "k"}
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, _config(**recipe, time_budget_s=0.0), **ck)
    _as_an_earlier_version_wrote_it(tmp_path / "k")
    resumed = make_tiny_encoder(pooling="mean")
    result = train_heads_cached(resumed, ts, _config(**recipe), **ck, resume=True)
    assert result.resumed_from == 1 and result.steps_done == 4
    for name in ("mean_head", "var_head"):
        for p, q in zip(getattr(whole, name).parameters(), getattr(resumed, name).parameters(), strict=True):
            assert torch.equal(p, q), name


def test_a_command_line_checkpoint_with_no_in_batch_on_the_pool_softmax_resumes(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(heads_cached_train_argv(train_world, tmp_path / "whole")) == 0
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--time-budget", "0")) == 0
    _as_an_earlier_version_wrote_it(Path(f"{out}.checkpoint"))
    assert main(heads_cached_train_argv(train_world, out, "--resume", "--no-in-batch")) == 2  # the flag is refused...
    assert "a checkpoint written with it resumes without it" in cli_error_line(capsys, "train")
    assert main(heads_cached_train_argv(train_world, out, "--resume")) == 0  # ...and the checkpoint resumes without it
    assert "after 3 steps (finished)" in capsys.readouterr().out
    whole, resumed = load_file(tmp_path / "whole" / "delta.safetensors"), load_file(out / "delta.safetensors")
    assert whole.keys() == resumed.keys()
    for key, tensor in whole.items():
        assert torch.equal(tensor, resumed[key]), key


def test_in_batch_is_still_compared_where_it_is_read(tmp_path: Path) -> None:
    ts = TrainingSet.from_rows(ROWS)
    fast = {"full_corpus": False, "in_batch": False}  # each query's own candidates: in_batch changes the loss
    ck: dict[str, Any] = {"cache_dir": tmp_path / "c", "checkpoint_dir": tmp_path / "k"}
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, _config(**fast, time_budget_s=0.0), **ck)
    with pytest.raises(ValueError, match=r"--no-in-batch \(config.in_batch\): checkpoint False, now True"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, _config(full_corpus=False), **ck, resume=True)
    train_encoder(make_tiny_encoder(), ts, _config(in_batch=False, time_budget_s=0.0), checkpoint_dir=tmp_path / "e")
    with pytest.raises(ValueError, match=r"--no-in-batch \(config.in_batch\): checkpoint False, now True"):
        train_encoder(make_tiny_encoder(), ts, _config(), checkpoint_dir=tmp_path / "e", resume=True)
