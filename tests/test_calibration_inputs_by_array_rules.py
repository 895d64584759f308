"""Calibration metrics and ``ConfidenceCalibrator.fit`` read arrays by :class:`Gaussians`' rules.

``expected_calibration_error`` and ``reliability_table`` converted with ``np.asarray(float64)``: a tensor with grad
raised numpy's own error, bfloat16 could not be read, complex numbers were cast (ComplexWarning) to their real part.
``fit`` flattened any ``y``: a ``2 x 2`` matrix of targets became four targets. A column or row of targets
(``(n, 1)``, ``(1, n)``) is still one per query.
"""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.calibration import ConfidenceCalibrator, expected_calibration_error, reliability_table


def test_the_metrics_take_tensors_and_refuse_complex_numbers() -> None:
    torch = pytest.importorskip("torch")
    prob, labels = [0.1, 0.15, 0.9], [0.0, 1.0, 1.0]
    want = expected_calibration_error(prob, labels, n_bins=2)
    for given in (torch.tensor(prob, requires_grad=True), torch.tensor(prob).bfloat16()):
        got = expected_calibration_error(given, torch.tensor(labels), n_bins=2)
        assert got == pytest.approx(want, abs=1e-2)
        assert reliability_table(given, labels, n_bins=2)[1]["n"] == 1
    for metric in (expected_calibration_error, reliability_table):
        with pytest.raises(TypeError, match="probabilities has dtype complex"):
            metric(np.array(prob) + 1j, labels)
        with pytest.raises(TypeError, match="labels has dtype complex"):
            metric(prob, np.array(labels) + 0j)


def test_fit_takes_one_target_per_query_and_refuses_a_matrix() -> None:
    pytest.importorskip("scipy")
    x = [[0.0], [1.0], [0.2], [0.9]]
    y = np.array([0.0, 1.0, 0.0, 1.0])
    flat = ConfidenceCalibrator(["gap12"]).fit(x, y).predict([[0.5]])
    for shaped in (y.reshape(-1, 1), y.reshape(1, -1)):
        assert ConfidenceCalibrator(["gap12"]).fit(x, shaped).predict([[0.5]]) == pytest.approx(flat)
    with pytest.raises(ValueError, match=r"targets must hold one value per query .*got shape \(2, 2\)"):
        ConfidenceCalibrator(["gap12"]).fit(x, y.reshape(2, 2))
    with pytest.raises(ValueError, match=r"sample_weight must hold one value per query .*got shape \(2, 2\)"):
        ConfidenceCalibrator(["gap12"]).fit(x, y, sample_weight=np.ones((2, 2)))
