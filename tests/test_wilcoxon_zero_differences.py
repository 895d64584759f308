"""``wilcoxon_test`` hands scipy only the nonzero differences, so that scipy's ``method="auto"`` chooses the
exact or the approximate p-value on the differences it ranks (given zeros, scipy falls back to the normal
approximation even for 15 untied differences). The statistic is the same either way.
"""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.evaluation import wilcoxon_test

stats = pytest.importorskip("scipy.stats")


def _pq(values: list[float]) -> dict[str, dict[str, float]]:
    return {f"q{i:02d}": {"ndcg@10": v} for i, v in enumerate(values)}


def test_zero_differences_do_not_switch_scipy_to_the_normal_approximation() -> None:
    # 15 untied nonzero differences (k/16, exact in binary) and 5 queries that do not differ
    signs = [1, -1, 1, 1, -1, 1, -1, 1, 1, -1, 1, 1, -1, 1, -1]
    nonzero = [k / 16 * s for k, s in zip(range(1, 16), signs, strict=True)]
    b = [0.0] * 15 + [0.5] * 5
    a = nonzero + [0.5] * 5
    res = wilcoxon_test(_pq(a), _pq(b))
    on_nonzero = stats.wilcoxon(np.array(nonzero))
    with_zeros = stats.wilcoxon(np.array(nonzero + [0.0] * 5))
    exact = stats.wilcoxon(np.array(nonzero), method="exact")
    assert (res.n, res.n_nonzero) == (20, 15)
    assert res.statistic == float(on_nonzero.statistic) == float(with_zeros.statistic) == 52.0
    assert res.p_value == pytest.approx(float(on_nonzero.pvalue), rel=1e-12)
    assert res.p_value == pytest.approx(float(exact.pvalue), rel=1e-12)
    assert res.p_value == pytest.approx(0.67877197265625, rel=1e-12)  # exact: 2 * P(W <= 52), n = 15
    assert res.p_value != pytest.approx(float(with_zeros.pvalue), rel=1e-3)  # the normal approximation


def test_ties_among_the_nonzero_differences_match_scipy_on_the_nonzero_ones() -> None:
    a = [0.5, 0.5, 0.75, 1.0, 0.25, 0.625, 1.0, 0.25, 0.875, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    b = [0.5, 0.5, 0.5, 0.75, 0.0, 0.375, 0.5, 0.375, 0.875, 0.625, 0.25, 0.125, 0.75, 0.0, 0.375, 0.25]
    diff = np.array(a) - np.array(b)  # exact in binary: ties are ties; three zeros
    res = wilcoxon_test(_pq(a), _pq(b))
    ref = stats.wilcoxon(diff[diff != 0])
    assert (res.n, res.n_nonzero) == (16, 13)
    assert res.statistic == float(ref.statistic)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
