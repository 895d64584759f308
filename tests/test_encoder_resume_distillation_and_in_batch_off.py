"""An interrupted ``train_encoder`` run resumes to the weights of an uninterrupted one, byte for byte, with a
distillation loss (``margin_mse``, ``listwise``, ``lambdarank``: each query against its own candidates, teacher
scores read) and with the contrastive loss without in-batch negatives (``in_batch=False``).

The encoder path's resume tests covered the contrastive loss with in-batch negatives only. Each run here stops after
its first step (``time_budget_s=0``), resumes from a fresh encoder of another seed (everything must come from the
checkpoint: weights, AdamW's state, the schedule, the data order and dropout's draws) and ends with exactly the
weights of the run that was never interrupted. An earlier version's checkpoint of a distillation loss that
recorded ``in_batch: false`` (accepted and ignored then) resumes the same way, without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_tiny_encoder, tiny_train_config
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.training import TrainingSet, train_encoder

#: Rows with two hard negatives and teacher scores each (every loss trains on them), one query with two positives.
ROWS: list[dict[str, Any]] = [
    {"query": "cat", "positives": ["the cat sat on the mat", "a cat and a dog"],
     "negatives": ["a dog in the sun", "tea and bread"],
     "teacher_scores": {"positives": [3.0, 2.0], "negatives": [1.0, 0.0]}},
    {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock", "the moon"],
     "teacher_scores": {"positives": [2.5], "negatives": [0.5, 0.2]}},
    {"query": "moon", "positives": ["the moon and the star"], "negatives": ["a train at sea", "a bee"],
     "teacher_scores": {"positives": [2.0], "negatives": [1.5, -1.0]}},
]  # fmt: skip

#: The recipe of every run: 4 steps of 2 micro-batches, 2 negatives.
RECIPE: dict[str, Any] = {"steps": 4, "grad_accum": 2, "negatives": 2, "lr": 1e-3}


def _assert_same_weights(a: GaussianEncoder, b: GaussianEncoder) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


def _interrupted_and_resumed(tmp_path: Path, recipe: dict[str, Any], *, edit: Any = None) -> GaussianEncoder:
    """Train ``recipe`` one step into a checkpoint, apply ``edit`` to its ``state.json``, resume to the end."""
    ts = TrainingSet.from_rows(ROWS)
    ckpt = tmp_path / "ck"
    first = train_encoder(make_tiny_encoder(), ts, tiny_train_config(**recipe, time_budget_s=0.0), checkpoint_dir=ckpt)
    assert (first.stopped, first.steps_done) == ("time_budget", 1)
    if edit is not None:
        state = json.loads((ckpt / "state.json").read_text())
        edit(state)
        (ckpt / "state.json").write_text(json.dumps(state))
    resumed = make_tiny_encoder(seed=5)  # another start: the trained weights must come from the checkpoint
    resumed.load_state_dict(make_tiny_encoder().state_dict())  # the frozen / untrained start as the whole run's
    result = train_encoder(resumed, ts, tiny_train_config(**recipe), checkpoint_dir=ckpt, resume=True)
    assert (result.resumed_from, result.steps_done, result.stopped) == (1, recipe["steps"], "finished")
    assert not torch.equal(resumed.mean_head.weight, make_tiny_encoder().mean_head.weight)  # it trained
    return resumed


def _uninterrupted(recipe: dict[str, Any]) -> GaussianEncoder:
    whole = make_tiny_encoder()
    train_encoder(whole, TrainingSet.from_rows(ROWS), tiny_train_config(**recipe))
    return whole


@pytest.mark.parametrize(
    "recipe",
    [{"loss": "margin_mse"}, {"loss": "listwise"}, {"loss": "lambdarank"}, {"loss": "contrastive", "in_batch": False}],
    ids=["margin_mse", "listwise", "lambdarank", "contrastive-in-batch-off"],
)
def test_an_interrupted_encoder_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, recipe: dict[str, Any]
) -> None:
    recipe = RECIPE | recipe
    _assert_same_weights(_uninterrupted(recipe), _interrupted_and_resumed(tmp_path, recipe))


def test_an_earlier_distillation_checkpoint_with_in_batch_off_resumes_without_it(tmp_path: Path) -> None:
    def as_an_earlier_version_wrote_it(state: dict[str, Any]) -> None:
        assert state["recipe"]["config"]["in_batch"] is True
        state["recipe"]["config"]["in_batch"] = False  # accepted (and ignored) by earlier versions

    recipe = RECIPE | {"loss": "margin_mse"}
    resumed = _interrupted_and_resumed(tmp_path, recipe, edit=as_an_earlier_version_wrote_it)
    _assert_same_weights(_uninterrupted(recipe), resumed)
