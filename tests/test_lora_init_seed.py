"""A LoRA run is reproducible from its seed: the adapter's random initialisation comes from ``--seed``.

``GaussianEncoder.from_backbone(seed=...)`` seeds the heads from their own stream, and ``apply_freezing`` wrapped
the backbone with peft, whose ``lora_A`` was drawn from torch's unseeded global RNG: two ``kl-retrievers train
--lora-r`` runs with the same ``--seed`` ended with different weights. Fails before the fix (the CLI runs differ;
``apply_freezing`` has no ``seed``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TrainWorld, make_tiny_encoder, make_train_world
from kl_retrievers import GaussianEncoder
from kl_retrievers.training.cli import main
from kl_retrievers.training.trainer import apply_freezing

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return make_train_world(tmp_path_factory.mktemp("lora_seed"))


def _train(
    world: TrainWorld, out: Path, seed: int, steps: int = 1, extra: list[str] | None = None
) -> dict[str, torch.Tensor]:
    argv = ["train", "--data", str(world.beir), "--out", str(out), "--base", str(world.base), "--lora-r", "2"]
    argv += ["--steps", str(steps), "--batch-size", "2", "--dim", "8", "--max-length", "32", "--query-max-length"]
    argv += ["16", "--seed", str(seed), "--no-progress", "--device", "cpu", "--lr", "1e-2", *(extra or [])]
    assert main(argv) == 0
    trained = GaussianEncoder.from_pretrained(out)
    return {k: v.detach().clone() for k, v in trained.state_dict().items()}


def test_cli_lora_runs_with_one_seed_give_the_same_weights(world: TrainWorld, tmp_path: Path) -> None:
    torch.manual_seed(1)  # the global RNG differs between the runs, as in two processes
    a = _train(world, tmp_path / "a", seed=0)
    torch.manual_seed(2)
    b = _train(world, tmp_path / "b", seed=0)
    c = _train(world, tmp_path / "c", seed=1)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    # the adapter is merged into the saved backbone: another seed, another adapter, other weights
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("backbone."))


def _adapter(seed: int | None) -> dict[str, torch.Tensor]:
    enc = make_tiny_encoder()
    apply_freezing(enc, lora_r=2, seed=seed)
    adapter = {n: p.detach().clone() for n, p in enc.named_parameters() if "lora_A" in n}
    assert adapter
    return adapter


def test_apply_freezing_seeds_the_adapter_and_leaves_the_global_rng_alone() -> None:
    first = _adapter(seed=3)
    torch.manual_seed(12345)  # another global RNG state: the same adapter
    assert all(torch.equal(first[k], v) for k, v in _adapter(seed=3).items())
    assert any(not torch.equal(first[k], v) for k, v in _adapter(seed=4).items())
    default = _adapter(seed=0)
    enc = make_tiny_encoder()
    state = torch.random.get_rng_state()
    apply_freezing(enc, lora_r=2)  # the default seed is 0, as from_backbone's
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn from the caller's RNG
    assert all(torch.equal(v, dict(enc.named_parameters())[k]) for k, v in default.items())


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_apply_freezing_refuses_a_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, or None"):
        apply_freezing(make_tiny_encoder(), lora_r=2, seed=seed)  # type: ignore[arg-type]


def test_cli_lora_resume_ends_with_the_uninterrupted_weights(world: TrainWorld, tmp_path: Path) -> None:
    whole = _train(world, tmp_path / "whole", seed=5, steps=3)
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    _train(world, tmp_path / "part", seed=5, steps=3, extra=[*ck, "--time-budget", "0"])  # one step, checkpointed
    torch.manual_seed(7)
    resumed = _train(world, tmp_path / "resumed", seed=5, steps=3, extra=[*ck, "--resume"])
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
