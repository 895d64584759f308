"""Best-of-N timing shared by the benchmark scripts (a module of theirs, not a benchmark of its own).

``best_of`` runs a callable ``repeats`` times and keeps, for each clock it is given, the shortest run: the
statistic ``store_filters.py``, ``hybrid_speed.py`` and ``qpp_speed.py`` report (the best of a few runs is the
least disturbed by other work on a shared machine). ``CLOCKS`` names the two clocks their ``--clock`` options
offer: wall time (``time.perf_counter``) and the process's CPU time (``time.process_time``, all threads).

Examples:
    >>> (wall,), out = best_of(lambda: sum(range(10)), 3)
    >>> out, wall >= 0.0
    (45, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["CLOCKS", "best_of"]

T = TypeVar("T")

#: The clocks a benchmark may time by, by name.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def best_of(
    fn: Callable[[], T], repeats: int, clocks: Sequence[Callable[[], float]] = (time.perf_counter,)
) -> tuple[tuple[float, ...], T]:
    """The shortest of ``repeats`` runs of ``fn`` by each clock (seconds, in the clocks' order) and the last result.

    Each clock is read just before and just after every run; each clock's minimum is taken on its own (the run
    fastest by wall time need not be the fastest by CPU time).

    Args:
        fn: What to time, called with no arguments.
        repeats: How many runs (at least 1).
        clocks: The clocks to read (default: wall time).

    Raises:
        ValueError: ``repeats`` below 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats!r}")
    best = [float("inf")] * len(clocks)
    out: T
    for _ in range(repeats):
        starts = [clock() for clock in clocks]
        out = fn()
        ends = [clock() for clock in clocks]
        best = [min(b, end - start) for b, start, end in zip(best, starts, ends, strict=True)]
    return tuple(best), out
