"""``kl-retrievers evaluate``: score a Gaussian model (exact -KL) or a baseline on a BEIR folder.

The command-line layer over :mod:`kl_retrievers.evaluation` (metrics, exact retrieval, the
paired test) and :mod:`kl_retrievers.baselines`; nothing in the library imports it.
:mod:`kl_retrievers.cli` registers it with :func:`add_evaluate_command`.

Examples:
    >>> parser = argparse.ArgumentParser(prog="kl-retrievers")
    >>> _ = add_evaluate_command(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["evaluate", "data", "--baseline", "bm25"]).func.__name__
    'run_evaluate'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kl_retrievers.baselines import run_baseline
from kl_retrievers.cli_common import add_model_backend_argument, args_subset, positive_int, token_budget
from kl_retrievers.datasets import DatasetError, load_beir
from kl_retrievers.encoding_cache import CACHE_ENV
from kl_retrievers.evaluation import (
    DEFAULT_METRICS,
    EvaluationResult,
    evaluate_model,
    evaluate_run,
    load_per_query,
    paired_test,
    save_per_query,
    write_trec_run,
)

__all__ = ["add_evaluate_command", "run_evaluate"]

logger = logging.getLogger(__name__)


_EVALUATE_HELP = "Evaluate a Gaussian model (exact -KL) or a baseline on a BEIR folder."


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
    p = subparsers.add_parser("evaluate", help=_EVALUATE_HELP, description=_EVALUATE_HELP)
    p.add_argument("dataset_dir", metavar="DATASET_DIR", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        metavar="M",
        help="Gaussian encoder: bundled model name, local folder or hub id (default: the package default model)",
    )
    which.add_argument("--baseline", choices=["bm25", "minilm", "bge-small"], help="evaluate a baseline instead")
    p.add_argument("--means-only", action="store_true", help="ablation: rank by -||mu_q - mu_d||^2, ignore variances")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--per-query", metavar="FILE", help="save per-query metrics (.json, or .tsv by suffix)")
    p.add_argument("--compare", metavar="RUN_FILE", help="per-query file of another system: paired t-test against it")
    p.add_argument("--save-run", metavar="FILE", help="also write the retrieved run in TREC format")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="encoding batch size (default: 32)")
    p.add_argument(
        "--max-length",
        type=token_budget,
        default=None,
        metavar="N",
        help="document token limit (default: the model's own)",
    )
    p.add_argument(
        "--query-max-length",
        type=token_budget,
        default=None,
        metavar="N",
        help="query token limit (default: the model's own)",
    )
    p.add_argument("--depth", type=int, default=100, metavar="K", help="documents retrieved per query (default: 100)")
    p.add_argument("--cache-dir", default=None, help=f"encoding cache (default: ${CACHE_ENV} or ~/.cache/...)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the encoding cache")
    p.add_argument(
        "--unknown-docs",
        choices=["error", "drop"],
        default="error",
        help="qrels naming documents outside the corpus: fail (default) or drop them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    add_model_backend_argument(p, "--backend", default="torch")
    p.set_defaults(func=run_evaluate)
    return p


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def _print_table(summary: Mapping[str, Any], metrics: Iterable[str], compare: Mapping[str, Any] | None) -> None:
    print(f"dataset: {summary['dataset']}  split: {summary['split']}  queries: {summary['queries']}")
    print(f"model:   {summary['model']}")
    for name in metrics:
        print(f"  {name:<11} {summary[name]:.4f}")
    if compare:
        print(f"compared with {compare['file']} ({compare.get('model') or 'unnamed'}):")
        for name, res in compare["tests"].items():
            print(
                f"  {name:<11} {res['mean_a']:.4f} vs {res['mean_b']:.4f}  diff {res['mean_diff']:+.4f}  "
                f"p = {res['p_value']:.4g}  (n = {res['n']})"
            )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``kl-retrievers evaluate`` from parsed arguments.

    Returns:
        0 on success, 2 on bad input (missing or malformed dataset or comparison file).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_evaluate_command(parser.add_subparsers())
        >>> args = parser.parse_args(["evaluate", "../shared/datasets/scifact", "--baseline", "bm25", "--json"])
        >>> run_evaluate(args)  # doctest: +SKIP
        0
    """
    _setup_logging(args.quiet)
    show = not args.quiet
    if args.depth < 1:
        print(
            f"kl-retrievers evaluate: error: --depth must be an integer >= 1 (documents per query); got {args.depth}",
            file=sys.stderr,
        )
        return 2
    try:
        dataset = load_beir(args.dataset_dir, args.split, unknown_docs=args.unknown_docs)
    except DatasetError as exc:
        print(f"kl-retrievers evaluate: error: {exc}", file=sys.stderr)
        return 2
    other: tuple[dict[str, dict[str, float]], dict[str, Any]] | None = None
    if args.compare:
        try:
            other = load_per_query(args.compare)
        except ValueError as exc:
            print(f"kl-retrievers evaluate: error: {exc}", file=sys.stderr)
            return 2
    cache_dir = args.cache_dir
    use_cache = not args.no_cache
    if args.baseline:
        if args.means_only:
            print(
                "kl-retrievers evaluate: error: --means-only applies to Gaussian models, not baselines", file=sys.stderr
            )
            return 2
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
        aggregate, per_query = evaluate_run(dataset.qrels, run)
        info = {"seconds": round(time.perf_counter() - t0, 2)}
        result = EvaluationResult(str(dataset.path), dataset.split, label, aggregate, per_query, run, info)
    else:
        from kl_retrievers.pretrained import load_model

        encoder = load_model(args.model, backend=getattr(args, "model_backend", "torch"))
        result = evaluate_model(
            encoder,
            dataset,
            k=args.depth,
            cache_dir=cache_dir,
            use_cache=use_cache,
            show_progress=show,
            **args_subset(args, "means_only", "batch_size", "max_length", "query_max_length"),
        )
    summary = result.summary()
    from kl_retrievers.qpp import per_query_with_predictors, qpp_for_run

    qpp, qpp_values = qpp_for_run(
        result.run,
        result.per_query,
        query_ids=dataset.query_ids,
        query_texts=dataset.query_texts(),
        corpus_texts=dataset.document_texts(),
        query_stats=result.query_stats,
        missing_uncertainty=f"the {args.baseline} baseline has no variances" if args.baseline else None,
    )
    summary["qpp"] = qpp
    if args.per_query:
        pq_out = per_query_with_predictors(result.per_query, qpp_values)  # with each query's uncertainty
        save_per_query(args.per_query, pq_out, meta={k: v for k, v in summary.items()})
        logger.info("per-query results written to %s", args.per_query)
    if args.save_run:
        write_trec_run(args.save_run, result.run, tag=result.model)
        logger.info("run written to %s", args.save_run)
    compare: dict[str, Any] | None = None
    if other is not None:
        other_pq, other_meta = other
        tests: dict[str, Any] = {}
        for name in DEFAULT_METRICS:
            try:
                tests[name] = paired_test(result.per_query, other_pq, name).to_dict()
            except ValueError as exc:
                logger.warning("no paired test for %s: %s", name, exc)
        compare = {"file": str(args.compare), "model": other_meta.get("model"), "tests": tests}
        summary["compare"] = compare
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_table(summary, DEFAULT_METRICS, compare)
    sys.stdout.flush()
    return 0
