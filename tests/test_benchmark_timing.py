"""``benchmarks/timing.py``: the one best-of-N timer of the benchmark scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import timing


def _clock(*ticks: float):  # type: ignore[no-untyped-def]
    it = iter(ticks)
    return lambda: next(it)


def test_each_clock_keeps_its_own_shortest_run_and_the_last_result() -> None:
    wall = _clock(0.0, 5.0, 10.0, 12.0, 20.0, 29.0)  # runs of 5, 2, 9
    cpu = _clock(0.0, 1.0, 1.0, 4.0, 4.0, 4.5)  # runs of 1, 3, 0.5
    results = iter(["a", "b", "c"])
    (w, c), out = timing.best_of(lambda: next(results), 3, (wall, cpu))
    assert (w, c, out) == (2.0, 0.5, "c")


def test_default_clock_is_wall_time_and_repeats_must_be_positive() -> None:
    calls: list[int] = []

    def call() -> int:
        calls.append(1)
        return len(calls)

    (seconds,), out = timing.best_of(call, 4)
    assert calls == [1] * 4 and out == 4 and seconds >= 0.0
    with pytest.raises(ValueError, match="repeats must be >= 1; got 0"):
        timing.best_of(lambda: None, 0)
    assert timing.CLOCKS["cpu"] is not timing.CLOCKS["wall"]
