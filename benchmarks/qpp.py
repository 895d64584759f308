"""Query performance prediction on the four dev collections: does the query uncertainty mean something?

For one Gaussian model (``--model``: a bundled name or a folder; default: the package default)
it evaluates the test split of scifact, nfcorpus-preprocessed, cranfield and
trec-dl21-passage-pooled exactly as ``kl-retrievers evaluate --json`` does (same encoding
cache, same exact -KL retrieval, same :func:`kl_retrievers.qpp.qpp_for_run`), and prints the
Kendall tau of every predictor against per-query nDCG@10 on each collection, then, last, one line::

    tau_uncertainty=X tau_best_baseline=Y ndcg_delta=Z

X: the mean over the four collections of the query uncertainty's tau (oriented: a positive tau
means the more uncertain queries score lower); Y: the largest such mean among the
post-retrieval predictors (max_score, nqc, gap12, wig) on the same runs; Z: the mean nDCG@10
change of the model against today's default (``minilm-gauss-soup``; 0 for the default itself).

Logs (small, committed): one JSON line per (model, collection, split) in ``runs/qpp/qpp.jsonl``
(aggregate metrics, the QPP report, the command) and a per-query file of that run's own,
``runs/qpp/<model>.<collection>.<split>.<UTC start>Z.json`` (each query's metrics and raw predictor
values, the uncertainty included), which the line names (``per_query_file``); an existing file is never
overwritten (lines logged before this naming name ``runs/qpp/<model>.<collection>.<split>.json``, which each
run then rewrote). ``--quick`` reuses a logged result of the same model and split when there is one (it
prints the newest logged line, recomputing nothing), and evaluates and logs only what is missing; without it
every collection is evaluated again and logged (encodings still come from the cache). A ``--split`` that a
collection to evaluate lacks, or a ``--model`` that does not load, stops the run before anything is evaluated
(exit status 2).

Examples:
    python benchmarks/qpp.py --quick
    python benchmarks/qpp.py --quick --model path/to/model-folder
    python benchmarks/qpp.py --collections scifact --split train   # the zero-shot dev set
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers.datasets import BeirDataset, DatasetError, available_splits, load_beir
from kl_retrievers.evaluation import (
    evaluate_run,
    load_per_query,
    model_fingerprint,
    paired_test,
    retrieve_exact,
    save_per_query,
)
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.qpp import PREDICTORS, format_qpp, gaussian_query_stats, per_query_with_predictors, qpp_for_run

logger = logging.getLogger("benchmarks.qpp")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
LOG_DIR = ROOT / "runs" / "qpp"
COLLECTIONS = ("scifact", "nfcorpus-preprocessed", "cranfield", "trec-dl21-passage-pooled")
SHORT = {"nfcorpus-preprocessed": "nfcorpus", "trec-dl21-passage-pooled": "trec-dl21"}
#: Today's default (the reference of ndcg_delta); fixed here so that a later default change does not move it.
REFERENCE_MODEL = "minilm-gauss-soup"


def slug(name: str) -> str:
    """A file-name-safe label of a model name or folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name if "/" in name else name).strip("_") or "model"


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def per_query_path(log_dir: Path, label: str, collection: str, split: str, started: time.struct_time) -> Path:
    """The per-query file of one run: its label, collection, split and UTC start (one file per run).

    Examples:
        >>> per_query_path(Path("runs/qpp"), "m+mc20", "scifact", "test", time.gmtime(0)).name
        'm_mc20.scifact.test.19700101T000000Z.json'
    """
    return log_dir / f"{slug(label)}.{collection}.{split}.{time.strftime('%Y%m%dT%H%M%S', started)}Z.json"


def read_log(log_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``qpp.jsonl`` (oldest first)."""
    path = log_dir / "qpp.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def latest(records: Sequence[Mapping[str, Any]], model: str, collection: str, split: str) -> dict[str, Any] | None:
    """The newest record of ``(model, collection, split)``."""
    found = [r for r in records if (r["model"], r["collection"], r["split"]) == (model, collection, split)]
    return dict(found[-1]) if found else None


def evaluate_gaussians(
    label: str,
    dataset: BeirDataset,
    queries: Gaussians,
    documents: Gaussians,
    *,
    k: int = 100,
    log_dir: Path = LOG_DIR,
    extra: Mapping[str, Any] | None = None,
    extra_predictors: Mapping[str, Mapping[str, float]] | None = None,
    directions: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Retrieve exactly by -KL, score, run every QPP predictor and log the record.

    Experiments call this with their own query Gaussians (e.g. new query variances beside
    the default's document encodings), so that every number comes from the same code path.

    Args:
        label: Model label used in the log and the per-query file name.
        dataset: The loaded split.
        queries: Query Gaussians in ``dataset.query_ids`` order.
        documents: Document Gaussians in ``dataset.doc_ids`` order.
        k: Retrieval depth.
        log_dir: Where ``qpp.jsonl`` and the per-query file (:func:`per_query_path`: named by the run's
            UTC start) go.
        extra: Extra fields of the record (e.g. the model fingerprint, the recipe).
        extra_predictors: More predictors (name -> {query id: value}), reported beside the standard ones.
        directions: Their orientation (+1: higher predicts better, the default; -1: lower does).

    Returns:
        The record written to ``qpp.jsonl``.

    Raises:
        FileExistsError: The run's per-query file exists already (another run of the same label, collection and
            split started in the same second); nothing is written.
    """
    collection = Path(dataset.path).name
    pq_file = per_query_path(log_dir, label, collection, dataset.split, time.gmtime())
    claim = _refuse_existing(pq_file)
    try:
        t0 = time.perf_counter()
        stats = gaussian_query_stats(queries, documents, dataset.query_ids)
        run = retrieve_exact(queries, documents, dataset.query_ids, dataset.doc_ids, k)
        aggregate, per_query = evaluate_run(dataset.qrels, run)
        report, values = qpp_for_run(
            run,
            per_query,
            query_ids=dataset.query_ids,
            query_texts=dataset.query_texts(),
            corpus_texts=dataset.document_texts(),
            query_stats=stats,
            qrels=dataset.qrels,
            depth=k,
        )
        if extra_predictors:
            from kl_retrievers.qpp import qpp_report

            more = qpp_report({q: m["ndcg@10"] for q, m in per_query.items()}, extra_predictors, directions=directions)
            report["predictors"].update(more["predictors"])
            report["missing"].update(more["missing"])
            values.update({n: dict(v) for n, v in extra_predictors.items()})
        record: dict[str, Any] = {
            "model": label,
            "collection": collection,
            "split": dataset.split,
            "queries": len(per_query),
            **{name: round(v, 6) for name, v in aggregate.items()},
            "qpp": report,
            "seconds": round(time.perf_counter() - t0, 2),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "commit": git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **dict(extra or {}),
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        pq = per_query_with_predictors(
            per_query, {n: {q: round(x, 8) for q, x in v.items()} for n, v in values.items()}
        )
        _refuse_existing(pq_file)
        save_per_query(pq_file, pq, meta={k: v for k, v in record.items() if k != "qpp"})
        record["per_query_file"] = str(pq_file.relative_to(ROOT)) if pq_file.is_relative_to(ROOT) else str(pq_file)
        with (log_dir / "qpp.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return record
    finally:  # a run that raised (or was interrupted) leaves no placeholder behind
        _release_claim(pq_file, claim)


def _refuse_existing(path: Path) -> str:
    """Claim ``path`` for this run, or raise ``FileExistsError``: a per-query file is never overwritten.

    The claim is atomic (``open(path, "x")``): a placeholder naming this process and thread, which the run's
    per-query file then replaces, so that of two runs starting in the same second only one gets the name. A
    second call from the thread that claimed it passes while the placeholder is there (:func:`evaluate_gaussians`
    checks before evaluating and again before writing); a run that fails in between removes it
    (:func:`_release_claim`).

    Returns:
        The placeholder's text, for :func:`_release_claim`.
    """
    import os
    import threading

    claim = f"claimed by process {os.getpid()} thread {threading.get_ident()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as fh:
            fh.write(claim)
    except FileExistsError:
        if path.read_text(encoding="utf-8", errors="replace") != claim:
            raise FileExistsError(f"{path} exists: not overwriting the per-query file of an earlier run") from None
    return claim


def _release_claim(path: Path, claim: str) -> None:
    """Remove ``path`` if it still holds this run's placeholder ``claim`` (or is empty), e.g. after a run that raised.

    A per-query file the run wrote (or another run's claim) stays.
    """
    try:
        if path.read_text(encoding="utf-8", errors="replace") in (claim, ""):
            path.unlink()
    except FileNotFoundError:
        pass


@functools.lru_cache(maxsize=2)
def load_encoder(model: str) -> Any:
    """The torch encoder of ``model`` (the logged runs are the torch encoder's, float32), loaded once per run."""
    from kl_retrievers.pretrained import load_model

    return load_model(model, backend="torch")


def evaluate_model_name(model: str, collection: str, split: str, *, log_dir: Path, batch_size: int) -> dict[str, Any]:
    """Encode (through the cache) and evaluate one model on one collection split."""
    from kl_retrievers.evaluation import encode_dataset

    encoder = load_encoder(model)
    dataset = load_beir(DATASETS / collection, split)
    t0 = time.perf_counter()
    q, d = encode_dataset(encoder, dataset, batch_size=batch_size, show_progress=False)
    logger.info("%s on %s/%s: encodings ready in %.1f s", model, collection, split, time.perf_counter() - t0)
    return evaluate_gaussians(model, dataset, q, d, log_dir=log_dir, extra={"fingerprint": model_fingerprint(encoder)})


def get_record(model: str, collection: str, split: str, *, quick: bool, log_dir: Path, batch_size: int) -> dict:
    """A logged record when ``quick`` and one exists, else a fresh evaluation."""
    if quick:
        rec = latest(read_log(log_dir), model, collection, split)
        if rec is not None:
            return rec
    return evaluate_model_name(model, collection, split, log_dir=log_dir, batch_size=batch_size)


def check_inputs(
    parser: argparse.ArgumentParser,
    models: Sequence[str],
    collections: Sequence[str],
    split: str,
    *,
    quick: bool,
    log_dir: Path,
) -> None:
    """Exit through ``parser.error`` (status 2) when a run would fail after loading or evaluating anything.

    Only what :func:`get_record` will evaluate is checked (``quick`` reuses logged records; the first of
    ``models`` follows ``quick``, the others, the reference, always reuse): each such collection must have
    ``split``, and each such model must load.
    """
    records = read_log(log_dir)
    todo = [
        (model, coll)
        for i, model in enumerate(models)
        for coll in collections
        if not ((quick or i > 0) and latest(records, model, coll, split) is not None)
    ]
    for coll in dict.fromkeys(c for _, c in todo):
        try:
            splits = available_splits(DATASETS / coll)
        except DatasetError as exc:
            parser.error(f"{coll}: {exc}")
        if split not in splits:
            parser.error(f"--split {split!r}: {coll} has no such qrels split; available splits: {splits}")
    for model in dict.fromkeys(m for m, _ in todo):
        try:
            load_encoder(model)
        except (OSError, ValueError) as exc:  # ModelNotFoundError is an OSError, NotAnEncoderError a ValueError
            parser.error(f"--model {model!r} does not load: {str(exc).splitlines()[0]}")


def summarise(
    records: Mapping[str, Mapping[str, Any]], reference: Mapping[str, Mapping[str, Any]] | None
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Mean tau per predictor over the collections, and the headline numbers."""
    names = list(dict.fromkeys(n for r in records.values() for n in r["qpp"]["predictors"]))
    mean_tau: dict[str, float | None] = {}
    for name in names:
        taus = [r["qpp"]["predictors"].get(name, {}).get("tau") for r in records.values()]
        mean_tau[name] = float(np.mean(taus)) if taus and all(t is not None for t in taus) else None
    post = {n: t for n, t in mean_tau.items() if PREDICTORS.get(n, {}).get("kind") == "post" and t is not None}
    best = max(post, key=lambda n: post[n]) if post else None
    deltas = []
    if reference is not None:
        deltas = [records[c]["ndcg@10"] - reference[c]["ndcg@10"] for c in records]
    head = {
        "tau_uncertainty": mean_tau.get("uncertainty"),
        "best_baseline": best,
        "tau_best_baseline": post.get(best) if best else None,
        "ndcg_delta": float(np.mean(deltas)) if deltas else None,
    }
    return mean_tau, head


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="print the newest logged result of the same model, collection and split where there is one (nothing "
        "is recomputed); evaluate and log only the missing ones. Without it every collection is evaluated again",
    )
    p.add_argument("--model", default=REFERENCE_MODEL, help=f"bundled name or folder (default: {REFERENCE_MODEL})")
    p.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=COLLECTIONS, metavar="NAME")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--log-dir", type=Path, default=LOG_DIR, help="where the logs go (default: runs/qpp)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--verbose", action="store_true", help="print each collection's full QPP table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = [args.model] + ([REFERENCE_MODEL] if args.model != REFERENCE_MODEL else [])
    check_inputs(p, models, args.collections, args.split, quick=args.quick, log_dir=args.log_dir)

    records: dict[str, dict[str, Any]] = {}
    refs: dict[str, dict[str, Any]] = {}
    for coll in args.collections:
        records[coll] = get_record(
            args.model, coll, args.split, quick=args.quick, log_dir=args.log_dir, batch_size=args.batch_size
        )
        if args.model != REFERENCE_MODEL:
            refs[coll] = get_record(
                REFERENCE_MODEL, coll, args.split, quick=True, log_dir=args.log_dir, batch_size=args.batch_size
            )
    reference = refs if args.model != REFERENCE_MODEL else records
    mean_tau, head = summarise(records, reference)

    names = list(mean_tau)
    print(f"model: {args.model}  split: {args.split}  (Kendall tau-b against per-query nDCG@10; oriented)")
    print(f"{'collection':<12} {'nDCG@10':>8} {'delta':>8} {'p':>7} " + " ".join(f"{n:>11}" for n in names))
    for coll, rec in records.items():
        pred = rec["qpp"]["predictors"]
        taus = " ".join(
            f"{pred[n]['tau']:>+11.3f}" if n in pred and pred[n]["tau"] is not None else f"{'n/a':>11}" for n in names
        )
        delta, pval = 0.0, float("nan")
        if args.model != REFERENCE_MODEL:
            delta = rec["ndcg@10"] - reference[coll]["ndcg@10"]
            a, _ = load_per_query(ROOT / rec["per_query_file"])
            b, _ = load_per_query(ROOT / reference[coll]["per_query_file"])
            pval = paired_test(a, b, "ndcg@10").p_value
        print(f"{SHORT.get(coll, coll):<12} {rec['ndcg@10']:>8.4f} {delta:>+8.4f} {pval:>7.3f} {taus}")
        if args.verbose:
            print(format_qpp(rec["qpp"]))
    means = " ".join(f"{t:>+11.3f}" if t is not None else f"{'n/a':>11}" for t in mean_tau.values())
    print(f"{'mean':<12} {'':>8} {'':>8} {'':>7} {means}")
    print(f"best post-retrieval predictor: {head['best_baseline']}")

    def fmt(v: float | None) -> str:
        return "nan" if v is None else f"{v:.4f}"

    print(
        f"tau_uncertainty={fmt(head['tau_uncertainty'])} tau_best_baseline={fmt(head['tau_best_baseline'])} "
        f"ndcg_delta={fmt(head['ndcg_delta'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
