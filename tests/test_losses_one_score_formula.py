"""score_matrix and score_candidates: one -KL formula, checked against torch's own KL (values and gradients)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from kl_retrievers.training.losses import score_candidates, score_matrix


def _inputs(n: int, m: int, k: int, *, per_query: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7 + per_query)
    docs = (n, m, k) if per_query else (m, k)
    return [
        torch.randn(n, k, generator=g) * 2.0,
        torch.rand(n, k, generator=g) * 3.0 + 0.05,
        torch.randn(docs, generator=g) * 2.0,
        torch.rand(docs, generator=g) * 3.0 + 0.05,
    ]


def _torch_neg_kl(qm: torch.Tensor, qv: torch.Tensor, dm: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """-KL(Q || D) by torch.distributions, queries (n, k) against documents (m, k) or (n, m, k)."""
    if dm.dim() == 2:
        dm, dv = dm[None], dv[None]
    query = Independent(Normal(qm[:, None, :], qv[:, None, :].sqrt()), 1)
    return -kl_divergence(query, Independent(Normal(dm, dv.sqrt()), 1))


def _values_and_grads(
    fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], weights: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    scores = fn(*leaves)
    (scores * weights.to(scores.dtype)).sum().backward()
    return scores.detach(), [x.grad for x in leaves if x.grad is not None]


@pytest.mark.parametrize(
    ("name", "per_query"), [("score_matrix", False), ("score_candidates", True)], ids=["matrix", "candidates"]
)
def test_neg_kl_values_and_gradients_match_torch_distributions(name: str, per_query: bool) -> None:
    inputs = _inputs(6, 5, 64, per_query=per_query)
    weights = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    fn = {"score_matrix": score_matrix, "score_candidates": score_candidates}[name]
    got, got_grads = _values_and_grads(lambda qm, qv, dm, dv: fn(qm, qv, dm, dv, "neg_kl"), inputs, weights)
    ref, ref_grads = _values_and_grads(_torch_neg_kl, [x.double() for x in inputs], weights)
    assert got.dtype == torch.float32 and got.shape == (6, 5)
    scale = float(ref.abs().max())
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=4e-7 * scale * 64)  # float32 rounding of the terms
    assert len(got_grads) == len(ref_grads) == 4  # means and variances of both sides
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@pytest.mark.parametrize("similarity", ["neg_kl", "dot", "cosine"])
def test_candidates_score_as_the_matrix_does(similarity: str) -> None:
    qm, qv, dm, dv = _inputs(4, 7, 32, per_query=False)
    cols = torch.tensor([[0, 3, 6], [1, 1, 2], [5, 4, 0], [6, 2, 3]])
    matrix = score_matrix(qm, qv, dm, dv, similarity)  # type: ignore[arg-type]
    cand = score_candidates(qm, qv, dm[cols], dv[cols], similarity)  # type: ignore[arg-type]
    torch.testing.assert_close(cand, matrix.gather(1, cols))
    with pytest.raises(ValueError, match="similarity must be one of"):
        score_candidates(qm, qv, dm[cols], dv[cols], "l2")  # type: ignore[arg-type]


def test_candidates_keep_float32_precision_with_large_means_and_small_variances() -> None:
    """Means about 10, variances 1e-3, documents close to their query: the expansion's terms ``mu^2 / var``
    (about 1e5 each) cancel in float32 unless each query's candidates are centred on it; the scores and the
    ranking must stay those of float64 -KL."""
    g = torch.Generator().manual_seed(11)
    n, m, k = 32, 8, 384
    qm = 10.0 + torch.randn(n, k, generator=g)
    qv = torch.full((n, k), 1e-3)
    dm = qm[:, None, :] + 0.01 * torch.randn(n, m, k, generator=g)
    dv = torch.full((n, m, k), 1e-3)
    got = score_candidates(qm, qv, dm, dv, "neg_kl")
    ref = -0.5 * (dv.double().log() - qv.double().log()[:, None] - 1.0 + qv.double()[:, None] / dv.double())
    ref = (ref - 0.5 * (qm.double()[:, None] - dm.double()) ** 2 / dv.double()).sum(-1)
    assert float((got.double() - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    assert torch.equal(got.argsort(dim=1), ref.argsort(dim=1))


def test_matrix_keeps_float32_precision_with_large_means_and_small_variances() -> None:
    """In-batch scores (the default training path): means about 10, variances 1e-3, each document close to its
    query; the diagonal must stay within float32 reach of float64 -KL (it was off by ~15 of ~22 uncentred)."""
    g = torch.Generator().manual_seed(5)
    n, k = 32, 384
    qm = 10.0 + torch.randn(n, k, generator=g)
    qv = torch.full((n, k), 1e-3)
    dm = qm + 0.01 * torch.randn(n, k, generator=g)
    dv = torch.full((n, k), 1e-3)
    got = score_matrix(qm, qv, dm, dv, "neg_kl").diagonal().double()
    ref = -0.5 * (dv.double().log() - qv.double().log() - 1.0 + qv.double() / dv.double())
    ref = (ref - 0.5 * (qm.double() - dm.double()) ** 2 / dv.double()).sum(-1)
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())
