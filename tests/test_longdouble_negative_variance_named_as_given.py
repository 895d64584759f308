"""A negative ``np.longdouble`` variance below float64's range (-1e-4000) is named as the caller wrote it in the
"var must be > 0" refusal: the float64 cast made it -0 there ("min -0; first at ...: -0"), a value the caller
never gave (a positive one too small for float64 is refused before the cast, named as given: see
tests/test_longdouble_variance_underflow.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers import Gaussians

pytestmark = pytest.mark.skipif(
    np.finfo(np.longdouble).tiny >= np.finfo(np.float64).tiny, reason="np.longdouble is float64 on this platform"
)


def test_the_refusal_names_the_value_as_written() -> None:
    tiny = np.longdouble("-1e-4000")
    var = np.array([[1.0, 2.0], [3.0, tiny]], dtype=np.longdouble)
    with pytest.raises(ValueError) as caught:
        Gaussians(np.zeros((2, 2)), var)
    message = str(caught.value)
    assert message == (
        "var must be > 0; found 1 non-positive value(s) (min -1e-4000; first at row 1, column 1: -1e-4000)"
    )
    assert "-0" not in message.replace("-1e-4000", "")


def test_one_dimensional_and_mixed_values_keep_their_positions_and_minimum() -> None:
    var = np.array([1.0, np.longdouble("-1e-4000"), -2.5, 0.0], dtype=np.longdouble)
    with pytest.raises(ValueError) as caught:
        Gaussians(np.zeros(4), var)
    assert str(caught.value) == (
        "var must be > 0; found 3 non-positive value(s) (min -2.5; first at row 0, column 1: -1e-4000)"
    )


def test_float64_variances_are_named_as_before() -> None:
    with pytest.raises(ValueError) as caught:
        Gaussians(np.zeros((1, 3)), np.array([[1.0, -0.0, -3.0]]))
    assert str(caught.value) == "var must be > 0; found 2 non-positive value(s) (min -3; first at row 0, column 1: -0)"
