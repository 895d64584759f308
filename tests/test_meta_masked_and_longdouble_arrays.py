"""Arrays whose values cannot be read as they stand: meta tensors, masked arrays, long doubles beyond float64.

1. A torch tensor on the ``meta`` device (a shape without data) given to ``Gaussians`` (and so to ``neg_kl``), to
   the adapters' by-vector entries or to the calibrator failed in torch's words ("Cannot copy out of meta tensor",
   ".item() cannot be called on meta tensors"): it is refused naming the meta device and the devices that hold data.
2. A numpy masked array lost its mask (``np.asarray`` drops it) and the values under the mask were used as numbers:
   one with a masked element is refused naming how many and how to fill them; one with none masked is its data.
3. A ``np.longdouble`` value beyond float64's range became ``inf`` in the cast to float64 and the refusal named inf:
   it names the caller's value (1e+400) and float64's range.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians
from kl_retrievers.calibration import ConfidenceCalibrator, expected_calibration_error

META = re.escape("is a tensor on the meta device (a shape without data)") + ".*on cpu, cuda or mps"


# ---------------------------------------------------------------- 1. meta tensors
def test_gaussians_refuse_a_meta_tensor_naming_the_meta_device() -> None:
    torch = pytest.importorskip("torch")
    meta = torch.empty(2, 3, device="meta")
    for validate in (True, False):  # neg_kl never receives one: even an unchecked batch refuses it
        with pytest.raises(TypeError, match="mean " + META):
            Gaussians(meta, meta, validate=validate)
    real = Gaussians(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match=META):
        real.torch(device="meta")
    with pytest.raises(TypeError, match="mean " + META):  # a list of tensor rows, converted row by row
        Gaussians([meta[0], meta[1]], np.ones((2, 3)))


def test_the_calibrator_and_the_by_vector_entries_refuse_a_meta_tensor() -> None:
    torch = pytest.importorskip("torch")
    meta = torch.empty(3, device="meta")
    cal = ConfidenceCalibrator(["gap12"]).fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="scores " + META):
        cal.confidence(meta, 0.1)
    with pytest.raises(TypeError, match="features " + META):
        cal.predict(torch.empty(1, 1, device="meta"))
    with pytest.raises(TypeError, match="probabilities " + META):
        expected_calibration_error(meta, np.array([0, 1, 1]))
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    with pytest.raises(TypeError, match=META):
        KLEmbeddings.decode_query(meta)


# ---------------------------------------------------------------- 2. masked arrays
def test_a_masked_array_with_masked_values_is_refused_naming_how_many() -> None:
    mean = np.ma.masked_array(np.zeros((2, 3)), mask=[[False, True, False], [False, False, True]])
    with pytest.raises(
        ValueError,
        match=r"mean is a masked array with 2 masked value\(s\) of 6 \(first at row 0, "
        r"column 1\).*\.filled\(value\)\) or drop those rows",
    ):
        Gaussians(mean, np.ones((2, 3)))
    var = np.ma.masked_invalid(np.array([[1.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"var is a masked array with 1 masked value"):
        Gaussians(np.zeros((1, 3)), var)
    with pytest.raises(ValueError, match=r"mean is a masked array with 1 masked value\(s\) of 3 \(first at position 1"):
        Gaussians([mean[0], mean[1]], np.ones((2, 3)))  # rows given as a list: each is looked at
    with pytest.raises(ValueError, match=r"probabilities is a masked array with 1 masked value"):
        expected_calibration_error(np.ma.masked_array([0.2, 0.9], mask=[False, True]), np.array([0, 1]))


def test_a_masked_array_with_nothing_masked_is_its_data() -> None:
    data = np.arange(6.0).reshape(2, 3)
    g = Gaussians(np.ma.masked_array(data), np.ma.masked_array(data + 1, mask=np.zeros((2, 3), bool)))
    assert type(g.mean) is np.ndarray and type(g.var) is np.ndarray
    np.testing.assert_array_equal(g.mean, data)
    np.testing.assert_array_equal(g.var, data + 1)


# ---------------------------------------------------------------- 3. long doubles beyond float64
needs_wide_longdouble = pytest.mark.skipif(
    np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="np.longdouble is float64 on this platform"
)


@needs_wide_longdouble
def test_a_longdouble_beyond_float64_is_named_as_the_caller_wrote_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow warning when parsing "1e400" into a float64 elsewhere
        huge = np.longdouble("1e400")
    mean = np.array([[1.0, 2.0], [3.0, huge]], dtype=np.longdouble)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before the cast: no "overflow encountered in cast"
        with pytest.raises(
            ValueError,
            match=r"mean holds 1 value\(s\) beyond float64's range \(magnitudes up to "
            r"1\.798e\+308; first at row 1, column 1: 1e\+400\)",
        ):
            Gaussians(mean, np.ones((2, 2)))
        with pytest.raises(ValueError, match=r"var holds 1 value\(s\) beyond float64's range.*: -1e\+400\)"):
            Gaussians(np.zeros(2), np.array([1.0, -huge], dtype=np.longdouble))
        features: Any = np.array([[huge]], dtype=np.longdouble)
        with pytest.raises(ValueError, match=r"features holds 1 value\(s\) beyond float64's range.*1e\+400"):
            ConfidenceCalibrator(["gap12"]).fit(features, np.array([1.0]))
        ok = Gaussians(np.array([[1e300]], dtype=np.longdouble), np.ones((1, 1), dtype=np.longdouble))
    assert ok.mean.dtype == np.float64 and ok.mean[0, 0] == 1e300
