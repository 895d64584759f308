"""Evaluating retrievers: metrics, paired significance tests, exact -KL retrieval, whole evaluations.

A library module in one-way layers: it builds on :mod:`kl_retrievers.runs` (runs, top-k) and
:mod:`kl_retrievers.encoding_cache`, as :mod:`kl_retrievers.baselines` does beside it; the
``kl-retrievers evaluate`` command sits on top of both in :mod:`kl_retrievers.evaluate_cli`.

A *run* maps each query id to ``{document id: score}`` (higher is better); *qrels* map
each query id to ``{document id: relevance grade}``.  Metrics are computed with
``ir_measures`` and reported under these names:

======================  =======================
reported name           ir_measures measure
======================  =======================
``ndcg@10``             ``nDCG@10``
``mrr@10``              ``RR@10``
``recall@100``          ``R@100``
``map@100``             ``AP@100``
======================  =======================

Every query in the qrels counts (a query missing from the run scores 0, like
``trec_eval -c``). The binary measures (``mrr@10``, ``recall@100``, ``map@100``) count a document as
relevant when its grade is at least ``relevance_level``: 1 by default (any grade > 0, ``trec_eval``'s
default ``-l 1``); TREC DL's convention for its 0-3 grades is 2 (grade 1 is "related", not relevant), as
``trec_eval -l 2`` and ir_measures' ``AP(rel=2)@100``. ``ndcg@10`` reads the grades themselves.

Tied scores are ranked by document id, descending (:func:`evaluate_run`), the order of ``trec_eval`` and
``pytrec_eval``, in which :func:`write_trec_run` writes a run file: ``trec_eval -c`` (``ndcg_cut.10``,
``recall.100``, ``map_cut.100``), ``pytrec_eval`` and ir_measures' ``nDCG@10``, ``R@100`` and ``AP@100``
(computed by its pytrec_eval provider) read from the file the ``ndcg@10``, ``recall@100`` and ``map@100``
reported here. ``mrr@10`` is reciprocal rank cut at 10: ``trec_eval``'s ``recip_rank`` has no cutoff, and
ir_measures' ``RR@10`` (its msmarco provider) orders tied documents by id ascending, so on a file whose
documents tied with a relevant one reach the top 10 it can give another value (a file of rank-derived,
never tied scores, as ``kl-retrievers evaluate --hybrid --save-run`` writes, gives the same).

Examples:
    >>> from kl_retrievers.evaluation import evaluate_run
    >>> qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d2": 2.0, "d3": 1.0}}
    >>> agg, per_query = evaluate_run(qrels, run)
    >>> agg["mrr@10"], per_query["q2"]["mrr@10"]
    (0.75, 0.5)
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import os
import re
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

import numpy as np

from kl_retrievers._config import SIMILARITIES as SIMILARITIES  # re-exported: it was defined here
from kl_retrievers._config import Similarity
from kl_retrievers._config import model_similarity as model_similarity
from kl_retrievers._encoding import (
    _BLANK_POSITIONS_SHOWN,
    blank_positions,
    blank_warning_suppressed,
    progress_bar,
    require_modules,
)
from kl_retrievers._io import atomic_file
from kl_retrievers._io import finite_json as finite_json  # re-exported: it was defined here
from kl_retrievers._warn import warn
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.encoding_cache import CACHE_ENV as CACHE_ENV  # re-exported, like the cache and run names
from kl_retrievers.encoding_cache import EncodingCache, default_cache_dir
from kl_retrievers.encoding_cache import model_fingerprint as model_fingerprint  # re-exported: it was defined here
from kl_retrievers.gaussian import Gaussians, _require_gaussians, check_float32_scorable, check_k, exact_top_k
from kl_retrievers.runs import (
    Qrels,
    Run,
    _check_str_ids,
    _run_rows,
    check_unique_ids,
    inner_product_run,
    tie_ranks,
    top_k,
)
from kl_retrievers.runs import run_from_top_k as run_from_top_k  # re-exported: it was importable here

if TYPE_CHECKING:
    # typing.Unpack is Python 3.11+; type checkers read typing_extensions (typeshed ships it) on 3.10 too
    from typing_extensions import Unpack

    # the names moved to the command line's module, loaded on first use by ``__getattr__`` (hidden from type
    # checkers, so that they flag a typo such as ``evaluate_modle``)
    from kl_retrievers.evaluate_cli import add_evaluate_command as add_evaluate_command
    from kl_retrievers.evaluate_cli import run_evaluate as run_evaluate

__all__ = [
    "Run",
    "Qrels",
    "METRICS",
    "DEFAULT_METRICS",
    "evaluate_run",
    "check_relevance_level",
    "PairedTestResult",
    "paired_test",
    "WilcoxonResult",
    "wilcoxon_test",
    "holm_adjust",
    "top_k",
    "retrieve_exact",
    "retrieve_vectors",
    "SIMILARITIES",
    "model_similarity",
    "EncodingCache",
    "default_cache_dir",
    "model_fingerprint",
    "encode_dataset",
    "GaussianEncoderLike",
    "EvaluationResult",
    "EncodeOptions",
    "evaluate_model",
    "ShallowRunWarning",
    "save_per_query",
    "load_per_query",
    "PER_QUERY_SUFFIXES",
    "per_query_path_problem",
    "write_trec_run",
    "check_trec_ids",
]

#: Names that moved to :mod:`kl_retrievers.evaluate_cli` (the command line sits on top of this
#: module); still importable from here, loaded on first use by :func:`__getattr__`.
_MOVED_TO_CLI = ("add_evaluate_command", "run_evaluate")

logger = logging.getLogger(__name__)

#: Reported metric name -> ir_measures measure string.
METRICS: dict[str, str] = {
    "ndcg@10": "nDCG@10",
    "mrr@10": "RR@10",
    "recall@100": "R@100",
    "map@100": "AP@100",
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)
#: The reported metrics that are binary: they count a document as relevant when its grade is at least the
#: relevance level (``relevance_level=`` of :func:`evaluate_run`); ``ndcg@10`` reads the grades.
BINARY_METRICS: tuple[str, ...] = ("mrr@10", "recall@100", "map@100")
#: The default relevance level: any grade > 0 counts as relevant (``trec_eval``'s default ``-l 1``; the
#: published figures). TREC DL's convention is 2.
DEFAULT_RELEVANCE_LEVEL = 1


if not TYPE_CHECKING:  # type checkers see the names imported above, and flag any other (a typo) as an error

    def __getattr__(name: str) -> Any:
        """``add_evaluate_command`` and ``run_evaluate``, from :mod:`kl_retrievers.evaluate_cli` (PEP 562).

        A deferred re-export: the command line imports this module, so this module imports it only
        when one of its old names is asked for.

        Examples:
            >>> from kl_retrievers.evaluation import run_evaluate
            >>> run_evaluate.__module__
            'kl_retrievers.evaluate_cli'
        """
        if name in _MOVED_TO_CLI:
            from kl_retrievers import evaluate_cli

            return getattr(evaluate_cli, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _require_ir_measures(what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming ``pip install "kl-retrievers[eval]"`` when ir_measures is missing."""
    require_modules(what, ["ir_measures"], "eval", packages={"ir_measures": "ir-measures"})


#: ir_measures' spellings of the reported metrics, lower-cased (``ndcg@10``, ``rr@10``, ``r@100``, ``ap@100``).
_IR_MEASURES_NAMES: dict[str, str] = {measure.lower(): name for name, measure in METRICS.items()}


def _metric_names(metrics: str | Iterable[str]) -> list[str]:
    """The reported names of ``metrics``: one name (a bare string) or several, in order, repeats dropped.

    A bare string is one metric (``"ndcg@10"``), as ``ranx.evaluate`` takes one, not the letters of a
    sequence. Names are matched case-insensitively, and ir_measures' spelling of a reported metric
    (``nDCG@10``, ``RR@10``, ``R@100``, ``AP@100``: the table in the module docstring) names it too; the
    results are keyed by the reported name (``ndcg@10``).

    Raises:
        ValueError: An unknown metric, or none (naming it and the reported names).
        TypeError: ``metrics`` is neither a string nor an iterable of strings (``None``, ``b"ndcg@10"``).

    Examples:
        >>> _metric_names("ndcg@10"), _metric_names(["nDCG@10", "R@100", "ndcg@10"])
        (['ndcg@10'], ['ndcg@10', 'recall@100'])
        >>> _metric_names(["P@10"])
        Traceback (most recent call last):
        ValueError: unknown metric 'P@10'; choose from ['map@100', 'mrr@10', 'ndcg@10', 'recall@100'] ...
    """
    allowed = f"{sorted(METRICS)} (any case; ir_measures' {', '.join(METRICS.values())} name them too)"
    if isinstance(metrics, (bytes, bytearray)) or not isinstance(metrics, (str, Iterable)):
        raise TypeError(f"metrics must be a metric name or a sequence of names, not {metrics!r}; choose from {allowed}")
    out: list[str] = []
    for name in [metrics] if isinstance(metrics, str) else metrics:
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a str, not {name!r}; choose from {allowed}")
        key = name.lower()
        reported = key if key in METRICS else _IR_MEASURES_NAMES.get(key)
        if reported is None:
            raise ValueError(f"unknown metric {name!r}; choose from {allowed}")
        if reported not in out:
            out.append(reported)
    if not out:
        raise ValueError(f"no metric given (metrics={metrics!r}); choose at least one of {allowed}")
    return out


def metric_cutoff(name: str) -> int | None:
    """The rank cutoff of a reported metric (``10`` of ``ndcg@10``), ``None`` when it has none.

    Examples:
        >>> metric_cutoff("recall@100"), metric_cutoff("ndcg@10")
        (100, 10)
    """
    _, _, cutoff = METRICS.get(name, name).partition("@")
    return int(cutoff) if cutoff.isdigit() else None


class ShallowRunWarning(UserWarning):
    """A run shallower than a reported metric's cutoff: :func:`evaluate_model` with ``k=10`` and ``recall@100``.

    That metric counts a document ranked past ``k`` as not retrieved, so it is not comparable with figures at
    the default depth 100; the metrics are computed anyway. Silence it for a deliberately shallow run with
    ``warnings.simplefilter("ignore", ShallowRunWarning)`` (in a ``warnings.catch_warnings()`` block).
    """


def _depth_warning(depth: int, metrics: Iterable[str], option: str = "k", n_docs: int | None = None) -> str | None:
    """The warning for a retrieval depth below the cutoff of some reported metrics (``None``: none is).

    One text for :func:`evaluate_model` (``option="k"``: ``k=50``) and ``kl-retrievers evaluate``
    (``option="--depth"``: ``--depth 50``). ``None`` too when ``depth`` reaches ``n_docs``, the number of
    documents in the corpus: the run then holds every document, as deep a run would.

    Examples:
        >>> _depth_warning(100, ["ndcg@10", "recall@100"]) is None
        True
        >>> _depth_warning(10, ["recall@100"], n_docs=10) is None  # the run holds the whole corpus
        True
        >>> print(_depth_warning(50, ["ndcg@10", "recall@100"]))  # doctest: +ELLIPSIS
        k=50 is below the cutoff of recall@100: ... a run of 50 documents per query ...
        >>> print(_depth_warning(50, ["ndcg@10", "recall@100"], "--depth"))  # doctest: +ELLIPSIS
        --depth 50 is below the cutoff of recall@100: ...
    """
    if n_docs is not None and depth >= n_docs:
        return None
    short = [name for name in metrics if (cutoff := metric_cutoff(name)) is not None and depth < cutoff]
    if not short:
        return None
    shown = f"{option} {depth}" if option.startswith("-") else f"{option}={depth}"
    return (
        f"{shown} is below the cutoff of {', '.join(short)}: {'it is' if len(short) == 1 else 'they are'} "
        f"computed on a run of {depth} documents per query (a document ranked past {depth} counts as not retrieved), "
        "not comparable with figures at the default depth 100"
    )


def check_relevance_level(relevance_level: Any) -> int:
    """``relevance_level`` as an ``int`` >= 1: the lowest grade a binary metric counts as relevant.

    Raises:
        TypeError: Not an integer (``2.0``, ``"2"``, ``True``), naming it.
        ValueError: Below 1 (grade 0 is "not relevant" in every qrels), naming it.

    Examples:
        >>> check_relevance_level(2)
        2
        >>> check_relevance_level(0)
        Traceback (most recent call last):
        ValueError: relevance_level must be an integer >= 1 (the lowest grade counted as relevant by mrr@10, ...
    """
    allowed = (
        f"an integer >= 1 (the lowest grade counted as relevant by {', '.join(BINARY_METRICS)}; "
        f"default {DEFAULT_RELEVANCE_LEVEL}, TREC DL's convention 2)"
    )
    if isinstance(relevance_level, bool) or not hasattr(relevance_level, "__index__"):
        raise TypeError(f"relevance_level must be {allowed}; got {relevance_level!r}")
    level = int(relevance_level.__index__())
    if level < 1:
        raise ValueError(f"relevance_level must be {allowed}; got {level}")
    return level


def _measure(name: str, relevance_level: int = DEFAULT_RELEVANCE_LEVEL) -> Any:
    """The ir_measures measure of a reported metric; a binary one at ``relevance_level`` (``AP(rel=2)@100``).

    Examples:
        >>> str(_measure("map@100", 2)), str(_measure("ndcg@10", 2)), str(_measure("mrr@10"))
        ('AP(rel=2)@100', 'nDCG@10', 'RR@10')
    """
    import ir_measures

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRICS)}")
    spec = METRICS[name]
    if name in BINARY_METRICS and relevance_level != DEFAULT_RELEVANCE_LEVEL:
        measure, cutoff = spec.split("@")
        spec = f"{measure}(rel={relevance_level})@{cutoff}"
    return ir_measures.parse_measure(spec)


def _check_id_collisions(ids: Iterable[Any], where: str, consequence: str) -> None:
    """Refuse ids that are one id as text (``1`` and ``"1"``): runs, qrels and TREC files compare ids as ``str``.

    ``where``: what holds the ids, for the message (``"run: query 'q', document"``); ``consequence``: what
    would happen to them.

    Examples:
        >>> _check_id_collisions({"a": 1, "b": 2}, "run: query", "merged")
        >>> _check_id_collisions({1: 0.5, "1": 2.0}, "run: query 'q', document", "merged")
        Traceback (most recent call last):
        ValueError: run: query 'q', document ids 1 and '1' are one id as text ('1'): ids are compared as str, ...
    """
    if isinstance(ids, Mapping) and all(type(key) is str for key in ids):
        return  # distinct str keys of a mapping (almost every run): none can collide
    seen: dict[str, Any] = {}
    for key in ids:
        text = str(key)
        if text in seen:
            raise ValueError(
                f"{where} ids {seen[text]!r} and {key!r} are one id as text ({text!r}): ids are compared as str, "
                f"so the two would be {consequence}; give each a distinct id"
            )
        seen[text] = key


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    *,
    relevance_level: int = DEFAULT_RELEVANCE_LEVEL,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score a run against qrels.

    Each query's documents are ranked by score, higher first, and **tied scores by document id
    descending** (``"b"`` before ``"a"``): the rule of ``trec_eval`` and ``pytrec_eval``, so a
    TREC file of the run (:func:`write_trec_run`) gives the same nDCG, recall and AP under ``trec_eval``.
    Every metric reads that one ranking (the scores handed to ``ir_measures`` are ``n - rank``; left
    to itself, its RR provider broke ties the other way from its nDCG and AP provider, so ir_measures'
    ``RR@10`` of the file can differ from ``mrr@10`` where tied documents reach the top 10: see the module
    notes).

    Args:
        qrels: Query id -> {document id: grade}.
        run: Query id -> {document id: score}; higher is better.
        metrics: Reported metric names (keys of :data:`METRICS`), or one name as a bare string
            (``"ndcg@10"``); any case, and ir_measures' spellings (``nDCG@10``, ``R@100``) name them too,
            reported under the names of :data:`METRICS`.
        relevance_level: The lowest grade the binary metrics (``mrr@10``, ``recall@100``, ``map@100``:
            :data:`BINARY_METRICS`) count as relevant: 1 (the default, ``trec_eval``'s ``-l 1``: any grade > 0)
            or higher; TREC DL's convention for its 0-3 grades is 2 (ir_measures' ``AP(rel=2)@100``,
            ``trec_eval -l 2``). ``ndcg@10`` reads the grades and does not depend on it.

    Returns:
        ``(aggregate, per_query)``: the mean of each metric over every query in ``qrels``,
        and query id -> {metric: value} for every query in ``qrels`` (0 when the query is
        missing from the run, or has no judged document). Run queries without judgements are
        ignored.

    Raises:
        ValueError: Empty qrels, an unknown metric, a grade that is not an integer (``0.5``; ``1.0``
            is taken as ``1``) or a NaN score (naming the query and document), ``relevance_level`` below 1, or
            two query ids (of the qrels or the run) or two document ids of one query that are one id as text
            (``1`` and ``"1"``: ids are compared as ``str``), naming them.
        TypeError: ``relevance_level`` is not an integer.
        ModuleNotFoundError: ir_measures is not installed (the ``eval`` extra; the message says how).

    Examples:
        >>> agg, _ = evaluate_run({"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}, ["ndcg@10"])
        >>> round(agg["ndcg@10"], 4)
        0.6309
        >>> _, per_query = evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}, ["mrr@10"])
        >>> per_query["q"]["mrr@10"]  # tied with "a", "b" ranks first
        0.5
        >>> graded = {"q": {"a": 1, "b": 2}}
        >>> evaluate_run(graded, {"q": {"a": 2.0, "b": 1.0}}, "mrr@10", relevance_level=2)[0]  # "a" is grade 1
        {'mrr@10': 0.5}
    """
    _require_ir_measures("evaluate_run (scoring a run)")
    import ir_measures

    metrics = _metric_names(metrics)
    relevance_level = check_relevance_level(relevance_level)
    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate")
    measures = {name: _measure(name, relevance_level) for name in metrics}
    by_measure = {str(m): name for name, m in measures.items()}
    _check_id_collisions(qrels, "qrels: query", "merged")
    _check_id_collisions(run, "run: query", "merged")
    for what, given in (("qrels", qrels), ("run", run)):
        for qid, docs in given.items():
            _check_id_collisions(docs, f"{what}: query {qid!r}, document", "merged")
    q = {str(qid): {str(d): _grade(qid, d, r) for d, r in docs.items()} for qid, docs in qrels.items()}
    r = {str(qid): _rank_scores(str(qid), docs) for qid, docs in run.items() if str(qid) in q}
    extra = len(run) - len(r)
    if extra:
        ignored = "query has no judgements and is" if extra == 1 else "queries have no judgements and are"
        logger.warning("%d run %s ignored", extra, ignored)
    missing = len(q) - sum(1 for qid in q if r.get(qid))
    if missing:
        scored = (
            "query has no results in the run; it scores"
            if missing == 1
            else "queries have no results in the run; they score"
        )
        logger.warning("%d judged %s 0", missing, scored)
    per_query: dict[str, dict[str, float]] = {qid: {name: 0.0 for name in metrics} for qid in q}
    if r:
        for m in ir_measures.iter_calc(list(measures.values()), q, r):
            per_query[m.query_id][by_measure[str(m.measure)]] = float(m.value)
    aggregate = {name: float(np.mean([per_query[qid][name] for qid in q])) for name in metrics}
    return aggregate, per_query


def _grade(qid: Any, doc: Any, grade: Any) -> int:
    """A qrels grade as an ``int``: integers and integral numbers (``1.0``, ``"2"``) pass; ``0.5`` is refused.

    Examples:
        >>> _grade("q", "d", 1.0), _grade("q", "d", "2")
        (1, 2)
        >>> _grade("q", "d", 0.5)
        Traceback (most recent call last):
        ValueError: qrels: query 'q', document 'd': grade 0.5 is not an integer grade
    """
    try:
        value = int(grade)
        whole = isinstance(grade, str) or value == grade
    except (TypeError, ValueError, OverflowError):  # "0.5", None, NaN, inf
        whole = False
    if not whole:
        shown = repr(grade) if isinstance(grade, str) else str(grade)  # 0.5, not np.float64(0.5)
        raise ValueError(f"qrels: query {qid!r}, document {doc!r}: grade {shown} is not an integer grade")
    return value


def _rank_scores(qid: str, docs: Mapping[str, float]) -> dict[str, float]:
    """One query's run as ``n - rank`` scores: by score descending, tied scores by doc id descending.

    Examples:
        >>> _rank_scores("q", {"a": 1.0, "b": 1.0, "c": 3.0})
        {'c': 3.0, 'b': 2.0, 'a': 1.0}
    """
    scored = [(float(s), str(d)) for d, s in docs.items()]
    for s, d in scored:
        if math.isnan(s):
            raise ValueError(f"run query {qid!r}: document {d!r} has a NaN score; scores must be numbers")
    scored.sort(reverse=True)
    n = len(scored)
    return {d: float(n - i) for i, (_, d) in enumerate(scored)}


# --------------------------------------------------------------------------------------
# Paired significance test
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of a two-sided paired t-test between two systems on the same queries.

    Attributes:
        metric: The metric compared.
        n: Number of queries both systems were scored on.
        mean_a: Mean of system A.
        mean_b: Mean of system B.
        mean_diff: ``mean_a - mean_b`` (per-query differences below :data:`DIFF_TOLERANCE` counted as 0).
        t_statistic: The t statistic (``inf``/``-inf`` when every difference is the same non-zero value;
            ``0`` when every difference is zero, float rounding included: see :func:`paired_test`).
        p_value: Two-sided p-value.
        method: ``"paired t-test (scipy)"`` or ``"paired t-test (builtin)"``: which t distribution gave
            the p-value; ``"paired t-test (no variation)"`` when the differences do not vary (all 0, or
            one value throughout) and ``t``, ``p`` follow without one.
    """

    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    t_statistic: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite t written as a string)."""
        t = self.t_statistic
        return {
            "metric": self.metric,
            "n": self.n,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "mean_diff": self.mean_diff,
            "t_statistic": t if math.isfinite(t) else str(t),
            "p_value": self.p_value,
            "method": self.method,
        }


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom (no scipy needed).

    Examples:
        >>> round(t_two_sided_p(2.0, 10), 4)
        0.0734
    """
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, _betainc(df / 2.0, 0.5, df / (df + t * t))))


#: Per-query differences smaller than this (in absolute value) count as 0 in :func:`paired_test`:
#: float rounding, not a difference between systems (metrics lie in [0, 1]).
DIFF_TOLERANCE = 1e-12


def _paired_differences(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    metric: str,
    warn_unshared: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, a - b)`` over the queries both systems were scored on, differences below the tolerance set to 0.

    Raises:
        ValueError: If fewer than two queries are shared, or a shared value is not finite.
    """
    shared = [q for q in per_query_a if q in per_query_b and metric in per_query_a[q] and metric in per_query_b[q]]
    if len(shared) < 2:
        raise ValueError(f"a paired test needs at least 2 shared queries with {metric!r}; got {len(shared)}")
    only = (len(per_query_a) - len(shared), len(per_query_b) - len(shared))
    if any(only) and warn_unshared:
        logger.warning("paired test on %d shared queries (%d only in A, %d only in B)", len(shared), *only)
    a = np.array([float(per_query_a[q][metric]) for q in shared], dtype=np.float64)
    b = np.array([float(per_query_b[q][metric]) for q in shared], dtype=np.float64)
    for values, side in ((a, "A"), (b, "B")):
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"system {side}: query {shared[i]!r}, metric {metric!r} is {values[i]}; expected a number")
    diff = a - b
    diff[np.abs(diff) < DIFF_TOLERANCE] = 0.0  # float rounding is no difference
    return a, b, diff


def paired_test(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    metric: str = "ndcg@10",
    *,
    use_scipy: bool = True,
    warn_unshared: bool = True,
) -> PairedTestResult:
    """Two-sided paired t-test of ``metric`` over the queries both systems were scored on.

    A per-query difference whose absolute value is below :data:`DIFF_TOLERANCE` (``1e-12``) counts as
    0 before testing: two systems that differ only by float rounding (differences of ``2e-16``
    on a few queries) are equal, not infinitely significant. When every difference is then 0 the
    result is ``t = 0``, ``p = 1``; ``t = ±inf``, ``p = 0`` only when every difference is the same
    value, non-zero beyond the tolerance (no spread to test against). The means are those of the
    values as given; ``mean_diff`` is the mean of the differences after the tolerance.

    Args:
        per_query_a: Query id -> {metric: value} for system A (as from :func:`evaluate_run`).
        per_query_b: The same for system B.
        metric: Which metric to compare.
        use_scipy: Use ``scipy.stats.ttest_rel`` when installed (else a builtin t distribution).
        warn_unshared: Log a warning when some queries are in only one of the two (a caller testing
            several metrics over the same two systems warns once itself).

    Returns:
        The means, their difference (A - B), the t statistic and the p-value.

    Raises:
        ValueError: If fewer than two queries are shared, or a shared value is not finite.

    Examples:
        >>> a = {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": 0.7}, "q3": {"ndcg@10": 0.9}}
        >>> b = {"q1": {"ndcg@10": 0.4}, "q2": {"ndcg@10": 0.5}, "q3": {"ndcg@10": 0.9}}
        >>> res = paired_test(a, b)
        >>> round(res.mean_diff, 3), res.n
        (0.1, 3)
        >>> c = {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": 0.7 + 2e-16}, "q3": {"ndcg@10": 0.9}}
        >>> res = paired_test(a, c)  # float rounding only: no difference
        >>> res.t_statistic, res.p_value, res.mean_diff
        (0.0, 1.0, 0.0)
    """
    a, b, diff = _paired_differences(per_query_a, per_query_b, metric, warn_unshared)
    n = len(diff)
    mean_diff = float(diff.mean())
    sd = float(diff.std(ddof=1))
    method = "paired t-test (no variation)"  # no t distribution read: the differences do not vary
    if not diff.any():
        t, p = 0.0, 1.0
    elif sd == 0.0 or sd < 1e-12 * max(1.0, abs(mean_diff)):  # one non-zero difference throughout
        t, p = math.copysign(math.inf, mean_diff), 0.0
    else:
        method = "paired t-test (builtin)"
        t = mean_diff / (sd / math.sqrt(n))
        p = float("nan")
        if use_scipy:
            try:
                from scipy import stats

                res = stats.ttest_1samp(diff, 0.0)  # = ttest_rel(a, b), on the differences after the tolerance
                t, p = float(res.statistic), float(res.pvalue)
                method = "paired t-test (scipy)"
            except ImportError:
                pass
        if math.isnan(p):
            p = t_two_sided_p(t, n - 1)
    return PairedTestResult(metric, n, float(a.mean()), float(b.mean()), mean_diff, float(t), float(p), method)


@dataclass(frozen=True)
class WilcoxonResult:
    """Outcome of a two-sided Wilcoxon signed-rank test between two systems on the same queries.

    Attributes:
        metric: The metric compared.
        n: Number of queries both systems were scored on.
        n_nonzero: How many of them differ (beyond :data:`DIFF_TOLERANCE`): the queries ranked. Zero
            differences are dropped before ranking (scipy's default ``zero_method="wilcox"``).
        mean_a: Mean of system A.
        mean_b: Mean of system B.
        mean_diff: ``mean_a - mean_b`` (per-query differences below :data:`DIFF_TOLERANCE` counted as 0).
        statistic: scipy's statistic: the smaller of the sums of the ranks of the positive and of the negative
            differences (0 when no query differs).
        p_value: Two-sided p-value (1 when no query differs).
        method: ``"Wilcoxon signed-rank (scipy)"``; ``"Wilcoxon signed-rank (no variation)"`` when no query
            differs, and the statistic and p follow without a test.
    """

    metric: str
    n: int
    n_nonzero: int
    mean_a: float
    mean_b: float
    mean_diff: float
    statistic: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def wilcoxon_test(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    metric: str = "ndcg@10",
    *,
    warn_unshared: bool = True,
) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of ``metric`` over the queries both systems were scored on.

    ``scipy.stats.wilcoxon`` on the nonzero per-query differences: zero differences are dropped before
    ranking (Wilcoxon's ``zero_method="wilcox"``, done here so that scipy picks its method on the
    differences it ranks: handed zeros, it would fall back to the normal approximation), tied absolute
    differences get their mean rank. With scipy's ``method="auto"`` the p-value is exact for up to 50
    differences without ties, else from the normal approximation (no continuity correction); with ties,
    scipy >= 1.15 runs an exact permutation test for up to 13 differences, while older scipy reads the
    null distribution of untied ranks for up to 50 (approximate). As in :func:`paired_test`, a
    difference below :data:`DIFF_TOLERANCE` counts as 0 (float rounding), and when no query differs the
    result is ``statistic = 0``, ``p = 1`` without a test (scipy cannot rank an empty set). The
    differences are rounded to 12 decimals before ranking, so that equal differences reached along other
    float paths (``0.7 - 0.5`` and ``0.9 - 0.7``) tie; the mean difference is of the values before
    rounding.

    Args:
        per_query_a: Query id -> {metric: value} for system A (as from :func:`evaluate_run`).
        per_query_b: The same for system B.
        metric: Which metric to compare.
        warn_unshared: Log a warning when some queries are in only one of the two.

    Returns:
        The means, their difference (A - B), the statistic, the p-value and how many queries differ.

    Raises:
        ValueError: If fewer than two queries are shared, or a shared value is not finite.
        ModuleNotFoundError: If scipy is not installed (``pip install "kl-retrievers[eval]"``).

    Examples:
        >>> a = {q: {"ndcg@10": v} for q, v in zip("abcdef", [0.5, 0.7, 0.9, 0.4, 0.6, 0.8])}
        >>> b = {q: {"ndcg@10": v} for q, v in zip("abcdef", [0.4, 0.5, 0.9, 0.1, 0.65, 0.2])}
        >>> res = wilcoxon_test(a, b)  # one zero, no ties: exact on every scipy version
        >>> res.n, res.n_nonzero, res.statistic, round(res.p_value, 4)
        (6, 5, 1.0, 0.125)
    """
    try:
        from scipy import stats
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            'the Wilcoxon signed-rank test needs scipy: pip install "kl-retrievers[eval]"', name=exc.name
        ) from exc
    a, b, diff = _paired_differences(per_query_a, per_query_b, metric, warn_unshared)
    rounded = np.round(diff, 12)  # equal differences reached along other float paths (0.7 - 0.5, 0.9 - 0.7) tie
    # zeros dropped here, not by scipy: its method="auto" counts them when choosing exact or approximate
    ranked = rounded[rounded != 0]
    nonzero = int(ranked.size)
    if nonzero == 0:
        statistic, p, method = 0.0, 1.0, "Wilcoxon signed-rank (no variation)"
    else:
        res = stats.wilcoxon(ranked, zero_method="wilcox", alternative="two-sided")
        statistic, p, method = float(res.statistic), float(res.pvalue), "Wilcoxon signed-rank (scipy)"
    return WilcoxonResult(
        metric, len(diff), nonzero, float(a.mean()), float(b.mean()), float(diff.mean()), statistic, p, method
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (control of the family-wise error rate).

    The ``i``-th smallest of ``m`` p-values becomes ``max over j <= i of min(1, (m - j + 1) * p_(j))``
    (``j`` from 1); the adjusted values come back in the given order. Holm (1979), as
    ``statsmodels``' ``multipletests(method="holm")``; ``scipy.stats.false_discovery_control`` is
    Benjamini-Hochberg (false discovery rate), another correction. A NaN p-value stays NaN and does not
    count in ``m``.

    Examples:
        >>> holm_adjust([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
        >>> holm_adjust([0.5, float("nan")])
        [0.5, nan]
    """
    ps = [float(p) for p in p_values]
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    out = list(ps)
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - j) * ps[i]))
        out[i] = running
    return out


# --------------------------------------------------------------------------------------
# Exact retrieval
# --------------------------------------------------------------------------------------


def retrieve_exact(
    queries: Gaussians,
    documents: Gaussians,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int = 100,
    *,
    means_only: bool = False,
    pool_margin: int = 16,
    max_block_elements: int = 1 << 25,
    show_progress: bool | None = None,
) -> Run:
    """Exact top-``k`` retrieval by ``-KL(Q || D)`` (or by ``-||mu_q - mu_d||^2``).

    :func:`kl_retrievers.gaussian.exact_top_k`: candidates from a float32 matmul of the
    inner-product rewrite around the corpus mean, re-scored term by term in float64 and proven
    complete by a bound on the float32 error (the pool widens, or every document is scored in
    float64, where the bound says it must). The reported scores are the true ``-KL`` and the
    ranking is the float64 one; documents tied at the depth cut are kept by document id,
    descending, the order :func:`evaluate_run` ranks ties in, so a run is a prefix of any deeper one
    (bit for bit: the candidate re-score and the float64 fallback, which a query may take at one
    depth and not another, share one arithmetic, :func:`kl_retrievers.gaussian.neg_kl_rows`).

    Args:
        queries: ``n_q`` query Gaussians (numpy or torch).
        documents: ``n_d`` document Gaussians.
        query_ids: Ids of the queries, in order.
        doc_ids: Ids of the documents, in order.
        k: Depth of the run per query (a positive integer).
        means_only: Ablation: ignore variances and score by negative squared L2 distance of the means.
        pool_margin: Extra float32 candidates in the first re-scored pool per query.
        max_block_elements: Bound on the size of one float32 score block (queries x docs).
        show_progress: A progress bar over queries on stderr (``None``: only when stderr is a terminal;
            ``TQDM_DISABLE`` hides it).

    Returns:
        Query id -> {document id: score}, the ``min(k, n_d)`` best documents per query.

    Raises:
        TypeError: ``queries`` or ``documents`` not :class:`Gaussians` (wrap arrays as ``Gaussians(mean, var)``),
            ids that are not a sequence (a set: arbitrary order), or a query or document id that is not a str
            (``1``, ``np.int64(1)``: a run is keyed by str ids, as qrels are), naming its position.
        ValueError: Ids not matching the Gaussians, a repeated query or document id (naming the
            first), ``k`` not a positive integer, or a query or document whose rewrite overflows
            float32 (naming its row).

    Examples:
        >>> q = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
        >>> d = Gaussians(np.array([[3.0, 0.0], [1.0, 0.0]]), np.ones((2, 2)))
        >>> retrieve_exact(q, d, ["q"], ["far", "near"], k=2)
        {'q': {'near': -0.5, 'far': -4.5}}
    """
    _require_gaussians(queries, "queries")
    _require_gaussians(documents, "documents")
    if len(queries) != len(query_ids) or len(documents) != len(doc_ids):
        raise ValueError(
            f"ids do not match the Gaussians: {len(queries)} queries vs {len(query_ids)} ids, "
            f"{len(documents)} documents vs {len(doc_ids)} ids"
        )
    _check_str_ids(query_ids, "query_ids")  # an int id would key the run by int, matching no qrels entry
    _check_str_ids(doc_ids, "doc_ids")
    check_unique_ids(query_ids, "query")  # a run would merge repeats silently
    check_unique_ids(doc_ids, "document")
    if queries.dim != documents.dim:
        raise ValueError(f"queries have dimension {queries.dim} but documents {documents.dim}")
    k = check_k(k)
    check_float32_scorable(documents, "document")  # a document to blame is named before the queries
    check_float32_scorable(queries, "query")
    with progress_bar(len(queries), desc="exact retrieval", unit="query", show=show_progress) as bar:
        idx, vals = exact_top_k(
            queries,
            documents,
            k,
            means_only=means_only,
            margin=max(0, pool_margin),
            max_block_elements=max_block_elements,
            on_block=bar.update,
            tie_rank=tie_ranks(doc_ids),
        )
    return _run_rows(query_ids, doc_ids, idx, vals)


# --------------------------------------------------------------------------------------
# Encoding a dataset with a Gaussian encoder
# --------------------------------------------------------------------------------------


class GaussianEncoderLike(Protocol):
    """What :func:`encode_dataset` needs from an encoder (duck-typed).

    ``encode_queries(texts, batch_size=..., show_progress_bar=...)`` and ``encode_documents``
    return :class:`Gaussians` (a ``max_length`` keyword is used when accepted); ``name_or_path``
    and ``config.to_dict()`` identify the model.
    """

    name_or_path: Any
    config: Any

    @property
    def encode_queries(self) -> Callable[..., Gaussians]:
        """Encode queries."""
        ...

    @property
    def encode_documents(self) -> Callable[..., Gaussians]:
        """Encode documents."""
        ...


def _call_encode(
    fn: Any, texts: list[str], batch_size: int, max_length: int | None, show_progress: bool | None
) -> Gaussians:
    kwargs: dict[str, Any] = {"batch_size": batch_size, "show_progress_bar": show_progress}
    if max_length is not None:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "max_length" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs["max_length"] = max_length
        else:
            logger.warning("%s takes no max_length argument; using the encoder's own setting", fn)
    out = fn(texts, **kwargs)
    if not isinstance(out, Gaussians):
        raise TypeError(f"encoder returned {type(out).__name__}, expected Gaussians")
    return out


def _encode_sorted(
    fn: Any,
    texts: list[str],
    batch_size: int,
    max_length: int | None,
    show_progress: bool | None,
    presort: bool = True,
) -> Gaussians:
    """Encode longest first (less padding per batch), then restore the input order.

    ``presort=False`` encodes in the input order (for an encoder whose output depends on its batch, so that
    the batches are the ones a single encode call of ``texts`` makes).
    """
    if not texts:
        raise ValueError("nothing to encode")
    order = np.argsort([-len(t) for t in texts], kind="stable") if presort else np.arange(len(texts))
    g = _call_encode(fn, [texts[i] for i in order], batch_size, max_length, show_progress).numpy()
    if len(g) != len(texts):
        raise ValueError(f"encoder returned {len(g)} Gaussians for {len(texts)} texts")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return Gaussians(g.mean[inverse], g.var[inverse], validate=False)


def _warn_blank_documents(dataset: BeirDataset, ids: Sequence[str], texts: Sequence[str]) -> None:
    """Warn once when some of the corpus's documents are blank (:func:`~kl_retrievers._encoding.is_blank_text`),
    naming how many and the ids of the first few (at the user's line).

    What the encoder's own warning says, by document id rather than by position in the texts it was given
    (the corpus sorted longest first, not the corpus's order): :func:`_encode_dataset` leaves that one out
    (:func:`~kl_retrievers._encoding.blank_warning_suppressed`, in its own thread only).
    """
    blank = [ids[i] for i in blank_positions(texts)]
    if not blank:
        return
    shown = ", ".join(repr(doc_id) for doc_id in blank[:_BLANK_POSITIONS_SHOWN])
    shown += ", ..." if len(blank) > _BLANK_POSITIONS_SHOWN else ""
    one = len(blank) == 1
    warn(
        f"{len(blank)} of the {len(texts)} documents of {dataset.path} {'is' if one else 'are'} blank (empty, or "
        f"only whitespace and invisible characters): document id{'' if one else 's'} {shown}. Every blank document "
        "gets the same Gaussian, the empty text's, which can rank high for queries it does not answer; "
        f"{'it is' if one else 'they are'} evaluated as the corpus holds {'it' if one else 'them'}"
    )


def encode_dataset(
    encoder: GaussianEncoderLike,
    dataset: BeirDataset,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    query_max_length: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    show_progress: bool | None = None,
) -> tuple[Gaussians, Gaussians]:
    """Encode a dataset's queries and corpus, reusing encodings cached on disk.

    Documents are cached by (model fingerprint, SHA-256 of the document texts and the doc
    ids, max_length); queries by (model fingerprint, SHA-256 of the query texts, split and
    query ids, max_length): a copied or re-mounted collection hits, an edited one misses.

    An encoder whose ``batch_invariant`` is ``False`` (an int8 ONNX graph quantises activations per
    batch, so a text's Gaussian depends on the texts encoded with it) is used as the serving paths use
    it: queries are encoded one at a time (batch size 1, as ``KLStore.search`` / ``search_batch`` and
    ``kl-retrievers search`` encode them), and documents in the dataset's order at ``batch_size``, without
    the longest-first pre-sort, so that they equal the encodings of one ``KLStore.add`` (or
    ``kl-retrievers index``) of ``dataset.document_texts()`` in that order at that batch size. The batch
    size actually used is then part of both cache keys (and the documents' key records their order, so
    entries encoded pre-sorted by an earlier release are not reused). Batch-invariant encoders encode
    both sides longest first (less padding per batch).

    Args:
        encoder: An object with ``encode_queries``/``encode_documents`` returning :class:`Gaussians`.
        dataset: The loaded split.
        batch_size: Encoding batch size (documents; queries too unless the encoder is not batch-invariant).
        max_length: Document token limit passed to the encoder when it accepts one (``None``: the
            encoder's default); part of the document cache key.
        query_max_length: The same for queries.
        cache_dir: Cache root (default :func:`default_cache_dir`).
        use_cache: Read and write the cache.
        show_progress: The encoder's progress bars on stderr, passed as its ``show_progress_bar`` (``None``: its
            default, only when stderr is a terminal and there are several batches; ``TQDM_DISABLE`` hides them).

    Returns:
        ``(queries, documents)`` as numpy :class:`Gaussians`, in ``dataset.query_ids`` and
        ``dataset.doc_ids`` order.

    Examples:
        >>> q, d = encode_dataset(encoder, load_beir("../shared/datasets/scifact"))  # doctest: +SKIP
    """
    return _encode_dataset(
        encoder,
        dataset,
        batch_size=batch_size,
        max_length=max_length,
        query_max_length=query_max_length,
        cache_dir=cache_dir,
        use_cache=use_cache,
        show_progress=show_progress,
    )


def _encoding_key(
    model: Mapping[str, Any],
    kind: str,
    identity: Mapping[str, Any],
    *,
    batch_dependent: bool,
    batch_size: int,
    limit: int | None,
) -> tuple[dict[str, Any], int]:
    """The cache key of one side (``kind``: ``"queries"`` or ``"documents"``) and the batch size it is encoded at.

    ``model``: ``{"model": model_fingerprint(encoder)}`` (found without loading the model by the command line
    through :func:`_model_of_files`).
    """
    key: dict[str, Any] = {**model, "data": identity, "max_length": limit}
    size = 1 if batch_dependent and kind == "queries" else batch_size  # queries alone, as searches encode them
    if batch_dependent:
        key["batch_size"] = size
        if kind == "documents":
            key["order"] = "input"  # not pre-sorted: as one KLStore.add of the corpus
    return key, size


#: Cache kind of the entry that maps a model's files fingerprint (``model_files``,
#: :func:`kl_retrievers.encoding_cache.files_fingerprint`) to its :func:`model_fingerprint`: its one row
#: (``_FILES_ROW``) holds the fingerprint's 8 bytes as floats. ``kl-retrievers evaluate`` saves it only after a
#: load confirmed what the files said, and then finds the encodings under the model's own key without loading it
#: (the key :func:`encode_dataset` and ``--hybrid`` use: one entry serves all three).
_FILES_KIND = "model-files"
_FILES_ROW = "model_fingerprint"


def _model_of_files(cache: EncodingCache, files: str) -> str | None:
    """The :func:`model_fingerprint` recorded for a model's files fingerprint; ``None`` where none is."""
    found = cache.load(_FILES_KIND, {"model_files": files}, [_FILES_ROW])
    raw = found.get("fingerprint") if found is not None else None
    if raw is None or raw.shape != (1, 8) or not all(float(v).is_integer() and 0 <= v <= 255 for v in raw[0]):
        return None
    return bytes(int(v) for v in raw[0]).hex()


def _save_model_of_files(cache: EncodingCache, files: str, fingerprint: str) -> None:
    """Record that the files fingerprint ``files`` is the model ``fingerprint`` (16 hex digits)."""
    row = np.frombuffer(bytes.fromhex(fingerprint), dtype=np.uint8).astype(np.float64)[None, :]
    cache.save(_FILES_KIND, {"model_files": files}, [_FILES_ROW], {"fingerprint": row})


def _dataset_identities(dataset: BeirDataset) -> dict[str, dict[str, Any]]:
    """Each side's :meth:`~kl_retrievers.datasets.BeirDataset.queries_identity` / ``corpus_identity`` (hashed once)."""
    return {"queries": dataset.queries_identity(), "documents": dataset.corpus_identity()}


def _cached_encodings(
    dataset: BeirDataset,
    files: str,
    *,
    batch_invariant: bool,
    identities: Mapping[str, Mapping[str, Any]],
    batch_size: int = 32,
    max_length: int | None = None,
    query_max_length: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Gaussians], str | None]:
    """The sides (``"queries"``, ``"documents"``) cached for the model a files fingerprint was recorded as,
    and that model's fingerprint (``None``: none recorded, no sides).

    What ``kl-retrievers evaluate`` looks up before loading its model
    (:func:`kl_retrievers.encoding_cache.files_fingerprint`, then :func:`_model_of_files`): with both sides
    cached it loads none; with one, :func:`_encode_dataset` uses it only if the loaded model is that model.
    ``batch_invariant``: the encoder's, as its files say it (an int8 ONNX graph's is ``False``).
    """
    cache = EncodingCache(cache_dir)
    found: dict[str, Gaussians] = {}
    model = _model_of_files(cache, files)
    if model is None:  # no run that loaded these files recorded their model yet
        return found, None
    for kind, ids, limit in (
        ("documents", dataset.doc_ids, max_length),
        ("queries", dataset.query_ids, query_max_length),
    ):
        key, _ = _encoding_key(
            {"model": model},
            kind,
            identities[kind],
            batch_dependent=not batch_invariant,
            batch_size=batch_size,
            limit=limit,
        )
        cached = cache.load(f"gauss-{kind}", key, ids)
        if cached is not None:
            found[kind] = Gaussians(cached["mean"], cached["var"])
    return found, model


def _encode_dataset(
    encoder: GaussianEncoderLike,
    dataset: BeirDataset,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    query_max_length: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    show_progress: bool | None = None,
    files: str | None = None,
    cached: Mapping[str, Gaussians] | None = None,
    identities: Mapping[str, Mapping[str, Any]] | None = None,
    cached_model: str | None = None,
) -> tuple[Gaussians, Gaussians]:
    """:func:`encode_dataset`; the command line's extras, for an encoder checked against what its files say.

    ``files``: the model's files fingerprint, recorded as this encoder's :func:`model_fingerprint`
    (:func:`_save_model_of_files`: the next run finds its encodings without loading the model); the encodings
    themselves are keyed by the model, as :func:`encode_dataset` keys them. ``cached``: sides already found
    (:func:`_cached_encodings`), not looked up again; ``cached_model``: the model fingerprint they were found
    under, when known (sides of another model than ``encoder`` are dropped, encoded again). ``identities``:
    :func:`_dataset_identities`, when taken.
    """
    cache = EncodingCache(cache_dir) if use_cache else None
    cached = cached or {}
    fp = model_fingerprint(encoder) if len(cached) < 2 else ""
    if cached and fp and cached_model is not None and cached_model != fp:
        logger.info("the cached %s are of model %s, not the loaded %s: encoded again", sorted(cached), cached_model, fp)
        cached = {}
    batch_dependent = not getattr(encoder, "batch_invariant", True)  # int8 ONNX: a text's vector depends on its batch
    results: list[Gaussians] = []
    for kind, ids, texts_fn, fn, ident, limit in (
        (
            "queries",
            dataset.query_ids,
            dataset.query_texts,
            encoder.encode_queries,
            dataset.queries_identity,
            query_max_length,
        ),
        (
            "documents",
            dataset.doc_ids,
            dataset.document_texts,
            encoder.encode_documents,
            dataset.corpus_identity,
            max_length,
        ),
    ):
        if kind in cached:
            results.append(cached[kind])
            continue
        identity = identities[kind] if identities is not None else ident()
        options: dict[str, Any] = {"batch_dependent": batch_dependent, "batch_size": batch_size, "limit": limit}
        key, size = _encoding_key({"model": fp}, kind, identity, **options)
        found = cache.load(f"gauss-{kind}", key, ids) if cache is not None else None
        if found is not None:
            results.append(Gaussians(found["mean"], found["var"]))
            continue
        logger.info("encoding %d %s", len(ids), kind)
        t0 = time.perf_counter()
        texts = texts_fn()
        if kind == "documents":  # by id, not by position in the (sorted) texts the encoder is given
            _warn_blank_documents(dataset, ids, texts)
        # the encoder's own warning names positions in the sorted texts: left out (in this thread only)
        with blank_warning_suppressed() if kind == "documents" else nullcontext():
            g = _encode_sorted(fn, texts, size, limit, show_progress, presort=not batch_dependent)
        logger.info("encoded %d %s in %.1f s", len(ids), kind, time.perf_counter() - t0)
        if cache is not None:
            cache.save(f"gauss-{kind}", key, ids, {"mean": np.asarray(g.mean), "var": np.asarray(g.var)})
        results.append(g)
    if cache is not None and files and fp:  # the files' model, as loaded: their next run loads none
        _save_model_of_files(cache, files, fp)
    return results[0], results[1]


# --------------------------------------------------------------------------------------
# Whole evaluations
# --------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """A model evaluated on one split.

    Attributes:
        dataset: Dataset folder.
        split: Qrels split.
        model: Human-readable model label.
        aggregate: Metric name -> mean over queries.
        per_query: Query id -> {metric: value}.
        run: The retrieved run (query id -> {doc id: score}).
        info: Extra facts (timings, options).
        query_stats: Per-query facts for query performance prediction (name -> {query id: value}):
            ``uncertainty`` and ``corpus_score`` for Gaussian models (see :mod:`kl_retrievers.qpp`);
            empty for baselines.
    """

    dataset: str
    split: str
    model: str
    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False)  # one row per query: thousands of them
    run: Run = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    query_stats: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """The flat JSON summary printed by ``kl-retrievers evaluate --json``."""
        out: dict[str, Any] = {"dataset": self.dataset, "split": self.split, "model": self.model}
        out.update({name: round(v, 6) for name, v in self.aggregate.items()})
        out["queries"] = len(self.per_query)
        out.update(self.info)
        return out


def model_label(encoder: Any) -> str:
    """A readable name for an encoder (its ``name_or_path``, else its class)."""
    name = getattr(encoder, "name_or_path", None)
    return str(name) if name else type(encoder).__name__


def model_backend(encoder: Any, loaded_as: str | None = None) -> str | None:
    """What computes an encoder's encodings: ``"torch"``, ``"onnx-int8"`` or ``"onnx-float32"`` (the graph's weights).

    The package's two encoder classes are told apart without importing either; another (duck-typed) encoder
    has the backend it was ``loaded_as`` (``"torch"`` or ``"onnx"``), else ``None``. The two backends of one
    model give close but not identical encodings (int8 weights move nDCG@10 by about 0.01), so a result records
    which one measured it (``info["backend"]`` of :func:`evaluate_model`, ``backend`` of ``evaluate --json``).

    Examples:
        >>> model_backend(object()) is None, model_backend(object(), "torch"), model_backend(object(), "onnx")
        (True, 'torch', 'onnx-float32')
    """
    from kl_retrievers._adapters import encoder_backend

    backend = encoder_backend(encoder) or loaded_as
    if backend == "onnx":
        return onnx_backend(getattr(encoder, "quantize", None))
    return backend


def onnx_backend(quantize: str | None) -> str:
    """The backend of an ONNX graph whose weights are ``quantize`` (``OnnxGaussianEncoder.quantize``: ``"int8"``, or
    ``None`` for float32), as :func:`model_backend` names it.

    Examples:
        >>> onnx_backend("int8"), onnx_backend(None)
        ('onnx-int8', 'onnx-float32')
    """
    return f"onnx-{quantize or 'float32'}"


def model_weights_sha256(encoder: Any) -> str | None:
    """The identity of an encoder's trained weights (``weights_sha256``: the same for a torch model and its ONNX
    export), or ``None`` when it does not know it.

    Examples:
        >>> from types import SimpleNamespace
        >>> model_weights_sha256(SimpleNamespace(weights_sha256="ab")), model_weights_sha256(object())
        ('ab', None)
    """
    try:
        weights = getattr(encoder, "weights_sha256", None)
    except Exception:  # a foreign encoder's property: nothing to learn from it
        return None
    return weights if isinstance(weights, str) and weights else None


class EncodeOptions(TypedDict, total=False):
    """How :func:`evaluate_model` encodes: keyword options of :func:`encode_dataset`, passed on as given."""

    batch_size: int
    max_length: int | None
    query_max_length: int | None
    cache_dir: str | os.PathLike[str] | None
    use_cache: bool


def retrieve_vectors(
    queries: np.ndarray,
    documents: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int = 100,
    *,
    similarity: Literal["dot", "cosine"] = "dot",
    max_block_elements: int = 1 << 25,
) -> Run:
    """Exact top-``k`` by the dot product (or cosine) of vectors, in float64: how a vector twin ranks.

    Raises:
        TypeError: ``queries`` or ``documents`` is a :class:`Gaussians` batch (rank Gaussians with
            :func:`retrieve_exact`, or pass their means), ids that are not a sequence (a set: arbitrary order), or
            an id that is not a str (``1``, ``np.int64(1)``: a run is keyed by str ids, as qrels are), naming its
            position.
        ValueError: An unknown similarity, vectors that are not 2-D or whose widths differ, ids not
            matching the vectors, a repeated query or document id (naming the first), or ``k`` not a
            positive integer.

    Examples:
        >>> retrieve_vectors(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0]]), ["q"], ["a", "b"], k=2)
        {'q': {'a': 2.0, 'b': 0.0}}
    """
    if similarity not in ("dot", "cosine"):
        raise ValueError(f"similarity must be 'dot' or 'cosine'; got {similarity!r}")
    for what, given in (("queries", queries), ("documents", documents)):
        if isinstance(given, Gaussians):
            raise TypeError(
                f"{what} must be an array of vectors (n, dim); got a Gaussians batch: rank Gaussians by -KL with "
                "retrieve_exact, or pass their means (g.mean) for the vector ranking"
            )
    q = np.asarray(queries, dtype=np.float64)
    d = np.asarray(documents, dtype=np.float64)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(
            f"queries and documents must be 2-D arrays of vectors of one width (n, dim); got queries of shape "
            f"{q.shape} and documents of shape {d.shape}"
        )
    if len(q) != len(query_ids) or len(d) != len(doc_ids):
        raise ValueError(
            f"ids do not match the vectors: {len(q)} queries vs {len(query_ids)} ids, "
            f"{len(d)} documents vs {len(doc_ids)} ids"
        )
    _check_str_ids(query_ids, "query_ids")  # as retrieve_exact: a run is keyed by str ids, as qrels are
    _check_str_ids(doc_ids, "doc_ids")
    k = check_k(k)
    if similarity == "cosine":  # as the training loss: F.normalize (norms clamped at 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return inner_product_run(q, d, query_ids, doc_ids, k, max_block_elements=max_block_elements)


def evaluate_model(
    encoder: GaussianEncoderLike,
    dataset: BeirDataset,
    *,
    k: int = 100,
    means_only: bool = False,
    similarity: Similarity | None = None,
    show_progress: bool | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    relevance_level: int = DEFAULT_RELEVANCE_LEVEL,
    **encode_options: Unpack[EncodeOptions],
) -> EvaluationResult:
    """Encode, retrieve exactly by -KL (or means only) and score a Gaussian encoder.

    Args:
        encoder: Duck-typed Gaussian encoder (see :class:`GaussianEncoderLike`).
        dataset: The loaded split.
        k: Retrieval depth: documents retrieved per query, the run the metrics read. Below a metric's cutoff
            (``k=10`` with ``recall@100``) that metric counts a document ranked past ``k`` as not retrieved,
            so it is not comparable with figures at the default depth 100: a :class:`ShallowRunWarning` (a
            ``UserWarning``) says so (the ``kl-retrievers evaluate --depth`` warning), and the metrics are
            computed anyway. No warning when ``k`` reaches the number of documents in the corpus (the run holds
            them all).
        means_only: Ablation of the -KL ranking: rank by ``-||mu_q - mu_d||^2`` ignoring variances. It needs
            ``similarity`` to be ``"neg_kl"``: with ``"dot"`` or ``"cosine"`` (given, or a vector twin's own
            with ``similarity=None``) it is refused, as ``kl-retrievers evaluate --means-only`` refuses a twin.
            ``similarity="neg_kl"`` asks for the -KL ranking of any model, a twin's too (an ablation), so
            the pair ranks a twin by the squared L2 distance of its means.
        similarity: ``"neg_kl"``, ``"dot"`` or ``"cosine"`` (the latter two on the means);
            ``None``: what the model was trained for (:func:`model_similarity`), so a vector twin
            from ``kl-retrievers train --similarity dot`` is ranked by its dot product. An argument of this
            function only: ``kl-retrievers evaluate`` always ranks by what the model was trained for.
        show_progress: Progress bars on stderr (``None``: only when stderr is a terminal; ``TQDM_DISABLE`` hides
            them).
        metrics: Metric names to report, or one as a bare string; as in :func:`evaluate_run`.
        relevance_level: The lowest grade the binary metrics count as relevant, as in :func:`evaluate_run`
            (default 1: any grade > 0; TREC DL's convention is 2); recorded in ``info["relevance_level"]``.
        **encode_options: ``batch_size``, ``max_length`` (document token limit, if the encoder
            accepts one; ``None``: its default), ``query_max_length``, ``cache_dir`` and
            ``use_cache``: as in :func:`encode_dataset`.

    Returns:
        The aggregate and per-query metrics and the run; its ``info`` (and ``summary()``) records what measured
        the run as ``kl-retrievers evaluate --json`` does: ``backend`` (``torch``, ``onnx-int8`` or
        ``onnx-float32``: :func:`model_backend`) and, when the model knows it, ``weights_sha256``, so that
        ``evaluate --compare`` of a per-query file saved with ``meta=result.summary()`` warns when it was
        measured on another backend.

    Raises:
        ValueError: An unknown metric or ``similarity``, ``k`` or ``relevance_level`` below 1, empty qrels,
            or ``means_only`` with a ranking other than -KL; said before anything is encoded.
        ModuleNotFoundError: ir_measures (the ``eval`` extra) is not installed; said before anything is
            encoded, naming ``pip install "kl-retrievers[eval]"``.

    Examples:
        >>> result = evaluate_model(encoder, load_beir("../shared/datasets/scifact"), batch_size=64)  # doctest: +SKIP
        >>> result.aggregate["ndcg@10"]  # doctest: +SKIP
    """
    return _evaluate_model(
        encoder,
        dataset,
        k=k,
        means_only=means_only,
        similarity=model_similarity(encoder) if similarity is None else similarity,
        show_progress=show_progress,
        metrics=metrics,
        relevance_level=relevance_level,
        label=model_label(encoder),
        **encode_options,
    )


def _evaluate_model(
    encoder: GaussianEncoderLike | None,
    dataset: BeirDataset,
    *,
    k: int,
    means_only: bool,
    similarity: str,
    show_progress: bool | None,
    metrics: str | Sequence[str],
    label: str,
    relevance_level: int = DEFAULT_RELEVANCE_LEVEL,
    files: str | None = None,
    cached: Mapping[str, Gaussians] | None = None,
    identities: Mapping[str, Mapping[str, Any]] | None = None,
    cached_model: str | None = None,
    **encode_options: Unpack[EncodeOptions],
) -> EvaluationResult:
    """:func:`evaluate_model`, given the model's ``label`` and ``similarity``; the rest as :func:`_encode_dataset`.

    ``encoder`` may be ``None`` when ``cached`` holds both sides (``kl-retrievers evaluate`` found them by the
    model's files and loaded no model).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}; got {similarity!r}")
    if means_only and similarity != "neg_kl":
        raise ValueError(
            f"means_only=True is an ablation of the -KL ranking, and similarity={similarity!r} (given, or a vector "
            "twin's own) ranks by the means already; similarity='neg_kl' with means_only=True ranks any model, "
            "a twin too, by the squared L2 distance of its means"
        )
    _require_ir_measures("evaluate_model (scoring its run)")  # before encoding the corpus, not after
    metrics = _metric_names(metrics)
    k = check_k(k)
    relevance_level = check_relevance_level(relevance_level)
    if not dataset.qrels:
        raise ValueError(f"{dataset.path} ({dataset.split}): qrels are empty: nothing to evaluate")
    shallow = _depth_warning(k, metrics, n_docs=len(dataset.corpus))
    if shallow:  # computed anyway: a deliberate shallow run is the caller's choice
        warnings.warn(shallow, ShallowRunWarning, stacklevel=3)  # evaluate_model's caller
    t0 = time.perf_counter()
    if cached is not None and "queries" in cached and "documents" in cached:
        q, d = cached["queries"], cached["documents"]
    elif encoder is None:
        raise ValueError("an encoder is needed: the cache does not hold both sides")
    else:
        q, d = _encode_dataset(
            encoder,
            dataset,
            show_progress=show_progress,
            files=files,
            cached=cached,
            identities=identities,
            cached_model=cached_model,
            **encode_options,
        )
    t1 = time.perf_counter()
    from kl_retrievers.qpp import gaussian_query_stats

    query_stats = (  # a twin's variance head is untrained: its "uncertainty" is no signal
        gaussian_query_stats(q, d, dataset.query_ids, means_only=means_only) if similarity == "neg_kl" else {}
    )
    if similarity == "neg_kl":
        run = retrieve_exact(
            q, d, dataset.query_ids, dataset.doc_ids, k, means_only=means_only, show_progress=show_progress
        )
    else:
        qn, dn = q.numpy(), d.numpy()
        vectors: Literal["dot", "cosine"] = "cosine" if similarity == "cosine" else "dot"  # checked above
        run = retrieve_vectors(qn.mean, dn.mean, dataset.query_ids, dataset.doc_ids, k, similarity=vectors)
    t2 = time.perf_counter()
    aggregate, per_query = evaluate_run(dataset.qrels, run, metrics, relevance_level=relevance_level)
    label += " [means only]" if means_only else ""
    label += f" [{similarity}]" if similarity != "neg_kl" else ""
    info: dict[str, Any] = {
        "score": "neg_sq_l2_means" if means_only else similarity,
        "depth": k,
        "relevance_level": relevance_level,
    }
    if encoder is not None:  # what measured the run (evaluate records it for an encoder it did not load too)
        backend, weights = model_backend(encoder), model_weights_sha256(encoder)
        if backend:
            info["backend"] = backend
        if weights:
            info["weights_sha256"] = weights
    info.update(encode_s=round(t1 - t0, 2), retrieve_s=round(t2 - t1, 2))
    return EvaluationResult(str(dataset.path), dataset.split, label, aggregate, per_query, run, info, query_stats)


# --------------------------------------------------------------------------------------
# Saving and loading per-query results and runs
# --------------------------------------------------------------------------------------


#: The suffixes of a per-query results file (:func:`save_per_query`), each its own format.
PER_QUERY_SUFFIXES = (".json", ".tsv", ".csv")


def per_query_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot name a per-query results file (its suffix chooses the format), else ``None``.

    Examples:
        >>> per_query_path_problem("pq.json") is None, per_query_path_problem("pq.CSV") is None
        (True, True)
        >>> per_query_path_problem("pq.txt")
        "per-query file pq.txt: suffix '.txt' is not one of .json (JSON with the summary), .tsv or .csv (a table)"
    """
    suffix = Path(path).suffix.lower()
    if suffix in PER_QUERY_SUFFIXES:
        return None
    return (
        f"per-query file {os.fspath(path)}: suffix {Path(path).suffix!r} is not one of .json (JSON with the summary), "
        ".tsv or .csv (a table)"
    )


def save_per_query(
    path: str | os.PathLike[str],
    per_query: Mapping[str, Mapping[str, float]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write per-query metrics as JSON (``.json``), TSV (``.tsv``) or CSV (``.csv``), by the suffix.

    JSON: ``{"meta": {...}, "per_query": {qid: {metric: value}}}``. TSV: a header
    ``query_id<TAB>metric...`` then one row per query; CSV: the same table, comma-separated (quoted where
    needed, by Python's ``csv`` module); both leave ``meta`` out. A query id these tables cannot hold, one
    with a tab, a line feed or a carriage return in a TSV file or a carriage return in a CSV file, raises
    ``ValueError`` naming it (nothing is written; JSON holds any id). Another suffix raises ``ValueError``
    (:func:`per_query_path_problem`; nothing is written). The file is standard JSON: a per-query value
    that is not a finite number raises ``ValueError`` (naming the query and metric; nothing is
    written), as :func:`load_per_query` would refuse it, and a non-finite number in ``meta`` is
    written as ``null``.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_per_query(Path(tmp) / "pq.tsv", {"q1": {"ndcg@10": 0.5}})
        ...     lines = (Path(tmp) / "pq.tsv").read_text().splitlines()
        >>> lines
        ['query_id\\tndcg@10', 'q1\\t0.5']
    """
    problem = per_query_path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    for qid, values in per_query.items():
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(
                    f"per-query results: query {qid!r}, metric {name!r} is {value}; expected a finite number"
                )
    p = Path(path)
    if p.suffix.lower() in (".tsv", ".csv"):
        _check_table_ids(p, per_query.keys())
        names: list[str] = []
        for values in per_query.values():
            names.extend(n for n in values if n not in names)
        table = [["query_id", *names]]
        for qid, values in per_query.items():
            table.append([qid, *(repr(float(values[n])) if n in values else "" for n in names)])
        if p.suffix.lower() == ".tsv":
            text = "".join("\t".join(row) + "\n" for row in table)
        else:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(table)
            text = buffer.getvalue()
    else:
        doc = {"meta": finite_json(dict(meta or {})), "per_query": {q: dict(v) for q, v in per_query.items()}}
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    with atomic_file(p) as tmp:  # a failed write leaves a previous file whole; creates the parent folders
        tmp.write_text(text, encoding="utf-8")


#: Characters a query id may not hold in each table format (:func:`save_per_query`): a TSV line is split at tabs
#: and ends at a line feed (a carriage return before it is dropped, as Windows tools write it); the ``csv`` module
#: quotes a line feed but not a lone carriage return, which its reader then takes for the end of the row.
_TABLE_ID_CHARS = {".tsv": "\t\n\r", ".csv": "\r"}


def _check_table_ids(path: Path, ids: Iterable[Any]) -> None:
    """Refuse a query id that a ``.tsv`` / ``.csv`` per-query file ``path`` cannot hold (:func:`load_per_query`
    reads every other id back), naming the id, as :func:`check_trec_ids` does for a run file; another suffix
    (``.json``: any id) passes."""
    suffix = path.suffix.lower()
    refused = _TABLE_ID_CHARS.get(suffix, "")
    for qid in ids if refused else ():
        bad = next((c for c in str(qid) if c in refused), None)
        if bad is not None:
            other = ".json or .csv" if suffix == ".tsv" and bad != "\r" else ".json"
            raise ValueError(
                f"per-query file {path}: query id {qid!r} contains {bad!r}, which a {suffix} table cannot hold; "
                f"save as {other} instead"
            )


def load_per_query(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Read a file written by :func:`save_per_query` (JSON, TSV or CSV, detected from the content).

    Returns:
        ``(per_query, meta)``; ``meta`` is empty for TSV and CSV files.

    Raises:
        ValueError: If the file is not a per-query results file (message names file and line), holds
            a value that is not a finite number (``NaN``, ``Infinity``: naming the query and metric), or
            holds a query twice: a repeated row of a table or a repeated key of a JSON object (a query id,
            a metric of one query, a meta field), naming it and its line; the last would win silently.

    Examples:
        >>> load_per_query("runs/bm25.scifact.json")  # doctest: +SKIP
    """
    p = Path(path)
    try:  # a byte-order mark (a CSV saved by Excel) is dropped; line ends are kept as they are (the csv reader
        # takes a quoted line feed as part of its field; a TSV line ends at "\n" alone, see below)
        with p.open(encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValueError(f"{p}: cannot read per-query file ({exc})") from None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
        except _DuplicateKeyError as exc:
            raise ValueError(exc.describe(p, text)) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("per_query"), dict):
            raise ValueError(f'{p}: expected a JSON object with a "per_query" mapping')
        meta = doc.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f'{p}: "meta" must be a JSON object; got {type(meta).__name__}')
        return _per_query_numbers(p, doc["per_query"]), dict(meta or {})
    if text.startswith("query_id,"):  # CSV (save_per_query with a .csv suffix): quoted fields, one row a line
        rows = [row for row in csv.reader(io.StringIO(text, newline=""))]
    else:
        # split at "\n" alone (str.splitlines also splits at \x1c, \x85, U+2028, ... which an id may hold)
        lines = [ln.removesuffix("\r") for ln in text.split("\n")]
        if not lines or not lines[0].startswith("query_id"):
            raise ValueError(f"{p}, line 1: expected a TSV header starting with 'query_id' (or a CSV one)")
        rows = [line.split("\t") if line.strip() else [] for line in lines]
    names = rows[0][1:]
    out: dict[str, dict[str, float]] = {}
    first_line: dict[str, int] = {}
    for lineno, cols in enumerate(rows[1:], start=2):
        if not cols:
            continue
        if len(cols) != len(names) + 1:
            raise ValueError(f"{p}, line {lineno}: expected {len(names) + 1} columns, got {len(cols)}")
        if cols[0] in first_line:
            raise ValueError(
                f"{p}, line {lineno}: query {cols[0]!r} repeats line {first_line[cols[0]]}; a per-query file holds "
                "one row per query (the last row would win silently)"
            )
        first_line[cols[0]] = lineno
        row: dict[str, float] = {}
        for name, v in zip(names, cols[1:], strict=True):
            if v == "":
                continue
            try:
                value = float(v)
            except ValueError:
                raise ValueError(f"{p}, line {lineno}: a value is not a number") from None
            if not math.isfinite(value):
                raise ValueError(
                    f"{p}, line {lineno}: query {cols[0]!r}, metric {name!r}: {v!r} is not a finite number"
                )
            row[name] = value
        out[cols[0]] = row
    return out, {}


class _DuplicateKeyError(ValueError):
    """A key repeated in one object of a JSON per-query file (:func:`_unique_keys`)."""

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(key)
        self.key = key
        self.is_object = isinstance(value, dict)  # a query's row (or the meta's qpp): an object

    def describe(self, path: Path, text: str) -> str:
        """The message: the key, what it is, and for a query id the line of its second row when it can be found."""
        lines: list[int] = []
        if self.is_object:  # a query's row: the key followed by an object (a metric's is followed by a number)
            for spelling in dict.fromkeys((json.dumps(self.key), json.dumps(self.key, ensure_ascii=False))):
                found = re.finditer(re.escape(spelling) + r"\s*:\s*\{", text)
                lines = [text.count("\n", 0, m.start()) + 1 for m in found]
                if len(lines) >= 2:
                    break
        where = f", line {lines[1]}" if len(lines) >= 2 else ""
        what = f"query id {self.key!r}" if self.is_object else f"key {self.key!r}"
        return (
            f"{path}{where}: {what} appears twice in one JSON object; a per-query file holds each query once, and "
            "each metric of a query and each meta field once (the last would win silently)"
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object as a dict, refusing a repeated key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key, value)
        out[key] = value
    return out


#: The Unicode categories of characters a TREC id may not hold: control characters, which corrupt the line for
#: ``trec_eval`` and terminals, and lone surrogates (``"\\ud800"`` from a JSON escape), which UTF-8 cannot write.
_BAD_ID = {"Cc": "a control character", "Cs": "a lone surrogate, which UTF-8 cannot encode"}


def check_trec_ids(ids: Iterable[Any], what: str, flag: str | None = None) -> None:
    """Refuse ids a TREC run file cannot hold: empty, containing whitespace (its column separator), a
    control character (Unicode category ``Cc``: NUL, ESC, DEL...), which corrupts the line for ``trec_eval``
    and terminals, or a lone surrogate (``Cs``), which cannot be written as UTF-8.

    Args:
        ids: Query or document ids.
        what: ``"query"`` or ``"document"`` (for the message).
        flag: The option that asked for the file, named first in the message (e.g. ``"--save-run"``).

    Raises:
        ValueError: Naming the first bad id.

    Examples:
        >>> check_trec_ids(["d1", "d2"], "document")
        >>> check_trec_ids(["d 1"], "document")
        Traceback (most recent call last):
        ValueError: document id 'd 1' contains whitespace, the TREC column separator; a run file cannot hold it
        >>> check_trec_ids(["d\\x001"], "document")
        Traceback (most recent call last):
        ValueError: document id 'd\\x001' contains a control character ('\\x00'); a run file holds ids of ...
    """
    for ident in ids:
        text = str(ident)
        prefix = f"{flag}: " if flag else ""
        if text.split() != [text]:
            problem = "is empty" if not text.strip() else "contains whitespace, the TREC column separator"
            raise ValueError(f"{prefix}{what} id {text!r} {problem}; a run file cannot hold it")
        bad = None if text.isprintable() else next((c for c in text if unicodedata.category(c) in _BAD_ID), None)
        if bad is not None:
            kind = _BAD_ID[unicodedata.category(bad)]
            raise ValueError(
                f"{prefix}{what} id {text!r} contains {kind} ({bad!r}); a run file holds ids of "
                "printable characters without whitespace"
            )


def _per_query_numbers(path: Path, per_query: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A JSON per-query mapping checked: each query maps to an object of metric -> finite number."""
    out: dict[str, dict[str, float]] = {}
    for qid, values in per_query.items():
        if not isinstance(values, dict):
            raise ValueError(
                f'{path}: "per_query" entry {qid!r} must be an object of metric -> number; '
                f"got {type(values).__name__} {values!r}"
            )
        row: dict[str, float] = {}
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: query {qid!r}, metric {metric!r}: expected a number; got {value!r}")
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
            if not math.isfinite(number):  # json reads NaN, Infinity and -Infinity
                raise ValueError(f"{path}: query {qid!r}, metric {metric!r}: expected a finite number; got {value!r}")
            row[str(metric)] = number
        out[str(qid)] = row
    return out


def write_trec_run(path: str | os.PathLike[str], run: Mapping[str, Mapping[str, float]], tag: str = "kl") -> None:
    """Write a run in TREC format (``qid Q0 docid rank score tag``), best first.

    Tied scores are ranked by document id descending, compared as text (``"9"`` before ``"10"``, also for
    ``int`` ids), the order :func:`evaluate_run` and ``trec_eval`` read them in, so the rank column is the
    rank that was scored.

    The file is written atomically (a failed write leaves a previous file whole) and its parent
    folders are created. Scores are written as Python floats (``0.5``, also for numpy scalars).

    The tag's whitespace and control characters are replaced with ``_`` (an empty tag is ``run``).

    Raises:
        ValueError: A query or document id that is empty or contains whitespace, a control character
            or a lone surrogate (:func:`check_trec_ids`), a tag holding a lone surrogate (``"\\ud800"``,
            which UTF-8 cannot encode), a score that is not a finite number (naming the query and
            document), or two query ids, or two document ids of one query, that are one id as text (``1``
            and ``"1"``: the file would hold it twice, which ``trec_eval`` refuses); nothing is written then.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_trec_run(Path(tmp) / "run.trec", {"q": {"a": 1.0, "b": 2.0}}, tag="t")
        ...     first = (Path(tmp) / "run.trec").read_text().splitlines()[0]
        >>> first
        'q Q0 b 1 2.0 t'
    """
    check_trec_ids(run, "query")
    _check_id_collisions(run, "run: query", "written as one query")
    for qid, docs in run.items():
        check_trec_ids(docs, "document")
        _check_id_collisions(docs, f"run: query {qid!r}, document", "written twice for one query")
        for doc, score in docs.items():
            if not math.isfinite(score):
                raise ValueError(
                    f"run: query {qid!r}, document {doc!r} has score {score}; a TREC run holds finite numbers only"
                )
    bad = next((c for c in tag if unicodedata.category(c) == "Cs"), None)
    if bad is not None:  # from a name decoded with errors="surrogateescape": the file could not be written
        raise ValueError(
            f"run tag {tag!r} contains {_BAD_ID['Cs']} ({bad!r}); a run file's tag holds characters UTF-8 can "
            "encode (its whitespace and control characters are written as '_')"
        )
    tag = "".join("_" if unicodedata.category(c) == "Cc" else c for c in "_".join(tag.split())) or "run"
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:  # parents created; no torn file
        for qid, docs in run.items():
            # ties by id descending as text, as evaluate_run and trec_eval rank them (an int id sorts as its str)
            ranked = sorted(docs.items(), key=lambda kv: (float(kv[1]), str(kv[0])), reverse=True)
            for rank, (doc, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {float(score)!r} {tag}\n")  # 0.5, not np.float32(0.5)
