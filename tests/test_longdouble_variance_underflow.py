"""A ``np.longdouble`` variance too small for float64 (1e-4000) is named as the caller wrote it.

The cast to float64 made it 0, and the refusal then said the variance was 0 ("non-positive ... 0"), a value
the caller never gave. It is refused before the cast now, naming 1e-4000, as a value beyond float64's range
is. Elsewhere (a mean, scores) 0 stands for such a value, as before. (1e-5000 is below even ``np.longdouble``'s
range on x86: it is 0 already when parsed.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kl_retrievers import Gaussians

pytestmark = pytest.mark.skipif(
    np.finfo(np.longdouble).tiny >= np.finfo(np.float64).tiny, reason="np.longdouble is float64 on this platform"
)


def _tiny() -> np.longdouble:
    value = np.longdouble("1e-4000")
    assert value != 0 and np.float64(value) == 0
    return value


@pytest.mark.parametrize("sign", [1])  # a negative one is refused for its sign: test_longdouble_negative_variance.py
def test_a_variance_float64_makes_0_is_named_as_given(sign: int) -> None:
    var = np.array([[1.0, 2.0], [3.0, sign * _tiny()]], dtype=np.longdouble)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before the cast: no "underflow encountered in cast"
        with pytest.raises(
            ValueError,
            match=r"var holds 1 nonzero value\(s\) too small for float64, which would become 0 \(magnitudes down "
            rf"to 4\.941e-324; first at row 1, column 1: {'-' if sign < 0 else ''}1e-4000\); Gaussians take",
        ):
            Gaussians(np.zeros((2, 2)), var)


def test_a_mean_float64_makes_0_and_a_tiny_variance_float64_holds_still_pass() -> None:
    g = Gaussians(
        np.array([[_tiny(), 1.0]], dtype=np.longdouble), np.array([[np.longdouble("1e-310"), 1.0]], np.longdouble)
    )
    assert g.mean.dtype == np.float64 and g.mean[0, 0] == 0.0
    assert g.var[0, 0] == np.float64(np.longdouble("1e-310")) > 0  # a float64 subnormal is kept
