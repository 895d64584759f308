"""The public score functions rank the same inside a bfloat16 autocast region as outside it."""

from __future__ import annotations

import pytest
import torch

from kl_retrievers.training.losses import Similarity, score_candidates, score_matrix


def _gaussians(seed: int, n: int, k: int = 384) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, k, generator=g)
    var = 0.5 + torch.rand(n, k, generator=g)
    return mean, var


@pytest.mark.parametrize("similarity", ["neg_kl", "dot", "cosine"])
def test_score_matrix_under_bf16_autocast_equals_float32(similarity: Similarity) -> None:
    qm, qv = _gaussians(0, 8)
    dm, dv = _gaussians(1, 200)
    expected = score_matrix(qm, qv, dm, dv, similarity)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = score_matrix(qm, qv, dm, dv, similarity)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    assert torch.equal(got.argsort(dim=1, descending=True)[:, :10], expected.argsort(dim=1, descending=True)[:, :10])


@pytest.mark.parametrize("similarity", ["neg_kl", "dot"])
def test_score_candidates_under_bf16_autocast_equals_float32(similarity: Similarity) -> None:
    qm, qv = _gaussians(2, 8)
    dm, dv = _gaussians(3, 8 * 50)
    dm, dv = dm.view(8, 50, -1), dv.view(8, 50, -1)
    expected = score_candidates(qm, qv, dm, dv, similarity)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = score_candidates(qm, qv, dm, dv, similarity)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got.argsort(dim=1, descending=True), expected.argsort(dim=1, descending=True))


def test_bf16_inputs_are_scored_in_float32_and_get_gradients() -> None:
    qm, qv = _gaussians(4, 4, k=32)
    dm, dv = _gaussians(5, 30, k=32)
    half = [t.to(torch.bfloat16).requires_grad_() for t in (qm, qv, dm, dv)]
    got = score_matrix(half[0], half[1], half[2], half[3])
    full = [t.detach().float() for t in half]
    expected = score_matrix(full[0], full[1], full[2], full[3])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    for t in half:
        assert t.grad is not None and t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad.float()).all()


def test_autocast_is_restored_after_scoring() -> None:
    qm, qv = _gaussians(6, 2, k=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score_matrix(qm, qv, qm, qv)
        assert (qm @ qm.T).dtype == torch.bfloat16


def test_mixed_dtypes_are_scored_in_the_widest_one() -> None:
    qm, qv = _gaussians(7, 3, k=16)
    dm, dv = _gaussians(8, 20, k=16)
    expected = score_matrix(qm.double(), qv.double(), dm.double(), dv.double())
    got = score_matrix(qm.to(torch.bfloat16).double(), qv.double(), dm.half().double(), dv.double())
    mixed = score_matrix(qm.to(torch.bfloat16), qv.double(), dm.half(), dv)
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, got)
    assert expected.dtype == torch.float64
    cands = score_candidates(qm.double(), qv, dm[:15].view(3, 5, -1).half(), dv[:15].view(3, 5, -1))
    assert cands.dtype == torch.float64
