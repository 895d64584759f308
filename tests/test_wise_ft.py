"""``benchmarks/wise_ft.py``: weight-space interpolation between MiniLM and a LoRA job (real backbone)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TEXTS = [
    "Protein folding in yeast is assisted by chaperones.",
    "The capital of France is Paris.",
    "Aspirin lowers the risk of a second heart attack.",
]


def test_interpolation_runs_from_minilm_to_the_trained_job() -> None:
    from gpu_lora import BASE, LORA_R, _job_encoder
    from wise_ft import interpolate

    from kl_retrievers import GaussianEncoder
    from kl_retrievers.training.trainer import apply_freezing

    job = {"name": "job", "beta": 1.0, "seed": 0}

    def untrained() -> GaussianEncoder:
        return GaussianEncoder.from_backbone(
            BASE, pooling="mean", normalize_pooled=True, var_token=False, beta=1.0,
            max_length=256, query_max_length=64, seed=0,
        )  # fmt: skip

    # a stand-in for a trained job: every trainable tensor (LoRA factors, heads) moved by seeded noise
    start = untrained()
    apply_freezing(start, lora_r=LORA_R)
    gen = torch.Generator().manual_seed(0)
    trainable = {n: p.detach().clone() for n, p in start.named_parameters() if p.requires_grad}
    adapters = {f"job/{n}": p + 0.05 * torch.randn(p.shape, generator=gen) for n, p in trainable.items()}
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
