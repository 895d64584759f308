"""A negative ``np.longdouble`` variance below float64's range (-1e-4000) is refused for its sign, as every
non-positive variance is, not as "too small for float64" (a positive one that float64 would make 0 is:
tests/test_longdouble_variance_underflow.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kl_retrievers import Gaussians

pytestmark = pytest.mark.skipif(
    np.finfo(np.longdouble).tiny >= np.finfo(np.float64).tiny, reason="np.longdouble is float64 on this platform"
)


def test_a_negative_variance_below_float64s_range_is_refused_as_non_positive() -> None:
    tiny = np.longdouble("-1e-4000")
    assert tiny < 0 and np.float64(tiny) == 0
    var = np.array([[1.0, 2.0], [3.0, tiny]], dtype=np.longdouble)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "underflow encountered in cast" either
        with pytest.raises(ValueError, match=r"var must be > 0; found 1 non-positive value\(s\)") as caught:
            Gaussians(np.zeros((2, 2)), var)
    assert "too small for float64" not in str(caught.value)
    assert "first at row 1, column 1" in str(caught.value)
