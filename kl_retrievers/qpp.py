"""Query performance prediction (QPP): how well a per-query signal predicts retrieval quality.

A *predictor* maps each query id to one number; :func:`qpp_report` correlates it with the
per-query nDCG@10 of the same run (Kendall's tau-b and Pearson's r, with seeded bootstrap 95%
intervals over queries).  Every predictor is *oriented* so that a positive correlation means
it predicts well: the model's query uncertainty enters with the sign flipped (a more
uncertain query should score lower), every other predictor as it is.

Predictors (``PREDICTORS`` holds the same facts):

======================  ====  ==========================================================
name                    kind  definition (``s_1 >= s_2 >= ...``: the run's scores of one query)
======================  ====  ==========================================================
``uncertainty``         pre   :meth:`Gaussians.uncertainty` of the query: the mean log-variance
                              ``mean_i log var_q_i`` (= log det(Sigma_q) / k); direction -1
``max_score``           post  ``s_1``
``nqc``                 post  ``std(s_1..s_k) / |ref|``, ``k = min(100, depth)`` (Shtok et al., TOIS 2012)
``gap12``               post  ``s_1 - s_2``
``wig``                 post  ``mean(s_1..s_k) - ref``, ``k = min(5, depth)`` (Zhou and Croft, SIGIR 2007,
                              without the 1/sqrt(|q|) of query-likelihood scores)
``avg_idf``             pre   mean BM25 IDF ``log(1 + (N - df + 0.5) / (df + 0.5))`` of the query's
                              terms that occur in the corpus
``scq``                 pre   mean SCQ ``(1 + log cf) * log(1 + N / df)`` over the same terms
                              (Zhao et al., ECIR 2008)
======================  ====  ==========================================================

``ref`` is a per-query *corpus-level reference score*.  Shtok's NQC divides by the score of
the whole corpus treated as one document; for ``-KL`` the analogue used here is the exact
mean score of the query over every document of the corpus, ``<q~, mean_d d~> + c(q)``
(:func:`corpus_mean_scores`, one matrix-vector product through the inner-product rewrite),
i.e. the score a random document gets.  Runs that come without a corpus (the baselines) use
the mean of *all* the run's own retrieved scores instead; the report says which
(``reference``).  ``-KL`` scores are negative, so NQC normalises by the absolute value.  Both
NQC and WIG therefore depend on the run's depth (documents retrieved per query, 100 by
default): below 100 NQC reads fewer scores, and a baseline's reference is the mean of fewer
scores (at depth <= 5 its WIG is 0 for every query, at depth 1 so is NQC).  :func:`qpp_for_run`
records the depth and the ``k`` of NQC and WIG it used, and warns when the depth is below
:data:`NQC_K`; figures of different depths are not comparable.

The run's own mean is a scale for NQC only when each query's retrieved scores have one sign
(BM25's are >= 0, ``-KL``'s < 0).  Scores that cross 0 (dot products, cosines of poor matches)
can average to about 0, and ``std / |mean|`` then explodes (or divides by 0) without saying
anything about the query.  So with the run-mean reference, NQC is left out of the *whole run*
(absent from :func:`post_retrieval_predictors`' output, a reason under ``missing`` in
:func:`qpp_for_run`'s report) as soon as one query has retrieved scores of both signs or a mean
of 0 (:func:`run_mean_nqc_problem`); its other predictors are kept.  Dropping only those
queries would correlate NQC over a biased subset.  A corpus reference (Gaussian runs) is not
affected.

Lexical statistics use the BM25 baseline's tokeniser (lower-cased ``\\b\\w+\\b`` tokens,
English stop words, no stemming); query terms absent from the corpus are ignored, as BM25
ignores them, and a query with none left scores 0 (below any possible IDF or SCQ).

Queries with no retrieved document get no post-retrieval value, and ``gap12`` needs two;
such queries are left out of that predictor's correlation (its ``n`` says how many remain).
A value that is NaN or infinite raises :class:`ValueError` naming the query's index and id.

What is correlated, and what the report says about it:

* Judged queries with **no relevant document** (no grade > 0 in their qrels, e.g. all judged 0,
  or every judgement dropped by ``--unknown-docs drop``) have no defined nDCG@10 to predict: the
  metric means score them 0 (the BEIR / ``trec_eval`` convention, unchanged), but the QPP
  target leaves them out; ``excluded_no_relevant`` counts them and a warning names the count.
* Fewer than :data:`MIN_QUERIES` queries, in the run or for one predictor, warn that the
  correlation is meaningless (it is computed anyway); for the run, the report's
  ``too_few_queries`` says so too.
* A predictor (or target) that is constant over its queries has no correlation: its ``tau``
  and ``pearson`` are ``None`` and ``missing`` says why (e.g. a model with fixed variances).
* The bootstrap intervals are percentile intervals over the resamples in which the
  correlation is defined (neither side constant); each predictor reports that count as
  ``bootstrap_valid``, and its intervals are ``None`` when fewer than
  :data:`MIN_BOOT_VALID` (90%) of the resamples are valid.

Examples:
    >>> ndcg = {f"q{i}": i / 10 for i in range(10)}
    >>> run = {q: {"a": -1.0 + v, "b": -1.0} for q, v in ndcg.items()}
    >>> post = post_retrieval_predictors(run)
    >>> round(correlation([post["gap12"][q] for q in ndcg], list(ndcg.values()), n_boot=0)["tau"], 6)
    1.0
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from kl_retrievers._warn import warn
from kl_retrievers.gaussian import (
    Gaussians,
    _require_gaussians,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
)

__all__ = [
    "PREDICTORS",
    "MIN_QUERIES",
    "NQC_K",
    "WIG_K",
    "MIN_BOOT_VALID",
    "correlation",
    "uncertainty_predictor",
    "corpus_mean_scores",
    "gaussian_query_stats",
    "post_retrieval_predictors",
    "run_mean_nqc_problem",
    "LexicalStats",
    "qpp_report",
    "qpp_for_run",
    "per_query_with_predictors",
    "fitted_predictor",
    "format_qpp",
]

logger = logging.getLogger(__name__)

#: name -> {"kind": "pre" | "post", "direction": +1 | -1, "definition": ...}; the direction
#: multiplies the raw value before correlating, so a positive tau means a good predictor.
PREDICTORS: dict[str, dict[str, Any]] = {
    "uncertainty": {"kind": "pre", "direction": -1, "definition": "mean log-variance of the query Gaussian"},
    "max_score": {"kind": "post", "direction": 1, "definition": "top-1 score"},
    "nqc": {
        "kind": "post",
        "direction": 1,
        "definition": "std of the top-min(100, depth) scores / |reference score| (reference: the query's mean "
        "score over the whole corpus for Gaussian runs, else the mean of all its retrieved scores; with the latter, "
        "left out of a run whose scores cross 0 for some query)",
    },
    "gap12": {"kind": "post", "direction": 1, "definition": "top-1 score minus top-2 score"},
    "wig": {
        "kind": "post",
        "direction": 1,
        "definition": "mean of the top-min(5, depth) scores minus the reference score (as for nqc)",
    },
    "avg_idf": {"kind": "pre", "direction": 1, "definition": "mean BM25 IDF of the query terms found in the corpus"},
    "scq": {"kind": "pre", "direction": 1, "definition": "mean SCQ of the query terms found in the corpus"},
}
#: Post-retrieval predictor names (those computed from a run's scores).
POST_RETRIEVAL: tuple[str, ...] = tuple(n for n, p in PREDICTORS.items() if p["kind"] == "post")

#: Below this many judged queries a correlation is reported with a warning.
MIN_QUERIES = 10
#: Depth of the score list for NQC, and for WIG (at most; a shallower run gives fewer scores).
NQC_K = 100
WIG_K = 5
#: Below this share of the bootstrap resamples with a defined correlation, no interval is given.
MIN_BOOT_VALID = 0.9
#: Default number of bootstrap resamples and their seed.
N_BOOT = 1000
SEED = 0

_TOKEN_PATTERN = r"(?u)\b\w+\b"  # the BM25 baseline's (kl_retrievers.baselines.BM25_TOKEN_PATTERN)


# --------------------------------------------------------------------------------------
# Correlations with bootstrap intervals
# --------------------------------------------------------------------------------------


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


#: Up to this many queries the bootstrap taus are rounded by :func:`_kendall_weighted` (tau-b's formula as the
#: former pairwise-sign-matrix computation wrote it); above it by :func:`_kendall_resampled` (scipy's). Both read
#: the same exact counts (:class:`_TauCounts`) and differ in the last bit at most: each size keeps the intervals it
#: has always logged.
_PAIRWISE_MAX = 4000
#: Fewest resamples handled together by the bootstrap's Kendall tau and Pearson r.
_BOOT_CHUNK = 32
#: Resamples x queries handled together, at most (past :data:`_BOOT_CHUNK` resamples): bounds the memory, and
#: keeps a chunk's working set in the CPU's cache.
_BOOT_CELLS = 1 << 17


def _boot_chunk(n: int) -> int:
    """Resamples of ``n`` queries handled together by the bootstrap."""
    return max(_BOOT_CHUNK, _BOOT_CELLS // max(n, 1))


def _multiplicities(rows: np.ndarray, n: int) -> np.ndarray:
    """``(c, n)`` counts: how often each resample (a row of indices in ``[0, n)``) holds each item."""
    c = rows.shape[0]
    flat = (rows + n * np.arange(c)[:, None]).ravel()
    return np.bincount(flat, minlength=n * c).reshape(c, n)


class _TauCounts:
    """The pair counts of Kendall's tau-b for weighted resamples of fixed pairs ``(x, y)``, exactly, in integers.

    A resample is given by its multiplicities ``w`` of the ``n`` items (copies of one item are tied
    in both variables). The items are sorted once by ``(x, y)``: the discordant pairs are the
    weighted inversions of the ``y`` ranks in that order, counted by a bottom-up merge (each level
    adds, for every item of a right half, the weight of the larger items in its left half: a
    cumulative sum and two look-ups, for a chunk of resamples at a time). Ties come from the summed
    weight ``W_g`` of each group of equal values: ``sum_g W_g (W_g - 1) / 2``. O(n log n) per
    resample and no ``n x n`` matrix (nor any BLAS call, whose threads stalled under load).

    Args:
        x: The ``n`` predictor values.
        y: The ``n`` target values.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        n = x.size
        order = np.lexsort((y, x))  # by x, ties by y: an inversion of y in this order is a discordant pair
        xs, ys = x[order], y[order]
        self.n = n
        self.order = order
        rank = np.unique(ys, return_inverse=True)[1].astype(np.int64).ravel()  # dense y rank, in (x, y) order
        self.x_start = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        self.xy_start = np.flatnonzero(np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])])
        self.by_y = np.argsort(rank, kind="stable")
        self.y_start = np.flatnonzero(np.r_[True, rank[self.by_y][1:] != rank[self.by_y][:-1]])
        # a weight and a cumulative weight are <= n: their product fits int32 up to n = 46340 (half the memory)
        self.dtype = np.int32 if n * n < 2**31 else np.int64
        span = int(rank.max()) + 1
        at = np.arange(n)
        # per merge level: the left halves' items by (block, rank); per right item, its larger-left range
        self.levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        half = 1
        while half < n:
            block = at // (2 * half)
            is_left = at % (2 * half) < half
            left, right = np.flatnonzero(is_left), np.flatnonzero(~is_left)
            key = block[left] * span + rank[left]
            by_key = np.argsort(key, kind="stable")
            keys = key[by_key]
            start = np.searchsorted(keys, block[right] * span + rank[right], side="right")  # first larger rank
            end = np.searchsorted(keys, (block[right] + 1) * span, side="left")  # end of the block's left half
            self.levels.append((left[by_key], right, start, end))
            half *= 2

    def __call__(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The counts of each resample.

        Args:
            weights: ``(c, n)`` integer multiplicities of the items, in their given order; each row
                sums to ``n`` (a resample of the ``n`` items: what bounds the integers).

        Returns:
            ``(pairs, x_ties, y_ties, con_minus_dis)``, each ``(c,)`` int64: all pairs of the
            resample, those tied in ``x``, those tied in ``y``, and concordant minus discordant pairs.
        """
        n, c = self.n, weights.shape[0]
        w = np.ascontiguousarray(weights[:, self.order].T.astype(self.dtype))  # (n, c): rows gathered whole
        discordant = np.zeros(c, dtype=np.int64)
        cum = np.zeros((n + 1, c), dtype=self.dtype)  # row 0 stays 0; a level fills rows 1..m
        for left_items, right, start, end in self.levels:
            m = left_items.size
            np.cumsum(w[left_items], axis=0, out=cum[1 : m + 1])
            discordant += (w[right] * (cum[end] - cum[start])).sum(axis=0, dtype=np.int64)

        def tied(starts: np.ndarray, rows: np.ndarray) -> np.ndarray:  # rows: a group's items together
            if starts.size < n:  # each group's weight, from the cumulative one (reduceat is slow down axis 0)
                np.cumsum(rows, axis=0, out=cum[1:])
                rows = cum[np.r_[starts[1:], n]] - cum[starts]
            return (rows * (rows - 1) // 2).sum(axis=0, dtype=np.int64)

        x_ties, y_ties, both = tied(self.x_start, w), tied(self.y_start, w[self.by_y]), tied(self.xy_start, w)
        total = w.sum(axis=0, dtype=np.int64)
        pairs = total * (total - 1) // 2
        return pairs, x_ties, y_ties, pairs - x_ties - y_ties + both - 2 * discordant


def _kendall_weighted(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of bootstrap resamples given as multiplicities ``weights`` (``(B, n)`` integers).

    The counts come from :class:`_TauCounts`; the tau is ``(C - D) / sqrt((n0 - n_x) (n0 - n_y))``,
    rounded as the former pairwise-sign-matrix computation (``C - D = 1/2 * w^T S w``) rounded it,
    so that the intervals of up to :data:`_PAIRWISE_MAX` queries stay as logged, bit for bit.
    ``NaN`` where a resample is constant on a side.

    Args:
        x: The ``n`` predictor values.
        y: The ``n`` target values.
        weights: ``(B, n)`` multiplicities of the items in each resample.

    Returns:
        ``(B,)`` taus.
    """
    out = np.empty(weights.shape[0])
    for chunk, (pairs, x_ties, y_ties, con_minus_dis) in _chunk_counts(x, y, weights, np.asarray):
        n0 = pairs.astype(np.float64)
        den = np.sqrt((n0 - x_ties) * (n0 - y_ties))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[chunk] = np.where(den > 0, con_minus_dis / den, np.nan)
    return np.clip(out, -1.0, 1.0)


def _kendall_resampled(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each bootstrap resample ``(x[idx[b]], y[idx[b]])``, as ``scipy.stats.kendalltau`` gives it.

    The counts scipy computes per resample (discordant pairs, ties in ``x``, in ``y`` and in both)
    come exactly from each resample's multiplicities (:class:`_TauCounts`); the tau then follows by
    scipy's own formula, so each value equals scipy's bit for bit (``NaN`` where a resample is
    constant on a side), in O(n log n) per resample and O(n) memory per resample of a chunk.

    Args:
        x: The ``n`` predictor values.
        y: The ``n`` target values.
        idx: ``(B, n)`` resampled indices into ``x`` and ``y``.

    Returns:
        ``(B,)`` taus.
    """
    taus = np.empty(idx.shape[0])
    counts = _chunk_counts(x, y, idx, lambda rows: _multiplicities(rows, x.size))
    for chunk, (total, x_ties, y_ties, con_minus_dis) in counts:
        with np.errstate(invalid="ignore", divide="ignore"):  # scipy's formula, in its order
            tau = (
                con_minus_dis
                / np.sqrt((total - x_ties).astype(np.float64))
                / np.sqrt((total - y_ties).astype(np.float64))
            )
        tau[(x_ties == total) | (y_ties == total)] = np.nan
        taus[chunk] = np.minimum(1.0, np.maximum(-1.0, tau))
    return taus


def _chunk_counts(
    x: np.ndarray, y: np.ndarray, resamples: np.ndarray, to_weights: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[slice, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    """:class:`_TauCounts` of ``resamples`` (rows), a chunk of :func:`_boot_chunk` rows at a time.

    ``to_weights`` turns a chunk of rows into their ``(b, n)`` multiplicities; each chunk comes with its slice.
    """
    counter = _TauCounts(x, y)
    step = _boot_chunk(x.size)
    for first in range(0, resamples.shape[0], step):
        chunk = slice(first, first + step)
        yield chunk, counter(to_weights(resamples[chunk]))


def _constant_rows(a: np.ndarray) -> np.ndarray:
    """Whether each row holds one value only."""
    return np.asarray(a.max(axis=-1) == a.min(axis=-1))


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair (NaN where a row is constant).

    Constancy is tested on the values, not on the centred sum of squares: the mean of equal
    values can differ from them in the last bit (0.1 three times), which left a spurious r.
    """
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc**2).sum(axis=-1) * (yc**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=-1) / den
    r = np.where((den > 0) & ~_constant_rows(x) & ~_constant_rows(y), r, np.nan)
    return np.clip(r, -1.0, 1.0)


def _interval(samples: np.ndarray, level: float) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def correlation(
    predictor: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = 0.95,
) -> dict[str, Any]:
    """Kendall's tau-b and Pearson's r between a predictor and a target, with bootstrap intervals.

    The intervals are percentile intervals over ``n_boot`` resamples of the (predictor, target)
    pairs with replacement, drawn from ``numpy.random.default_rng(seed)``: the same inputs and
    seed give the same intervals.  A correlation that is undefined (a constant input) is ``None``.
    Resamples in which either side is constant have no correlation; the intervals come from the
    others (``bootstrap_valid`` counts them) and are ``None`` when they are fewer than
    :data:`MIN_BOOT_VALID` of ``n_boot``.

    Args:
        predictor: One value per query, oriented so that higher predicts better.
        target: The per-query metric, same order.
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Seed of the resampling.
        level: Interval coverage (default 0.95).

    Returns:
        ``{"tau", "tau_ci", "pearson", "pearson_ci", "n", "bootstrap_valid"}``; the intervals are
        ``[low, high]`` or ``None``.

    Raises:
        ValueError: If the lengths differ, fewer than 2 pairs are given, a value is not finite
            (the message names its position) or ``n_boot``/``level`` are out of range.

    Examples:
        >>> out = correlation(range(10), [0, 0.2, 0.1, 0.3, 0.4, 0.5, 0.6, 0.8, 0.7, 0.9], n_boot=0)
        >>> round(out["tau"], 4), out["n"], out["tau_ci"]
        (0.9111, 10, None)
        >>> x = [0.0] * 11 + [1.0]  # one distinct value: most resamples hold only zeros
        >>> out = correlation(x, range(12), n_boot=1000)
        >>> out["tau"] is None, out["tau_ci"], out["bootstrap_valid"] < 900
        (False, None, True)
    """
    x = np.asarray(predictor, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predictor and target must have the same length; got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"a correlation needs at least 2 queries; got {x.size}")
    for name, arr in (("predictor", x), ("target", y)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name} value at position {int(bad[0])} is {arr[bad[0]]}; every value must be finite")
    if not (isinstance(n_boot, int) and n_boot >= 0):
        raise ValueError(f"n_boot must be an int >= 0; got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    n = int(x.size)
    if n < MIN_QUERIES:
        warn(f"a correlation over {n} queries (fewer than {MIN_QUERIES}) is meaningless; it is computed anyway")
    tau = _kendall(x, y)
    pearson = float(_pearson_rows(x, y))
    tau_ci = pearson_ci = None
    valid = 0
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        small = n <= _PAIRWISE_MAX  # the same counts either way; each size keeps its logged rounding
        taus = _kendall_weighted(x, y, _multiplicities(idx, n)) if small else _kendall_resampled(x, y, idx)
        defined = np.isfinite(taus)
        pearsons = np.empty(n_boot)
        step = _boot_chunk(n)
        for first in range(0, n_boot, step):  # resampled values a chunk at a time, not (n_boot, n) at once
            xb, yb = x[idx[first : first + step]], y[idx[first : first + step]]
            pearsons[first : first + step] = _pearson_rows(xb, yb)
            defined[first : first + step] &= ~_constant_rows(xb) & ~_constant_rows(yb)
        defined &= np.isfinite(pearsons)
        valid = int(defined.sum())
        if valid >= MIN_BOOT_VALID * n_boot:
            tau_ci = _interval(taus[defined], level)
            pearson_ci = _interval(pearsons[defined], level)
    return {
        "tau": _finite_or_none(tau),
        "tau_ci": tau_ci,
        "pearson": _finite_or_none(pearson),
        "pearson_ci": pearson_ci,
        "n": n,
        "bootstrap_valid": valid,
    }


# --------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------


def _check_values(name: str, query_ids: Sequence[str], values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} of query index {i} (id {query_ids[i]!r}) is {values[i]}; it must be finite "
            f"({bad.size} non-finite value(s) in all)"
        )


def uncertainty_predictor(queries: Gaussians, query_ids: Sequence[str]) -> dict[str, float]:
    """Each query's :meth:`Gaussians.uncertainty` (mean log-variance; higher is more uncertain).

    Raises:
        TypeError: ``queries`` is not a :class:`Gaussians` batch.
        ValueError: If the ids do not match the Gaussians, or a value is not finite (naming the
            query index and id).

    Examples:
        >>> g = Gaussians(np.zeros((2, 2)), np.array([[1.0, 1.0], [np.e, np.e]]))
        >>> uncertainty_predictor(g, ["a", "b"])
        {'a': 0.0, 'b': 1.0}
    """
    _require_gaussians(queries, "queries")
    if len(queries) != len(query_ids):
        raise ValueError(f"{len(queries)} query Gaussians but {len(query_ids)} query ids")
    g = queries.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.asarray(g.uncertainty(), dtype=np.float64)
    _check_values("query uncertainty", query_ids, u)
    return {str(q): float(v) for q, v in zip(query_ids, u, strict=True)}


def corpus_mean_scores(queries: Gaussians, documents: Gaussians, *, means_only: bool = False) -> np.ndarray:
    """Each query's exact mean score over every document: the corpus-level reference score.

    For ``-KL`` this is ``<q~, mean_j d~_j> + c(q)`` (the inner-product rewrite, in float64);
    with ``means_only`` the mean of ``-||mu_q - mu_d||^2``.

    Returns:
        Shape ``(n_queries,)``.

    Examples:
        >>> q = Gaussians(np.zeros((1, 1)), np.ones((1, 1)))
        >>> d = Gaussians(np.array([[1.0], [3.0]]), np.ones((2, 1)))
        >>> corpus_mean_scores(q, d).tolist()  # -KL is -0.5 and -4.5
        [-2.5]
    """
    _require_gaussians(queries, "queries")
    _require_gaussians(documents, "documents")
    if queries.dim != documents.dim:
        raise ValueError(f"queries have dimension {queries.dim} but documents {documents.dim}")
    if len(documents) == 0:
        raise ValueError("the corpus is empty: no reference score")
    q = queries.numpy().astype(np.float64)
    d = documents.numpy().astype(np.float64)
    if means_only:
        mean_d = d.mean.mean(axis=0)
        sq_d = (d.mean**2).sum(axis=1).mean()
        return np.asarray(-((q.mean**2).sum(axis=1) - 2.0 * q.mean @ mean_d + sq_d))
    dv = np.asarray(kl_document_vectors(d)).mean(axis=0)
    return np.asarray(kl_query_vectors(q)) @ dv + np.asarray(kl_query_constant(q))


def gaussian_query_stats(
    queries: Gaussians, documents: Gaussians, query_ids: Sequence[str], *, means_only: bool = False
) -> dict[str, dict[str, float]]:
    """Per-query facts a Gaussian run offers the predictors: ``uncertainty`` and ``corpus_score``.

    Raises:
        ValueError: If a query's uncertainty or reference score is not finite (naming the query
            index and id).

    Examples:
        >>> g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
        >>> gaussian_query_stats(g, g, ["q"])
        {'uncertainty': {'q': 0.0}, 'corpus_score': {'q': 0.0}}
    """
    unc = uncertainty_predictor(queries, query_ids)
    ref = corpus_mean_scores(queries, documents, means_only=means_only)
    _check_values("corpus reference score", query_ids, ref)
    return {"uncertainty": unc, "corpus_score": {str(q): float(v) for q, v in zip(query_ids, ref, strict=True)}}


def run_mean_nqc_problem(run: Mapping[str, Mapping[str, float]]) -> str | None:
    """Why NQC is undefined for ``run`` with the run-mean reference; ``None`` when it is defined.

    With no corpus reference, NQC divides by the mean of each query's retrieved scores; that mean
    is a scale only when the query's scores have one sign (all >= 0 with a positive mean, or all
    <= 0 with a negative one). Scores of both signs can average to about 0 (``std / |mean|``
    then explodes, to ``inf`` at exactly 0), so one such query makes NQC meaningless for the run:
    the reason names how many queries and one of them. Queries without results are ignored.

    Examples:
        >>> run_mean_nqc_problem({"a": {"x": 3.0, "y": 1.0}, "b": {"x": -2.0, "y": -1.0}}) is None
        True
        >>> run_mean_nqc_problem({"a": {"x": 0.3, "y": -0.1, "z": -0.2}})  # doctest: +ELLIPSIS
        "NQC needs ... 1 of the 1 queries (e.g. 'a') ..."
    """
    bad: list[str] = []
    n = 0
    for qid, docs in run.items():
        s = np.fromiter((float(v) for v in docs.values()), dtype=np.float64, count=len(docs))
        if s.size == 0 or not np.isfinite(s).all():
            continue  # no value / refused by post_retrieval_predictors
        n += 1
        mean = float(s.mean())
        if not ((mean > 0.0 and s.min() >= 0.0) or (mean < 0.0 and s.max() <= 0.0)):
            bad.append(str(qid))
    if not bad:
        return None
    return (
        "NQC needs a reference score to divide by; without a corpus reference it is the mean of each query's "
        f"retrieved scores, and {len(bad)} of the {n} queries (e.g. {bad[0]!r}) have retrieved scores of both signs "
        "(or a mean of 0), whose mean is no scale (std / |mean| explodes near 0): NQC is left out for this run"
    )


def post_retrieval_predictors(
    run: Mapping[str, Mapping[str, float]],
    *,
    reference: Mapping[str, float] | None = None,
    nqc_k: int = NQC_K,
    wig_k: int = WIG_K,
) -> dict[str, dict[str, float]]:
    """``max_score``, ``nqc``, ``gap12`` and ``wig`` of each query from the run's own scores.

    Args:
        run: Query id -> {document id: score}; higher is better.
        reference: Query id -> corpus-level reference score (see the module doc); ``None``: the
            mean of the query's retrieved scores.
        nqc_k: Depth of the NQC score list.
        wig_k: Depth of the WIG score list.

    Returns:
        Predictor name -> {query id: value}; queries without results (and with one, for
        ``gap12``) are absent. Without a ``reference``, ``nqc`` is absent altogether when some
        query's retrieved scores cross 0 or average to 0 (:func:`run_mean_nqc_problem` says
        why; a warning is logged).

    Raises:
        ValueError: If a score, the reference or a predictor is not finite (naming the query
            index and id), or a reference is missing for a query.

    Examples:
        >>> out = post_retrieval_predictors({"q": {"a": 3.0, "b": 1.0}}, reference={"q": -1.0})
        >>> out["max_score"], out["gap12"], out["wig"], out["nqc"]
        ({'q': 3.0}, {'q': 2.0}, {'q': 3.0}, {'q': 1.0})
        >>> "nqc" in post_retrieval_predictors({"q": {"a": 1.0, "b": -1.0}})  # a mean of 0
        False
    """
    for name, value in (("nqc_k", nqc_k), ("wig_k", wig_k)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    no_nqc = run_mean_nqc_problem(run) if reference is None else None
    out: dict[str, dict[str, float]] = {name: {} for name in POST_RETRIEVAL if not (no_nqc and name == "nqc")}
    qids = [str(q) for q in run]
    empty = 0
    for i, (qid, docs) in enumerate(zip(qids, run.values(), strict=True)):
        s = np.sort(np.fromiter((float(v) for v in docs.values()), dtype=np.float64, count=len(docs)))[::-1]
        if s.size == 0:
            empty += 1
            continue
        if not np.isfinite(s).all():
            raise ValueError(f"query index {i} (id {qid!r}) has a retrieved score that is not finite; scores must be")
        if reference is None:
            ref = float(s.mean())
        else:
            if qid not in reference:
                raise ValueError(f"no reference score for query index {i} (id {qid!r})")
            ref = float(reference[qid])
        values = {
            "max_score": float(s[0]),
            "wig": float(s[:wig_k].mean()) - ref,
        }
        if no_nqc is None:
            values["nqc"] = float(s[:nqc_k].std()) / abs(ref) if ref != 0.0 else math.inf
        if s.size >= 2:
            values["gap12"] = float(s[0] - s[1])
        for name, v in values.items():
            if not math.isfinite(v):
                raise ValueError(
                    f"{name} of query index {i} (id {qid!r}) is {v} (reference score {ref}); it must be finite"
                )
            out[name][qid] = v
    if empty:
        logger.info("%d queries have no retrieved documents: no post-retrieval predictors for them", empty)
    if no_nqc:
        logger.warning("%s", no_nqc)
    return out


class LexicalStats:
    """Document frequencies and collection frequencies of a corpus, for IDF and SCQ.

    Args:
        corpus_texts: The documents (title and text joined, as the baselines index them).
        stopwords: Stop-word list; default bm25s' English list (as the BM25 baseline).

    Examples:
        >>> stats = LexicalStats(["the cat sat", "a dog barked", "the cat ran"], stopwords=["the", "a"])
        >>> stats.n_docs, stats.df["cat"], stats.cf["cat"]
        (3, 2, 2)
        >>> [round(v, 4) for v in stats.avg_idf(["cat dog", "unicorn"])]
        [0.7254, 0.0]
    """

    def __init__(self, corpus_texts: Sequence[str], *, stopwords: Sequence[str] | None = None) -> None:
        if stopwords is None:
            from bm25s.stopwords import STOPWORDS_EN

            stopwords = STOPWORDS_EN
        self._stop = frozenset(w.lower() for w in stopwords)
        self._pattern = re.compile(_TOKEN_PATTERN)
        self.n_docs = len(corpus_texts)
        if self.n_docs == 0:
            raise ValueError("the corpus is empty: no lexical statistics")
        df: dict[str, int] = {}
        cf: dict[str, int] = {}
        for text in corpus_texts:
            toks = self.tokens(text)
            for t in toks:
                cf[t] = cf.get(t, 0) + 1
            for t in set(toks):
                df[t] = df.get(t, 0) + 1
        self.df = df
        self.cf = cf

    def tokens(self, text: str) -> list[str]:
        """Lower-cased word tokens without stop words."""
        return [t for t in self._pattern.findall(text.lower()) if t not in self._stop]

    def _known(self, text: str) -> list[str]:
        return [t for t in self.tokens(text) if t in self.df]

    def idf(self, term: str) -> float:
        """BM25 (Lucene) IDF ``log(1 + (N - df + 0.5) / (df + 0.5))``."""
        df = self.df.get(term, 0)
        return math.log(1.0 + (self.n_docs - df + 0.5) / (df + 0.5))

    def scq(self, term: str) -> float:
        """SCQ ``(1 + log cf) * log(1 + N / df)`` (0 for a term outside the corpus)."""
        df = self.df.get(term, 0)
        if df == 0:
            return 0.0
        return (1.0 + math.log(self.cf[term])) * math.log(1.0 + self.n_docs / df)

    def _mean_over_terms(self, queries: Sequence[str], term_value: Callable[[str], float]) -> list[float]:
        """Mean ``term_value`` of each query's terms found in the corpus (0 when none is)."""
        known = [self._known(q) for q in queries]
        return [float(np.mean([term_value(t) for t in terms])) if terms else 0.0 for terms in known]

    def avg_idf(self, queries: Sequence[str]) -> list[float]:
        """Mean IDF of each query's terms found in the corpus (0 when none is)."""
        return self._mean_over_terms(queries, self.idf)

    def avg_scq(self, queries: Sequence[str]) -> list[float]:
        """Mean SCQ of each query's terms found in the corpus (0 when none is)."""
        return self._mean_over_terms(queries, self.scq)

    def predictors(self, query_ids: Sequence[str], query_texts: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{"avg_idf": {qid: value}, "scq": {qid: value}}``."""
        if len(query_ids) != len(query_texts):
            raise ValueError(f"{len(query_ids)} query ids but {len(query_texts)} query texts")
        ids = [str(q) for q in query_ids]
        return {
            "avg_idf": dict(zip(ids, self.avg_idf(query_texts), strict=True)),
            "scq": dict(zip(ids, self.avg_scq(query_texts), strict=True)),
        }


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _constant_reason(n: int, value: float, hint: str | None) -> str:
    why = f"constant ({value:.6g}) over the {n} judged queries that have a value: no correlation"
    return f"{why}; likely cause: {hint}" if hint else why


#: Why a predictor can be constant over every query (appended to the ``missing`` reason).
_CONSTANT_HINTS = {"uncertainty": "a model with fixed variances (e.g. unit variances)"}


def qpp_report(
    target: Mapping[str, float],
    predictors: Mapping[str, Mapping[str, float]],
    *,
    missing: Mapping[str, str] | None = None,
    metric: str = "ndcg@10",
    reference: str | None = None,
    directions: Mapping[str, int] | None = None,
    no_relevant: Collection[str] | None = None,
    no_relevant_warned: bool = False,
    constant_hints: Mapping[str, str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict[str, Any]:
    """Correlate each predictor with the per-query target metric.

    Args:
        target: Query id -> metric value (every judged query).
        predictors: Predictor name -> {query id: raw value}; names from :data:`PREDICTORS` are
            oriented by their direction, others by ``directions`` (default +1).
        missing: Predictor name -> why it is absent (reported under ``"missing"``).
        metric: Name of the target metric (reported).
        reference: How the reference score of NQC and WIG was obtained (reported).
        directions: Orientation (+1 or -1) of predictors outside :data:`PREDICTORS`, e.g. -1 for
            a disagreement that should be high on hard queries.
        no_relevant: Ids of judged queries without a relevant document (no grade > 0): left out
            of the target, counted under ``excluded_no_relevant``, with a warning. ``None``: not
            known (``excluded_no_relevant`` is ``None``).
        no_relevant_warned: The caller has already warned about the queries without a relevant document,
            saying that QPP leaves them out (``kl-retrievers evaluate`` does): their count is logged at INFO,
            not warned about a second time.
        constant_hints: Predictor name -> a likely cause, added to the reason when it is constant.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"metric", "bootstrap", "seed", "reference", "excluded_no_relevant", "too_few_queries",
        "predictors": {name: {"tau", "tau_ci", "pearson", "pearson_ci", "n", "bootstrap_valid", "kind",
        "direction"}}, "missing": {...}}``; a predictor is correlated over the judged queries that
        have a value for it (and a relevant document). ``too_few_queries`` is ``True`` when fewer than
        :data:`MIN_QUERIES` judged queries (with a relevant document) are left to correlate over: the
        warning that every correlation is meaningless, for a machine to read (a predictor's ``n``
        below :data:`MIN_QUERIES` says the same of that predictor). A predictor whose correlation is undefined
        (it, or the target, is constant over those queries) keeps its entry with ``None`` values
        and gets a reason under ``missing``.

    Warns:
        UserWarning: Fewer than :data:`MIN_QUERIES` queries in the target, or with a value of
            some predictor; queries left out for having no relevant document (logged at INFO with
            ``no_relevant_warned``); a predictor whose
            bootstrap resamples are too often undefined for an interval.

    Raises:
        ValueError: If a predictor value is not finite (naming the query index and id).

    Examples:
        >>> ndcg = {f"q{i}": i / 10 for i in range(10)}
        >>> rep = qpp_report(ndcg, {"max_score": {q: 2 * v for q, v in ndcg.items()}}, n_boot=0)
        >>> round(rep["predictors"]["max_score"]["tau"], 6), rep["predictors"]["max_score"]["n"]
        (1.0, 10)
    """
    excluded = None if no_relevant is None else {str(q) for q in no_relevant}
    qids = [str(q) for q in target if excluded is None or str(q) not in excluded]
    n_excluded = None if excluded is None else sum(1 for q in target if str(q) in excluded)
    y_all = {q: float(target[q]) for q in qids}
    out: dict[str, Any] = {
        "metric": metric,
        "bootstrap": n_boot,
        "seed": seed,
        "reference": reference,
        "excluded_no_relevant": n_excluded,
        "too_few_queries": len(qids) < MIN_QUERIES,
        "predictors": {},
        "missing": dict(missing or {}),
    }
    if n_excluded:
        excluded_note = (
            f"{n_excluded} of the {len(target)} judged queries {'has' if n_excluded == 1 else 'have'} no relevant "
            f"document (no grade > 0): {'its' if n_excluded == 1 else 'their'} {metric} is undefined (the metric "
            f"means score it 0); {'it is' if n_excluded == 1 else 'they are'} left out of the QPP correlations"
        )
        if no_relevant_warned:
            logger.info("%s", excluded_note)
        else:
            warn(excluded_note)
    if len(qids) < MIN_QUERIES:
        # one warning for the whole report (the per-predictor ones are silenced below)
        warn(
            f"only {len(qids)} judged quer{'y' if len(qids) == 1 else 'ies'}"
            f"{' with a relevant document' if n_excluded else ''} (fewer than "
            f"{MIN_QUERIES}): the QPP correlations are meaningless; they are computed anyway"
        )
    few: list[str] = []
    no_interval: list[str] = []
    hints = {**_CONSTANT_HINTS, **dict(constant_hints or {})}
    for name, values in predictors.items():
        info = PREDICTORS.get(name, {"kind": "other", "direction": int((directions or {}).get(name, 1))})
        if info["direction"] not in (1, -1):
            raise ValueError(f"the direction of {name!r} must be +1 or -1; got {info['direction']!r}")
        shared = [q for q in qids if q in values]
        x = np.array([float(values[q]) for q in shared], dtype=np.float64)
        if not np.isfinite(x).all():
            q = shared[int(np.flatnonzero(~np.isfinite(x))[0])]
            raise ValueError(f"{name} of query index {qids.index(q)} (id {q!r}) is {values[q]}; it must be finite")
        if len(shared) < 2:
            out["missing"][name] = (
                f"only {len(shared)} judged {'query has' if len(shared) == 1 else 'queries have'} a value"
            )
            continue
        if len(shared) < MIN_QUERIES <= len(qids):
            few.append(f"{name} ({len(shared)})")
        y = np.array([y_all[q] for q in shared], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = correlation(info["direction"] * x, y, n_boot=n_boot, seed=seed)
        res.update(kind=info["kind"], direction=info["direction"])
        out["predictors"][name] = res
        if res["tau"] is None or res["pearson"] is None:
            if np.all(x == x[0]):
                out["missing"][name] = _constant_reason(len(shared), float(x[0]), hints.get(name))
            elif np.all(y == y[0]):
                out["missing"][name] = (
                    f"{metric} is constant ({y[0]:.6g}) over the {len(shared)} judged queries that have a value: "
                    "no correlation"
                )
        elif n_boot > 0 and res["tau_ci"] is None:
            no_interval.append(f"{name} ({res['bootstrap_valid']} of {n_boot})")
    if few:
        warn(
            f"fewer than {MIN_QUERIES} judged queries have a value of {', '.join(few)}: "
            "those correlations are meaningless; they are computed anyway"
        )
    if no_interval:
        warn(
            f"too few bootstrap resamples with a defined correlation (under {MIN_BOOT_VALID:.0%}) for an "
            f"interval: {', '.join(no_interval)} (few queries, or a nearly constant predictor or target)"
        )
    return out


def qpp_for_run(
    run: Mapping[str, Mapping[str, float]],
    per_query: Mapping[str, Mapping[str, float]],
    *,
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    corpus_texts: Sequence[str] | None = None,
    query_stats: Mapping[str, Mapping[str, float]] | None = None,
    missing_uncertainty: str | None = None,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    no_relevant_warned: bool = False,
    depth: int | None = None,
    metric: str = "ndcg@10",
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Every predictor of one evaluated run, and the report against its per-query metric.

    Args:
        run: The evaluated run (the score lists the post-retrieval predictors read).
        per_query: Query id -> {metric: value}, as from :func:`~kl_retrievers.evaluation.evaluate_run`.
        query_ids: The split's query ids.
        query_texts: Their texts (for the lexical predictors).
        corpus_texts: The corpus (for the lexical predictors; ``None``: they are missing).
        query_stats: From :func:`gaussian_query_stats` (``uncertainty`` and ``corpus_score``);
            ``None`` for a run without Gaussians.
        missing_uncertainty: Why the uncertainty is absent, when ``query_stats`` is ``None``.
        qrels: The judgements of ``per_query``: queries without a grade > 0 are left out of the
            target (see :func:`qpp_report`); ``None``: every query counts.
        no_relevant_warned: As in :func:`qpp_report`: the caller has already warned about those queries.
        depth: Documents retrieved per query (the length of ``run``'s lists asked for); ``None``:
            the longest list in ``run``. Recorded, with the ``k`` that NQC and WIG used; below
            :data:`NQC_K` a warning says NQC (and a baseline's reference) read fewer scores.
        metric: Target metric.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``(report, values)``: the :func:`qpp_report` (plus ``"depth"``, ``"nqc_k"`` and
        ``"wig_k"``) and predictor name -> {query id: raw value}.
    """
    longest = max((len(docs) for docs in run.values()), default=0)
    if depth is None:
        depth = longest
    elif not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth must be an int >= 1; got {depth!r}")
    used = max(1, min(depth, longest)) if longest else max(1, depth)
    nqc_k, wig_k = min(NQC_K, used), min(WIG_K, used)
    values: dict[str, dict[str, float]] = {}
    missing: dict[str, str] = {}
    stats = dict(query_stats or {})
    if "uncertainty" in stats:
        values["uncertainty"] = dict(stats["uncertainty"])
    else:
        missing["uncertainty"] = missing_uncertainty or "the run comes from a model without variances"
    reference = stats.get("corpus_score")
    if 0 < depth < NQC_K:  # (a run without any retrieved document has no score-based predictor)
        ref_note = (
            "" if reference is not None else f", and the reference score of NQC and WIG is the mean of those {depth}"
        )
        warn(
            f"the run retrieves {depth} documents per query, fewer than NQC's {NQC_K}: NQC reads the top {depth} "
            f"scores only{ref_note}; nqc and wig are not comparable with runs of depth >= {NQC_K}"
        )
    values.update(post_retrieval_predictors(run, reference=reference, nqc_k=nqc_k, wig_k=wig_k))
    if "nqc" not in values:  # the run-mean reference is no scale for this run's scores
        missing["nqc"] = run_mean_nqc_problem(run) or "no NQC value"
    if corpus_texts is not None:
        values.update(LexicalStats(corpus_texts).predictors(query_ids, query_texts))
    else:
        missing["avg_idf"] = missing["scq"] = "no corpus texts were given"
    target = {q: float(m[metric]) for q, m in per_query.items()}
    no_relevant = None
    if qrels is not None:
        no_relevant = [q for q in target if not any(int(g) > 0 for g in qrels.get(q, {}).values())]
    hints: dict[str, str] = {}
    if used == 1:
        hints["nqc"] = "one retrieved score per query (depth 1), whose standard deviation is 0"
    if reference is None and used <= WIG_K:
        hints["wig"] = (
            f"at depth <= {WIG_K} WIG's top {WIG_K} are all the retrieved scores, whose mean is its reference"
        )
    ref_label = "corpus_mean_score" if reference is not None else "retrieved_mean_score"
    report = qpp_report(
        target,
        values,
        missing=missing,
        metric=metric,
        reference=ref_label,
        no_relevant=no_relevant,
        no_relevant_warned=no_relevant_warned,
        constant_hints=hints,
        n_boot=n_boot,
        seed=seed,
    )
    report = {
        **{k: v for k, v in report.items() if k not in ("predictors", "missing")},
        "depth": depth,
        "nqc_k": nqc_k,
        "wig_k": wig_k,
        "predictors": report["predictors"],
        "missing": report["missing"],
    }
    return report, values


def fitted_predictor(values: Mapping[str, Mapping[str, float]], model: Any) -> dict[str, float]:
    """A fitted combination of predictors, e.g. the combined predictor of ``runs/qpp/combined_predictor.json``.

    Args:
        values: Predictor name -> {query id: raw value}, as :func:`qpp_for_run` returns them.
        model: A fitted :class:`kl_retrievers.calibration.ConfidenceCalibrator` whose features are
            predictor names (``uncertainty``, ``max_score``, ``nqc``, ``gap12``, ``wig``).

    Returns:
        Query id -> the model's output, for every query that has a value of each feature.

    Raises:
        ValueError: A feature of the model that is not among ``values``.

    Examples:
        >>> from kl_retrievers.calibration import ConfidenceCalibrator
        >>> m = ConfidenceCalibrator(["gap12"]).fit([[0.0], [1.0]], [0.0, 1.0])
        >>> out = fitted_predictor({"gap12": {"a": 0.0, "b": 1.0}, "nqc": {"a": 1.0}}, m)
        >>> out["a"] < out["b"]
        True
    """
    missing = [n for n in model.features if n not in values]
    if missing:
        raise ValueError(f"the model needs predictor(s) {missing}; the run has {sorted(values)}")
    qids = [q for q in values[model.features[0]] if all(q in values[n] for n in model.features)]
    if not qids:
        return {}
    x = np.array([[values[n][q] for n in model.features] for q in qids], dtype=np.float64)
    return dict(zip(qids, model.predict(x).tolist(), strict=True))


def per_query_with_predictors(
    per_query: Mapping[str, Mapping[str, float]], values: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Each query's metrics plus its raw predictor values, for a per-query file.

    The uncertainty keeps its own name; every other predictor is written as ``qpp.<name>``.

    Examples:
        >>> per_query_with_predictors({"q": {"ndcg@10": 0.5}}, {"uncertainty": {"q": 0.1}, "gap12": {}})
        {'q': {'ndcg@10': 0.5, 'uncertainty': 0.1}}
    """
    return {
        qid: {**m, **{(n if n == "uncertainty" else f"qpp.{n}"): v[qid] for n, v in values.items() if qid in v}}
        for qid, m in per_query.items()
    }


def format_qpp(report: Mapping[str, Any]) -> str:
    """A short text table of a :func:`qpp_report` (or :func:`qpp_for_run` report).

    A predictor without a correlation (constant over its queries) is listed once, under ``missing``
    with the reason; the report keeps its entry under ``predictors`` too (with ``None`` values). A predictor
    correlated negated (direction -1: higher means a harder query, as ``uncertainty``) is listed as ``-name``,
    with a last line saying so: its tau and r are those of the negated values, the opposite sign of a
    correlation of the raw values (a ``--per-query`` file's column).

    Examples:
        >>> ndcg = {f"q{i}": i / 10 for i in range(10)}
        >>> rep = qpp_report(ndcg, {"gap12": ndcg}, missing={"x": "why"}, n_boot=0)
        >>> print(format_qpp(rep))  # doctest: +NORMALIZE_WHITESPACE
        QPP against ndcg@10 (Kendall tau-b, Pearson r; 95% bootstrap intervals, 0 resamples):
          gap12        tau +1.000 [   n/a]  r +1.000 [   n/a]  n = 10
          x            missing: why
        >>> rep = qpp_report(ndcg, {"uncertainty": {q: -v for q, v in ndcg.items()}}, n_boot=0)
        >>> print(format_qpp(rep))  # doctest: +NORMALIZE_WHITESPACE
        QPP against ndcg@10 (Kendall tau-b, Pearson r; 95% bootstrap intervals, 0 resamples):
          -uncertainty tau +1.000 [   n/a]  r +1.000 [   n/a]  n = 10
          -name: correlated negated (higher predicts a harder query); the raw values correlate with the opposite sign
    """

    def num(v: Any) -> str:
        return "   n/a" if v is None else f"{v:+.3f}"

    def ci(v: Any) -> str:
        return "[   n/a]" if v is None else f"[{v[0]:+.3f}, {v[1]:+.3f}]"

    n_boot = report["bootstrap"]
    lines = [f"QPP against {report['metric']} (Kendall tau-b, Pearson r; 95% bootstrap intervals, {n_boot} resamples):"]
    if report.get("depth") is not None:
        lines.append(
            f"  run depth {report['depth']}: NQC reads the top {report['nqc_k']} scores, WIG the top "
            f"{report['wig_k']}; reference score: {report.get('reference')}"
        )
    if report.get("excluded_no_relevant"):
        n_out = report["excluded_no_relevant"]
        lines.append(f"  {n_out} judged quer{'y' if n_out == 1 else 'ies'} without a relevant document left out")
    missing = report.get("missing", {})
    negated = False
    for name, r in report["predictors"].items():
        if name in missing:  # no correlation (a constant predictor or target): listed once, with the reason
            continue
        valid = r.get("bootstrap_valid")
        note = f"  ({valid} of {n_boot} resamples defined)" if n_boot and valid is not None and valid < n_boot else ""
        if r.get("direction") == -1:  # correlated as -values: say so, or the sign reads as the raw values'
            name, negated = f"-{name}", True
        lines.append(
            f"  {name:<12} tau {num(r['tau'])} {ci(r['tau_ci'])}  r {num(r['pearson'])} {ci(r['pearson_ci'])}  "
            f"n = {r['n']}{note}"
        )
    for name, why in missing.items():
        lines.append(f"  {name:<12} missing: {why}")
    if negated:
        lines.append(
            "  -name: correlated negated (higher predicts a harder query); the raw values correlate with the "
            "opposite sign"
        )
    return "\n".join(lines)
