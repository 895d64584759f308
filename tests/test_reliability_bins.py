"""Reliability bins put a probability on an exact edge ``b / n_bins`` into bin ``b``, as documented."""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.calibration import expected_calibration_error, reliability_table


@pytest.mark.parametrize("n_bins", [3, 7, 10, 15, 22, 49, 100])
def test_every_exact_edge_falls_in_the_bin_it_opens(n_bins: int) -> None:
    edges = [b / n_bins for b in range(n_bins)]
    rows = reliability_table(edges, [1] * n_bins, n_bins=n_bins)
    assert [r["n"] for r in rows] == [1] * n_bins  # 15/22 * 22 = 14.999... went to bin 14 before
    for b, row in enumerate(rows):
        assert row["low"] <= row["confidence"] < row["high"]
        assert row["confidence"] == edges[b]


def test_a_probability_just_below_an_edge_stays_in_the_lower_bin() -> None:
    p = np.nextafter(0.9, 0.0)  # 0.8999999999999999 < 0.9, yet p * 10 rounds to 9.0
    rows = reliability_table([p], [1], n_bins=10)
    assert rows[8]["n"] == 1 and rows[9]["n"] == 0


def test_ece_sees_the_edge_probability_in_its_own_bin() -> None:
    # 15/22 alone in bin 15 with label 1: |1 - 15/22|; in bin 14 with a 0-labelled 14.5/22 it would mix.
    ece = expected_calibration_error([15 / 22, 14.5 / 22], [1, 0], n_bins=22)
    assert ece == pytest.approx(((1 - 15 / 22) + 14.5 / 22) / 2)
