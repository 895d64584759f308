"""``benchmarks/wise_ft.py``: weight-space interpolation between MiniLM and a LoRA job (real backbone)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kl_retrievers import GaussianEncoder

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TEXTS = [
    "Protein folding in yeast is assisted by chaperones.",
    "The capital of France is Paris.",
    "Aspirin lowers the risk of a second heart attack.",
]


def untrained() -> GaussianEncoder:
    """The untrained design of the LoRA jobs (= MiniLM cosine, unit variances)."""
    from gpu_lora import BASE

    return GaussianEncoder.from_backbone(
        BASE, pooling="mean", normalize_pooled=True, var_token=False, beta=1.0,
        max_length=256, query_max_length=64, seed=0,
    )  # fmt: skip


def stand_in_jobs(seeds: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stand-ins for trained jobs: every trainable tensor (LoRA factors, heads) moved by seeded noise.

    Returns the untrained trainable tensors and the ``JOB/tensor`` adapters of each job in ``seeds``.
    """
    from gpu_lora import LORA_R

    from kl_retrievers.training.trainer import apply_freezing

    start = untrained()
    apply_freezing(start, lora_r=LORA_R)
    trainable = {n: p.detach().clone() for n, p in start.named_parameters() if p.requires_grad}
    adapters: dict[str, torch.Tensor] = {}
    for job, seed in seeds.items():
        gen = torch.Generator().manual_seed(seed)
        adapters |= {f"{job}/{n}": p + 0.05 * torch.randn(p.shape, generator=gen) for n, p in trainable.items()}
    return trainable, adapters


def test_interpolation_runs_from_minilm_to_the_trained_job() -> None:
    from gpu_lora import _job_encoder
    from wise_ft import interpolate

    job = {"name": "job", "beta": 1.0, "seed": 0}
    trainable, adapters = stand_in_jobs({"job": 0})
    assert any("lora_B" in n for n in trainable) and any("lora_B" not in n and "lora_A" not in n for n in trainable)

    trained = _job_encoder(job, adapters)
    ends = {a: interpolate(job, adapters, a) for a in (0.0, 0.5, 1.0)}

    def docs(enc: GaussianEncoder) -> tuple[np.ndarray, np.ndarray]:
        g = enc.eval().encode_documents(TEXTS)
        return g.mean, g.var

    m0, v0 = docs(ends[0.0])
    ref_mean, ref_var = docs(untrained())
    np.testing.assert_allclose(m0, ref_mean, atol=1e-5)  # alpha 0 is the untrained design (= MiniLM cosine)
    np.testing.assert_allclose(v0, ref_var, atol=1e-6)
    np.testing.assert_allclose(v0, 1.0, atol=1e-5)
    m1, v1 = docs(ends[1.0])
    tm, tv = docs(trained)
    np.testing.assert_allclose(m1, tm, atol=1e-6)  # alpha 1 is the trained job
    np.testing.assert_allclose(v1, tv, atol=1e-6)
    mh, _ = docs(ends[0.5])
    assert not np.allclose(mh, m0, atol=1e-4) and not np.allclose(mh, m1, atol=1e-4)

    # alpha 0.5: half the LoRA update B @ A, and every head parameter halfway from its initial value
    half = dict(ends[0.5].named_parameters())
    for n, p in trained.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_B" in n:
            torch.testing.assert_close(half[n], 0.5 * p)
        elif "lora_A" in n:
            torch.testing.assert_close(half[n], p)
        else:
            torch.testing.assert_close(half[n], trainable[n] + 0.5 * (p - trainable[n]))

    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        interpolate(job, adapters, 1.5)


def test_soup_is_the_mean_of_its_members_and_saves_as_a_delta(tmp_path: Path) -> None:
    from gpu_lora import LORA_R, _job_encoder
    from wise_ft import soup

    from kl_retrievers.training import merge_lora

    _, adapters = stand_in_jobs({"job0": 1, "job1": 2})  # two jobs, each moved by its own seeded noise
    members = [_job_encoder({"name": f"job{i}", "beta": 1.0, "seed": 0}, adapters) for i in range(2)]
    mixed = soup(members)
    rank = {p.shape[0] for n, p in mixed.named_parameters() if "lora_A" in n}
    assert rank == {2 * LORA_R}  # the factors are stacked, not averaged
    with pytest.raises(ValueError, match="the same trainable tensors"):
        soup([members[0], mixed])  # rank 16 and rank 32 do not mix

    mixed.save_pretrained(tmp_path / "soup", include_backbone=False)
    loaded = GaussianEncoder.from_pretrained(tmp_path / "soup")
    want = mixed.eval().encode_documents(TEXTS)
    got = loaded.eval().encode_documents(TEXTS)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-5)
    np.testing.assert_allclose(got.var, want.var, atol=1e-6)

    # every merged weight (backbone and heads) is the mean of the members' merged weights
    for enc in (*members, mixed):
        merge_lora(enc)
    states = [dict(e.state_dict()) for e in members]
    merged = dict(mixed.state_dict())
    assert set(merged) == set(states[0])
    moved = 0
    for key, value in merged.items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2, atol=1e-6, rtol=1e-5)
        moved += not torch.equal(states[0][key], states[1][key])
    assert moved >= 12  # the LoRA-adapted matrices and the heads differ between the members

    with pytest.raises(ValueError, match="soup needs at least one encoder"):
        soup([])
