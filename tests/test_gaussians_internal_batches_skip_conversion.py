"""Batches the package builds from checked arrays skip :class:`Gaussians`' conversion; a caller's input does not.

Every search built six batches from arrays already checked (a slice of the query per re-scoring step, the stored
rows, a cast, a rewrite), and each ran the conversion of a caller's input again: ``_real_numpy`` (masked arrays,
torch tensors, lists of rows, ``np.longdouble`` ranges) twice and ``_is_torch`` about eight times, a quarter of the
per-search time of our own code on a 5,000-document flat store. A pair of plain numpy arrays of one dtype,
float32 or float64, is what that conversion would give and leave as it is, so it is no longer run for one. Every
check a caller's input gets is kept: finiteness and positivity (``validate=True``), shapes, dimension ``k >= 1``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore
from kl_retrievers import gaussian as gaussian_module


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of the calls of the conversion and check helpers of :class:`Gaussians` from here on."""
    counts: Counter[str] = Counter()
    for name in ("_real_numpy", "_check_real", "_check_finite", "_unmasked"):
        original = getattr(gaussian_module, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(gaussian_module, name, counting)
    return counts


def _batch(n: int = 6, k: int = 4, dtype: Any = np.float32) -> Gaussians:
    rng = np.random.default_rng(0)
    return Gaussians(rng.normal(size=(n, k)).astype(dtype), rng.uniform(0.5, 2.0, size=(n, k)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slices_and_casts_of_a_checked_batch_run_no_conversion(conversions: Counter[str], dtype: Any) -> None:
    g = _batch(dtype=dtype)
    conversions.clear()
    parts = [g[1:3], g[0], g[[0, 2, 5]], g[np.array([True, False] * 3)], g.astype(np.float64), g.numpy()]
    parts.append(Gaussians.concat([g, g]))
    assert not conversions, conversions  # HEAD: _real_numpy and _check_real twice per batch
    assert [len(p) for p in parts] == [2, 1, 3, 3, 6, 6, 12]
    assert all(p.mean.ndim == 2 and p.mean.dtype == p.var.dtype for p in parts)
    np.testing.assert_array_equal(parts[2].var, g.var[[0, 2, 5]])


def test_a_search_converts_nothing_it_built_itself(conversions: Counter[str]) -> None:
    rng = np.random.default_rng(1)
    store = KLStore()
    store.add(gaussians=_batch(200, 8), ids=[f"d{i}" for i in range(200)])
    query = Gaussians(rng.normal(size=(1, 8)), rng.uniform(0.5, 2.0, size=(1, 8)))
    conversions.clear()
    hits = store.search(query, k=5)
    assert len(hits) == 5
    assert not conversions, conversions  # HEAD: _real_numpy 12 times (six batches), _check_real 12 times


def test_a_callers_arrays_are_still_converted_and_checked(conversions: Counter[str]) -> None:
    g = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
    assert conversions["_check_finite"] == 2  # validate=True: both arrays checked
    with pytest.raises(ValueError, match="mean must be finite; found 1 NaN"):
        Gaussians(np.array([[np.nan, 0.0]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="var must be > 0; found 1 non-positive value"):
        Gaussians(np.zeros((1, 2), np.float32), np.array([[1.0, 0.0]], np.float32))
    with pytest.raises(ValueError, match="same 2-D shape"):
        Gaussians(np.zeros((2, 3)), np.ones((3, 2)), validate=False)
    with pytest.raises(ValueError, match="at least one dimension"):
        g[:, :0]
    # other dtypes and array subclasses are converted as before: one float dtype, plain arrays
    mixed = Gaussians(np.zeros((1, 2), np.float32), np.ones((1, 2)))
    assert mixed.mean.dtype == mixed.var.dtype == np.float64
    masked = Gaussians(np.ma.masked_array(np.zeros((1, 2))), np.ones((1, 2)))
    assert type(masked.mean) is np.ndarray
    swapped = Gaussians(np.zeros((1, 2), ">f8"), np.ones((1, 2), ">f8"))
    assert swapped.mean.dtype == swapped.var.dtype
    assert conversions["_real_numpy"] >= 6
