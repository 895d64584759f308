"""Under ``neg_kl`` the mean head's bias cancels (-KL depends on ``mu_q - mu_d`` only): its true gradient is 0, yet
AdamW turned its float-noise gradient into steps of about ``lr`` (and weight decay shrank it), so the saved bias
depended on the thread count. It now stays as it was, on every path (heads on cached features, the full encoder,
LoRA), while ``dot`` still trains it; a checkpoint saved before (optimiser state for the bias included) resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN_ROWS, make_tiny_encoder, rows_train_config
from kl_retrievers.training import TrainingSet, apply_freezing, train_encoder, train_heads_cached
from kl_retrievers.training import trainer as trainer_module


def _bias(enc: object) -> torch.Tensor:
    return enc.mean_head.bias.detach().clone()  # type: ignore[attr-defined]


@pytest.mark.parametrize("similarity", ["neg_kl", "dot"])
def test_heads_cached_keeps_the_mean_bias_under_neg_kl_only(similarity: str) -> None:
    enc = make_tiny_encoder(pooling="mean")
    before = _bias(enc)
    train_heads_cached(enc, TrainingSet.from_rows(TINY_TRAIN_ROWS), rows_train_config(steps=3, similarity=similarity))
    if similarity == "neg_kl":
        assert torch.equal(_bias(enc), before)
    else:
        assert not torch.equal(_bias(enc), before)  # the bias matters to a dot product: it trains
    assert enc.mean_head.bias.requires_grad  # the caller's freezing is as it was


@pytest.mark.parametrize("how", [{"freeze_backbone": True}, {"lora_r": 2}, {}])
def test_encoder_training_keeps_the_mean_bias_under_neg_kl(how: dict[str, object]) -> None:
    enc = make_tiny_encoder(pooling="mean")
    apply_freezing(enc, seed=0, **how)  # type: ignore[arg-type]
    before = _bias(enc)
    weight = enc.mean_head.weight.detach().clone()
    train_encoder(enc, TrainingSet.from_rows(TINY_TRAIN_ROWS), rows_train_config(steps=2))
    assert torch.equal(_bias(enc), before)
    assert not torch.equal(enc.mean_head.weight, weight)  # the rest of the head trains


def test_a_checkpoint_with_optimiser_state_for_the_bias_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = TrainingSet.from_rows(TINY_TRAIN_ROWS)
    ck = tmp_path / "ck"
    enc = make_tiny_encoder(pooling="mean")
    with monkeypatch.context() as m:  # as an earlier version trained it: the bias stepped by AdamW
        m.setattr(trainer_module, "_score_invariant", lambda named, cfg: [], raising=False)
        train_heads_cached(enc, ts, rows_train_config(steps=2, checkpoint_every=2), checkpoint_dir=ck)
    saved = _bias(enc)
    result = train_heads_cached(enc, ts, rows_train_config(steps=4, checkpoint_every=2), checkpoint_dir=ck, resume=True)
    assert result.resumed_from == 2 and result.steps_done == 4
    assert torch.equal(_bias(enc), saved)
