"""A NaN or infinite number in facts the caller hands to a save is a ``UserWarning`` at the caller's line.

The package's rule (Python's logging HOWTO): ``warnings.warn`` for what the caller can fix in their call,
logging for what happens whatever they do. ``save_gaussians(metadata=...)`` warned; ``ConfidenceCalibrator.save``
logged the same event for the ``info=`` its caller recorded. Both warn now, each at the caller's line, and
write the value as null (standard JSON).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from conftest import random_gaussians
from kl_retrievers._io import save_gaussians
from kl_retrievers.calibration import ConfidenceCalibrator


def test_a_calibrator_info_value_that_is_not_finite_warns_at_the_callers_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [1.0]], [0, 1], info={"ece": float("nan")})
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        path = cal.save(tmp_path / "cal.json")
    assert [str(w.message) for w in seen] == [
        "ConfidenceCalibrator.save: info values that are not finite (NaN or infinite) are saved as null "
        "(standard JSON): info.ece"
    ]
    assert seen[0].category is UserWarning and seen[0].filename == __file__
    assert not [r for r in caplog.records if "not finite" in r.getMessage()]  # no log line besides
    assert json.loads(path.read_text(encoding="utf-8"))["info"]["ece"] is None


def test_save_gaussians_metadata_that_is_not_finite_warns_at_the_callers_line(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        save_gaussians(tmp_path / "g", random_gaussians(2, 3), metadata={"x": float("inf")})
    assert len(seen) == 1 and "metadata holds NaN or infinite values at ['x']" in str(seen[0].message)
    assert seen[0].category is UserWarning and seen[0].filename == __file__
