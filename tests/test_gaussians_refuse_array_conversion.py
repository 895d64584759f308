"""``np.asarray(g)`` / ``np.array(g)`` / ``np.save(path, g)`` on a Gaussians batch fail at once with a TypeError
naming ``.mean`` / ``.var`` and ``save_gaussians``, instead of walking the batch row by row (seconds to minutes,
then numpy's dimension limit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kl_retrievers import Gaussians

MESSAGE = (
    "Gaussians \\(a batch of 300 Gaussians in 16 dimensions\\) is two arrays, not one: take g.mean and g.var .*"
    "g.numpy\\(\\).*kl_retrievers.save_gaussians\\(path, g\\)"
)


@pytest.mark.parametrize("as_torch", [False, True])
def test_numpy_conversions_refuse_at_once_naming_mean_var_and_save_gaussians(tmp_path: Path, as_torch: bool) -> None:
    g = Gaussians(np.zeros((300, 16), np.float32), np.ones((300, 16), np.float32))
    g = g.torch() if as_torch else g
    conversions = (
        lambda: np.asarray(g),
        lambda: np.array(g),
        lambda: np.array(g, dtype=np.float32, copy=True),
        lambda: np.asanyarray(g),
        lambda: np.save(tmp_path / "g.npy", g),
        lambda: np.stack([g, g]),
    )
    for convert in conversions:
        with pytest.raises(TypeError, match=MESSAGE):
            convert()


def test_the_arrays_themselves_still_convert() -> None:
    g = Gaussians(np.zeros((3, 4)), np.ones((3, 4)))
    assert np.asarray(g.mean).shape == np.asarray(g.var).shape == (3, 4)
    assert len(g) == 3 and len([g[i] for i in range(len(g))]) == 3  # indexing row by row still works (each row a batch)
    # torch.as_tensor does not ask __array__: it fails at once with its own "too many dimensions" (a ValueError)
    with pytest.raises(ValueError):  # torch's own words, which may change
        torch.as_tensor(g)
