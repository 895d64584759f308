"""The QPP bootstrap's Kendall tau: counted per resample in O(n log n) integers, the same taus as before, bit for bit.

Up to ``_PAIRWISE_MAX`` queries the bootstrap taus came from an ``n x n`` pairwise-sign matrix and a BLAS
product per chunk of resamples (10 s of a profiled ``evaluate`` on cranfield, on a loaded machine). They now
come from exact pair counts, rounded by the same formula: the logged intervals must not move.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from kl_retrievers import qpp


def _reference_kendall_weighted(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The pairwise-sign-matrix computation the intervals were logged with (kl_retrievers 0.1.0, qpp.py)."""
    sign = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
    out = np.empty(weights.shape[0])
    _, gx = np.unique(x, return_inverse=True)
    _, gy = np.unique(y, return_inverse=True)
    for start in range(0, weights.shape[0], 64):
        w = weights[start : start + 64]
        s = 0.5 * np.einsum("bi,bi->b", w @ sign, w)
        total = w.sum(axis=1)
        n0 = total * (total - 1) / 2
        ties = []
        for g in (gx, gy):
            wg = np.zeros((w.shape[0], int(g.max()) + 1))
            np.add.at(wg.T, g, w.T)
            ties.append((wg * (wg - 1) / 2).sum(axis=1))
        den = np.sqrt((n0 - ties[0]) * (n0 - ties[1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + 64] = np.where(den > 0, s / den, np.nan)
    return np.clip(out, -1.0, 1.0)


def _reference_counts(n: int, idx: np.ndarray) -> np.ndarray:
    counts = np.zeros((idx.shape[0], n))
    np.add.at(counts, (np.repeat(np.arange(idx.shape[0]), n), idx.ravel()), 1.0)
    return counts


def _pairs(n: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        return rng.normal(size=n), rng.normal(size=n)
    if kind == "ties":  # like nDCG against a rounded predictor: ties on both sides
        x = np.round(rng.normal(size=n), 1)
        return x, np.round(rng.random(n) + 0.3 * x, 1)
    if kind == "few values":  # a handful of values each: most pairs tied
        return rng.integers(0, 3, n).astype(float), rng.integers(0, 2, n).astype(float)
    if kind == "x all tied":
        return np.full(n, 0.5), rng.random(n)
    if kind == "y all tied":
        return rng.random(n), np.full(n, 0.25)
    x = np.zeros(n)  # "rare": one distinct predictor value, most resamples constant
    x[0] = 1.0
    return x, np.round(rng.random(n), 1)


KINDS = ("continuous", "ties", "few values", "x all tied", "y all tied", "rare")


@pytest.mark.parametrize("n", [2, 3, 10, 57, 225])
@pytest.mark.parametrize("kind", KINDS)
def test_weighted_taus_equal_the_pairwise_reference_bit_for_bit(n: int, kind: str) -> None:
    x, y = _pairs(n, kind, seed=n)
    idx = np.random.default_rng(1).integers(0, n, size=(150, n))
    expected = _reference_kendall_weighted(x, y, _reference_counts(n, idx))
    got = qpp._kendall_weighted(x, y, _reference_counts(n, idx))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got, expected)  # and in every bit: logged intervals do not move


def test_several_chunks_of_resamples_give_the_same_taus(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _pairs(90, "ties", seed=5)
    idx = np.random.default_rng(2).integers(0, 90, size=(101, 90))
    whole = qpp._kendall_weighted(x, y, _reference_counts(90, idx))
    resampled = qpp._kendall_resampled(x, y, idx)
    monkeypatch.setattr(qpp, "_BOOT_CHUNK", 7)
    monkeypatch.setattr(qpp, "_BOOT_CELLS", 1)  # chunks of 7 resamples, the last one short
    assert qpp._boot_chunk(90) == 7
    np.testing.assert_array_equal(qpp._kendall_weighted(x, y, _reference_counts(90, idx)), whole)
    np.testing.assert_array_equal(qpp._kendall_resampled(x, y, idx), resampled)
    np.testing.assert_array_equal(whole, _reference_kendall_weighted(x, y, _reference_counts(90, idx)))


@pytest.mark.parametrize("kind", ["ties", "rare"])
def test_correlation_intervals_are_those_of_the_reference_taus(kind: str) -> None:
    x, y = _pairs(120, kind, seed=11)
    n_boot, seed = 400, 3
    out = qpp.correlation(x, y, n_boot=n_boot, seed=seed)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))  # the draw correlation makes
    taus = _reference_kendall_weighted(x, y, _reference_counts(x.size, idx))
    pearsons = qpp._pearson_rows(x[idx], y[idx])
    defined = np.isfinite(taus) & np.isfinite(pearsons)
    defined &= ~qpp._constant_rows(x[idx]) & ~qpp._constant_rows(y[idx])
    assert out["bootstrap_valid"] == int(defined.sum())
    alpha = (1.0 - 0.95) / 2.0
    if out["bootstrap_valid"] >= qpp.MIN_BOOT_VALID * n_boot:
        assert out["tau_ci"] == [float(v) for v in np.quantile(taus[defined], [alpha, 1.0 - alpha])]
        assert out["pearson_ci"] == [float(v) for v in np.quantile(pearsons[defined], [alpha, 1.0 - alpha])]
    else:
        assert kind == "rare" and out["tau_ci"] is None


def _peak_bytes(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bootstrap_tau_holds_no_n_by_n_matrix() -> None:
    n = 3000  # below _PAIRWISE_MAX: the pairwise path held several 3000 x 3000 float64 matrices (72 MB each)
    x, y = _pairs(n, "ties", seed=4)
    assert n <= qpp._PAIRWISE_MAX
    peak = _peak_bytes(lambda: qpp.correlation(x, y, n_boot=40, seed=0))
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
