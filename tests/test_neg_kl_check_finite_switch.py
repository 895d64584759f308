"""``neg_kl`` and ``neg_kl_matrix`` take ``check_finite=False``: the check, a host read on a GPU, is skippable.

The check of the scores (``bool(torch.isfinite(scores).all())``) waits for a GPU's work to finish on every call. It
stays on by default (a -KL that overflows float32 would otherwise rank last unnoticed); a training or scoring loop on
a GPU that wants its calls asynchronous passes ``check_finite=False`` and gets the non-finite values as they are.
Only CPU tensors here: the switch, not the synchronisation, is what is tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, neg_kl, neg_kl_matrix


def _overflowing(module: Any) -> tuple[Gaussians, Gaussians]:
    """A pair whose float32 -KL overflows (variance 1e-45)."""
    if module is np:
        return (
            Gaussians(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)),
            Gaussians(np.ones((1, 1), np.float32), np.full((1, 1), 1e-45, np.float32)),
        )
    return Gaussians(module.zeros(1, 1), module.ones(1, 1)), Gaussians(module.ones(1, 1), module.tensor([[1e-45]]))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("score", [neg_kl, neg_kl_matrix])
def test_check_finite_false_returns_the_scores_as_they_are(backend: str, score: Any) -> None:
    module: Any = np if backend == "numpy" else pytest.importorskip("torch")
    q, d = _overflowing(module)
    with pytest.raises(ValueError, match="cannot be scored in float32"):
        score(q, d)  # the default checks
    with np.errstate(all="ignore"):
        got = score(q, d, check_finite=False)
    values = np.asarray(got.numpy() if backend == "torch" else got)
    assert values.reshape(-1)[0] == -np.inf
    fine = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
    fine = fine.torch() if backend == "torch" else fine
    a = score(fine, fine, check_finite=False)
    b = score(fine, fine)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("score", [neg_kl, neg_kl_matrix])
def test_check_finite_must_be_a_bool(score: Any) -> None:
    g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(TypeError, match="check_finite must be a bool; got 'no'"):
        score(g, g, check_finite="no")
    assert score(g, g, check_finite=np.bool_(False)).shape[0] == 1
