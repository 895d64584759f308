"""Hard Gaussians: where float32 strains the flat stores, ``KLStore`` and ``MilvusKLStore`` side by side.

The figures the 2026-12-06/07 commits quote for the flat search (7757de9, b1bb5fc, e5ba025) came from scratch
scripts; this one measures them from the repository, in one run:

a. **Means sharing a large offset** (``--offset-docs`` 2,000 documents of dimension ``--offset-dim`` 32, means
   ``30 + 0.01 N(0, 1)``, unit variances; ``--offset-queries`` 20 queries, the first documents' means moved by
   ``0.005 N(0, 1)``): recall@10 against float64 brute-force ``-KL`` (every document scored in float64,
   ``ann.float64_top_k``) of the flat ``KLStore``, of a flat ``MilvusKLStore`` (Milvus Lite, inner product,
   as ``benchmarks/milvus.py`` uses it) by default and with ``prove_flat=True``, and of an inner-product
   collection holding the uncentred rows that collections before 7757de9 held (format version 2, written
   directly): the "before" figure.
b. **One document, wide scales** (dimension ``--wide-dim`` 16, means of magnitude 10 to 100 with random signs,
   variances log-uniform from ``1e-4`` to ``1e4``; the query near it): its score from ``KLStore``, from
   ``MilvusKLStore`` with inner product and with L2, and from the uncentred inner-product rows, each against
   ``KLStore``'s score and against the float64 ``-KL`` of the Gaussians as given (relative differences), for
   ``--wide-trials`` 5 such documents (seeds ``--seed`` onwards), each alone in its stores: the first one's and the
   median and largest over all.
c. **A flat ``KLStore`` whose centre was set by a deleted document**: one document at mean 0 added first (its
   mean is the flat index's centre), then ``--recentre-docs`` 20,000 documents of dimension ``--recentre-dim`` 64
   at ``100 + 0.1 N(0, 1)`` (unit variances); ``--recentre-queries`` 50 queries near them. Time of a batch of
   the queries with the outlier in the store, after ``delete`` (one tombstone: no compaction), and after
   ``rebuild()`` (centred again on the live documents), beside a store of the 20,000 alone; the number of
   queries of the batch that fell back to float64 scoring (counted from ``kl_retrievers.gaussian``'s DEBUG
   record "N query(ies): float32 candidates not provably enough", in one more, untimed search).
d. **``prove_flat``'s price on ordinary data** (full run only, or ``--parts d``): a flat inner-product
   ``MilvusKLStore`` of ``--prove-docs`` 20,000 documents of dimension ``--prove-dim`` 384 (means
   ``N(0, 0.3^2)``, log-variances ``N(0, 0.5^2)``; queries are documents' means moved by ``N(0, 0.3^2)`` with
   fresh log-variances), searched with ``k = 10`` by a client without ``prove_flat`` and then by one with
   ``prove_flat=True`` (the same collection, warm by then: its batch is timed once, as it can take minutes),
   beside the flat ``KLStore``: the time of a batch of ``--prove-queries`` 20 queries, recall@10 against float64
   brute force, and how many queries had every row scored in float64 (the store's INFO record "scoring all N
   matching rows"; a pool it could not prove, widened 8 times, still unproven).

Every time is the best of ``--repeats`` batched ``search_batch`` calls after one untimed warm-up
(``ann.timed_search``), but for part d's ``prove_flat`` batch. Each measurement is appended as one JSON line to
``runs/hard_gaussians/hard_gaussians.jsonl`` (``--log`` elsewhere, ``--no-log`` none) with the command, the commit,
the UTC time, the CPU count and the load average.

Usage:
    python benchmarks/hard_gaussians.py --quick      # parts a, b, c: 35 s on 2 cores at load average 11
    python benchmarks/hard_gaussians.py              # a, b, c and d: 2 minutes more at load average 6
    python benchmarks/hard_gaussians.py --tiny --no-log   # every part on tiny sizes (seconds; the smoke test)

The last line printed is always
``offset_recall_milvus=... offset_recall_klstore=... offset_recall_uncentred=... score_rel_diff=...
recentre_time_ratio=... prove_flat_time_ratio=...``: part a's recalls (Milvus by default), part b's relative
difference of the inner-product Milvus score from ``KLStore``'s, part c's time after ``delete`` over the time after
``rebuild()``, part d's time with ``prove_flat=True`` over the time without (``nan`` for a part not run).
``score_rel_diff`` is the largest over part b's documents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ann import float64_top_k, recall, timed_search  # the float64 ground truth and timing of benchmarks/ann.py
from hybrid import ROOT, git_commit  # the benchmarks' one HEAD reader (benchmarks/hybrid.py)

from kl_retrievers.cli_common import non_negative_int, positive_int
from kl_retrievers.gaussian import Gaussians, kl_document_vectors, neg_kl
from kl_retrievers.index import KLStore

LOG = ROOT / "runs" / "hard_gaussians" / "hard_gaussians.jsonl"
PARTS = ("a", "b", "c", "d")
K = 10
#: Sizes of --tiny (the smoke test): every part in seconds.
TINY = {
    "offset_docs": 300,
    "offset_dim": 8,
    "offset_queries": 5,
    "wide_trials": 2,
    "recentre_docs": 500,
    "recentre_dim": 8,
    "recentre_queries": 5,
    "prove_docs": 300,
    "prove_dim": 16,
    "prove_queries": 5,
    "repeats": 1,
}
#: Defaults of the size options (the full run's and --quick's: --quick only leaves part d out).
SIZES = {
    "offset_docs": 2000,
    "offset_dim": 32,
    "offset_queries": 20,
    "wide_dim": 16,
    "wide_trials": 5,
    "recentre_docs": 20_000,
    "recentre_dim": 64,
    "recentre_queries": 50,
    "prove_docs": 20_000,
    "prove_dim": 384,
    "prove_queries": 20,
    "repeats": 3,
}


# ------------------------------------------------------------------ data
def offset_case(n: int, dim: int, nq: int, seed: int) -> tuple[Gaussians, Gaussians]:
    """Means ``30 + 0.01 N(0, 1)``, unit variances; queries: the first documents moved by ``0.005 N(0, 1)``.

    Example:
        >>> d, q = offset_case(50, 4, 3, seed=0)
        >>> len(d), len(q), bool(abs(float(d.mean.mean()) - 30) < 0.01)
        (50, 3, True)
    """
    rng = np.random.default_rng(seed)
    mean = 30 + 0.01 * rng.normal(size=(n, dim))
    q_mean = mean[np.arange(nq) % n] + 0.005 * rng.normal(size=(nq, dim))
    return Gaussians(mean, np.ones((n, dim))), Gaussians(q_mean, np.ones((nq, dim)))


def wide_case(dim: int, seed: int) -> tuple[Gaussians, Gaussians]:
    """One document with means of magnitude 10 to 100 (random signs), variances from ``1e-4`` to ``1e4``, and a
    query near it (means moved by ``0.05`` standard deviations, variances scaled by 0.5 to 2)."""
    rng = np.random.default_rng(seed)
    var = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), size=(1, dim)))
    mean = rng.choice([-1.0, 1.0], size=(1, dim)) * rng.uniform(10, 100, size=(1, dim))
    q_mean = mean + 0.05 * np.sqrt(var) * rng.normal(size=(1, dim))
    q_var = var * np.exp(rng.uniform(np.log(0.5), np.log(2), size=(1, dim)))
    return Gaussians(mean, var), Gaussians(q_mean, q_var)


def recentre_case(n: int, dim: int, nq: int, seed: int) -> tuple[Gaussians, Gaussians, Gaussians]:
    """The outlier (mean 0), ``n`` documents at ``100 + 0.1 N(0, 1)`` (unit variances), and queries near them."""
    rng = np.random.default_rng(seed)
    mean = 100 + 0.1 * rng.normal(size=(n, dim))
    q_mean = mean[rng.integers(0, n, nq)] + 0.05 * rng.normal(size=(nq, dim))
    outlier = Gaussians(np.zeros((1, dim)), np.ones((1, dim)))
    return outlier, Gaussians(mean, np.ones((n, dim))), Gaussians(q_mean, np.ones((nq, dim)))


def ordinary_case(n: int, dim: int, nq: int, seed: int) -> tuple[Gaussians, Gaussians]:
    """Means ``N(0, 0.3^2)``, log-variances ``N(0, 0.5^2)``; queries: documents' means moved by ``N(0, 0.3^2)``,
    fresh log-variances (float32, as an encoder gives them)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 0.3, size=(n, dim)).astype(np.float32)
    var = np.exp(rng.normal(0, 0.5, size=(n, dim))).astype(np.float32)
    q_mean = mean[rng.integers(0, n, nq)] + rng.normal(0, 0.3, size=(nq, dim)).astype(np.float32)
    q_var = np.exp(rng.normal(0, 0.5, size=(nq, dim))).astype(np.float32)
    return Gaussians(mean, var), Gaussians(q_mean, q_var)


# ------------------------------------------------------------------ helpers
def truth_ids(queries: Gaussians, docs: Gaussians, ids: Sequence[str], k: int = K) -> list[list[str]]:
    """The float64 brute-force top ``k`` of every query (``ann.float64_top_k``), as ids."""
    rows, _ = float64_top_k(queries, docs, min(k, len(docs)))
    return [[ids[j] for j in row] for row in rows]


class LogCounter(logging.Handler):
    """Adds up the first argument of the records whose message holds ``needle`` (a count of queries)."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.queries = 0

    def emit(self, record: logging.LogRecord) -> None:
        first = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if self.needle in str(record.msg) and isinstance(first, int):
            self.queries += first


def count_logged(name: str, level: int, needle: str, search: Callable[[], Any]) -> tuple[int, Any]:
    """Queries counted by the records of logger ``name`` holding ``needle`` during one call of ``search``, and
    what it returned. The records are counted, not printed."""
    counter = LogCounter(needle)
    log = logging.getLogger(name)
    old_level, propagate = log.level, log.propagate
    log.addHandler(counter)
    log.setLevel(level)
    log.propagate = False
    try:
        out = search()
    finally:
        log.removeHandler(counter)
        log.setLevel(old_level)
        log.propagate = propagate
    return counter.queries, out


def count_fallbacks(search: Callable[[], Any]) -> int:
    """Queries that :func:`kl_retrievers.gaussian.refine_top_k` sent to float64 scoring during ``search``."""
    return count_logged("kl_retrievers.gaussian", logging.DEBUG, "not provably enough", search)[0]


def count_scanned(search: Callable[[], Any]) -> tuple[int, Any]:
    """Queries whose every matching row a ``prove_flat`` Milvus search scored in float64 (its INFO record "scoring
    all N matching rows"), and what ``search`` returned."""
    return count_logged("kl_retrievers.store.milvus", logging.INFO, "scoring all", search)


def milvus(uri: Path, name: str, **kwargs: Any) -> Any:
    """A flat ``MilvusKLStore`` on the Milvus Lite file ``uri`` (collection ``name``)."""
    from kl_retrievers.milvus import MilvusKLStore

    return MilvusKLStore(uri=str(uri), collection_name=name, index_type="flat", insert_batch=2000, **kwargs)


def write_uncentred(uri: Path, name: str, docs: Gaussians, ids: Sequence[str]) -> None:
    """An inner-product collection holding the raw float32 ``d~`` of ``docs``, no centre (format version 2):
    what ``MilvusKLStore`` wrote before 7757de9, and still reads and searches as written."""
    from kl_retrievers.store.milvus import _CONFIG_KEY

    with milvus(uri, name, metric="IP", dim=docs.dim) as made:  # the empty collection, then its config as before
        config = json.loads(made.client.describe_collection(name)["properties"][_CONFIG_KEY])
        config.update(format_version=2, index_centre=None)
        made.client.alter_collection_properties(name, properties={_CONFIG_KEY: json.dumps(config)})
        raw = np.asarray(kl_document_vectors(docs)).astype(np.float32)
        for s in range(0, len(ids), 1000):
            rows = [
                {"id": i, "vector": v.tolist(), "text": None, "metadata": {}, "added": s + n}
                for n, (i, v) in enumerate(zip(ids[s : s + 1000], raw[s : s + 1000], strict=True))
            ]
            made.client.upsert(name, rows)


def search_row(store: Any, queries: Gaussians, truth: list[list[str]], repeats: int) -> dict[str, Any]:
    """Recall@10 against ``truth`` and the best batch time (``ann.timed_search``)."""
    found, secs = timed_search(store, queries, k=K, repeats=repeats)
    return {"recall": recall(found, truth), "batch_s": secs, "queries": len(queries)}


# ------------------------------------------------------------------ the parts
def part_offset(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    docs, queries = offset_case(args.offset_docs, args.offset_dim, args.offset_queries, args.seed)
    ids = [f"d{i}" for i in range(len(docs))]
    truth = truth_ids(queries, docs, ids)
    size = {"docs": len(docs), "dim": docs.dim}
    rows = []
    flat = KLStore(index_type="flat")
    flat.add(gaussians=docs, ids=ids)
    rows.append({"store": "KLStore flat", **size, **search_row(flat, queries, truth, args.repeats)})
    uri = workdir / "offset.db"
    with milvus(uri, "offset_ip", metric="IP") as store:
        store.add(gaussians=docs, ids=ids)
        rows.append({"store": "MilvusKLStore flat IP", **size, **search_row(store, queries, truth, args.repeats)})
        with milvus(uri, "offset_ip", prove_flat=True) as proved:  # a second client of the same collection
            row = search_row(proved, queries, truth, args.repeats)
            row["scanned_queries"] = count_scanned(lambda: proved.search_batch(queries, k=K))[0]
            rows.append({"store": "MilvusKLStore flat IP, prove_flat=True", **size, **row})
    write_uncentred(uri, "offset_uncentred", docs, ids)
    with milvus(uri, "offset_uncentred") as old:
        row = search_row(old, queries, truth, args.repeats)
        rows.append({"store": "MilvusKLStore flat IP, uncentred rows (before 7757de9)", **size, **row})
    return rows


def part_wide(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One row per store: the first trial's score, and per trial its relative differences."""
    uncentred = "MilvusKLStore flat IP, uncentred rows (before 7757de9)"
    names = ("KLStore flat", "MilvusKLStore flat IP", "MilvusKLStore flat L2", uncentred)
    scores: dict[str, list[float]] = {name: [] for name in names}
    given: list[float] = []
    uri = workdir / "wide.db"
    for trial in range(args.wide_trials):
        doc, query = wide_case(args.wide_dim, args.seed + trial)
        given.append(float(np.asarray(neg_kl(query, doc))[0]))  # float64, the Gaussians as given
        flat = KLStore(index_type="flat")
        flat.add(gaussians=doc, ids=["d"])
        scores[names[0]].append(flat.search(query, k=1)[0].score)
        for name, metric in zip(names[1:3], ("IP", "L2"), strict=True):
            with milvus(uri, f"wide_{metric.lower()}_{trial}", metric=metric) as store:
                store.add(gaussians=doc, ids=["d"])
                scores[name].append(store.search(query, k=1)[0].score)
        write_uncentred(uri, f"wide_uncentred_{trial}", doc, ["d"])
        with milvus(uri, f"wide_uncentred_{trial}") as old:
            scores[uncentred].append(old.search(query, k=1)[0].score)
    reference = np.asarray(scores[names[0]])
    rows = []
    for name, values in scores.items():
        got = np.asarray(values)
        to_klstore = np.abs(got - reference) / np.abs(reference)
        to_given = np.abs(got - np.asarray(given)) / np.abs(np.asarray(given))
        rows.append(
            {
                "store": name,
                "dim": args.wide_dim,
                "trials": args.wide_trials,
                "score": values[0],
                "neg_kl_as_given": given[0],
                "rel_diff_klstore": float(to_klstore[0]),
                "rel_diff_as_given": float(to_given[0]),
                "rel_diff_klstore_median": float(np.median(to_klstore)),
                "rel_diff_klstore_max": float(to_klstore.max()),
                "rel_diff_as_given_median": float(np.median(to_given)),
                "rel_diff_as_given_max": float(to_given.max()),
                "scores": values,
                "neg_kl_as_given_all": given,
            }
        )
    return rows


def part_recentre(args: argparse.Namespace) -> list[dict[str, Any]]:
    outlier, docs, queries = recentre_case(args.recentre_docs, args.recentre_dim, args.recentre_queries, args.seed)
    ids = [f"d{i}" for i in range(len(docs))]
    truth = truth_ids(queries, docs, ids)
    size = {"docs": len(docs), "dim": docs.dim}

    def measure(store: KLStore, state: str) -> dict[str, Any]:
        row = search_row(store, queries, truth, args.repeats)
        fallbacks = count_fallbacks(lambda: store.search_batch(queries, k=K))
        centre = np.asarray(store._engine.config()["flat_centre"], dtype=np.float64)  # as saved (benchmark only)
        return {
            "store": "KLStore flat",
            "state": state,
            **size,
            **row,
            "float64_fallbacks": fallbacks,
            "centre_mean": float(centre.mean()),
            "compactions": store.compaction_count,
        }

    alone = KLStore(index_type="flat")
    alone.add(gaussians=docs, ids=ids)
    rows = [measure(alone, f"the {len(docs)} documents alone")]
    del alone
    store = KLStore(index_type="flat")
    store.add(gaussians=outlier, ids=["outlier"])  # alone in the first batch: its mean 0 is the centre
    store.add(gaussians=docs, ids=ids)
    rows.append(measure(store, "outlier at 0 added first"))  # far from every query: never in a top 10
    store.delete(["outlier"])
    rows.append(measure(store, "outlier deleted"))
    t = time.perf_counter()
    store.rebuild()
    rebuild_s = time.perf_counter() - t
    rows.append({**measure(store, "after rebuild()"), "rebuild_s": rebuild_s})
    return rows


def part_prove(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    docs, queries = ordinary_case(args.prove_docs, args.prove_dim, args.prove_queries, args.seed)
    ids = [str(i) for i in range(len(docs))]
    truth = truth_ids(queries, docs, ids)
    size = {"docs": len(docs), "dim": docs.dim}
    flat = KLStore(index_type="flat")
    flat.add(gaussians=docs, ids=ids)
    rows = [{"store": "KLStore flat", **size, **search_row(flat, queries, truth, args.repeats)}]
    del flat
    uri = workdir / "prove.db"
    with milvus(uri, "prove_ip", metric="IP") as store:
        t = time.perf_counter()
        store.add(gaussians=docs, ids=ids)
        add_s = time.perf_counter() - t
        row = search_row(store, queries, truth, args.repeats)
        rows.append({"store": "MilvusKLStore flat IP", **size, **row, "add_s": add_s})
        with milvus(uri, "prove_ip", prove_flat=True) as proved:  # the collection is warm: one timed search
            t = time.perf_counter()
            scanned, res = count_scanned(lambda: proved.search_batch(queries, k=K))
            secs = time.perf_counter() - t
            found = [[h.id for h in hits] for hits in res]
            rows.append(
                {
                    "store": "MilvusKLStore flat IP, prove_flat=True",
                    **size,
                    "recall": recall(found, truth),
                    "batch_s": secs,
                    "queries": len(queries),
                    "scanned_queries": scanned,
                }
            )
    return rows


# ------------------------------------------------------------------ output
def _fmt(value: Any, column: str = "") -> str:
    if isinstance(value, float) and column == "score":
        return f"{value:.12f}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, ""), c) for c in columns) + " |")


def summary_line(results: dict[str, list[dict[str, Any]]]) -> str:
    """The last line printed: ``nan`` for a part not run.

    Example:
        >>> summary_line({}).split()[:2]
        ['offset_recall_milvus=nan', 'offset_recall_klstore=nan']
    """
    nan = float("nan")

    def pick(part: str, store: str, key: str, state: str | None = None) -> float:
        for r in results.get(part, []):
            if r["store"] == store and (state is None or r.get("state") == state):
                return float(r[key])
        return nan

    a = ("MilvusKLStore flat IP", "KLStore flat", "MilvusKLStore flat IP, uncentred rows (before 7757de9)")
    deleted = pick("c", "KLStore flat", "batch_s", "outlier deleted")
    rebuilt = pick("c", "KLStore flat", "batch_s", "after rebuild()")
    proved = pick("d", "MilvusKLStore flat IP, prove_flat=True", "batch_s")
    default = pick("d", "MilvusKLStore flat IP", "batch_s")
    return (
        f"offset_recall_milvus={pick('a', a[0], 'recall'):.3f} offset_recall_klstore={pick('a', a[1], 'recall'):.3f} "
        f"offset_recall_uncentred={pick('a', a[2], 'recall'):.3f} "
        f"score_rel_diff={pick('b', 'MilvusKLStore flat IP', 'rel_diff_klstore_max'):.2g} "
        f"recentre_time_ratio={deleted / rebuilt:.1f} prove_flat_time_ratio={proved / default:.1f}"
    )


def append_log(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="parts a, b and c (d, the slowest, left out)")
    p.add_argument("--tiny", action="store_true", help="every part on tiny sizes, one timed search (the smoke test)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=None, help="the parts to run (wins over --quick)")
    p.add_argument("--offset-docs", type=positive_int, help=f"part a's documents (default {SIZES['offset_docs']})")
    p.add_argument("--offset-dim", type=positive_int, help=f"part a's dimension (default {SIZES['offset_dim']})")
    p.add_argument("--offset-queries", type=positive_int, help=f"part a's queries (default {SIZES['offset_queries']})")
    p.add_argument("--wide-dim", type=positive_int, help=f"part b's dimension (default {SIZES['wide_dim']})")
    p.add_argument(
        "--wide-trials", type=positive_int, help=f"part b's documents, one store each (default {SIZES['wide_trials']})"
    )
    p.add_argument("--recentre-docs", type=positive_int, help=f"part c's documents (default {SIZES['recentre_docs']})")
    p.add_argument("--recentre-dim", type=positive_int, help=f"part c's dimension (default {SIZES['recentre_dim']})")
    p.add_argument(
        "--recentre-queries", type=positive_int, help=f"part c's queries (default {SIZES['recentre_queries']})"
    )
    p.add_argument("--prove-docs", type=positive_int, help=f"part d's documents (default {SIZES['prove_docs']})")
    p.add_argument("--prove-dim", type=positive_int, help=f"part d's dimension (default {SIZES['prove_dim']})")
    p.add_argument("--prove-queries", type=positive_int, help=f"part d's queries (default {SIZES['prove_queries']})")
    p.add_argument(
        "--repeats", type=positive_int, help=f"timed searches after one warm-up, best kept (default {SIZES['repeats']})"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every part's data (default 0)")
    p.add_argument("--log", type=Path, default=LOG, help="JSON-lines log to append to (default: %(default)s)")
    p.add_argument("--no-log", action="store_true", help="print only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in SIZES.items():  # an explicit size wins over --tiny
        if getattr(args, name) is None:
            setattr(args, name, TINY.get(name, default) if args.tiny else default)
    parts = args.parts or (("a", "b", "c") if args.quick else PARTS)
    logging.basicConfig(level=logging.WARNING)
    grpc_log = logging.getLogger("grpc._server")  # Milvus Lite's harmless traceback at each collection's creation
    grpc_level = grpc_log.level  # (docs/milvus.md, "A logged gRPC traceback"): silenced for this run only
    grpc_log.setLevel(logging.CRITICAL)
    command = shlex.join(["python", "benchmarks/hard_gaussians.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="kl-hard-gaussians-"))
    try:
        if "a" in parts:
            results["a"] = part_offset(args, workdir)
            print_table(
                f"a. Means 30 + 0.01 N(0, 1), unit variances: {args.offset_docs} documents, dim {args.offset_dim}, "
                f"{args.offset_queries} queries, recall@{K} against float64 brute force",
                results["a"],
                ("store", "recall", "batch_s", "scanned_queries"),
            )
        if "b" in parts:
            results["b"] = part_wide(args, workdir)
            given = results["b"][0]["neg_kl_as_given"] if results["b"] else float("nan")
            print_table(
                f"b. One document a store, dim {args.wide_dim}, |mean| 10 to 100, variances 1e-4 to 1e4: the score of "
                f"the first (float64 -KL as given {given:.12f}); relative differences "
                f"of the first, median and max over {args.wide_trials} such documents",
                results["b"],
                (
                    "store",
                    "score",
                    "rel_diff_klstore",
                    "rel_diff_klstore_median",
                    "rel_diff_klstore_max",
                    "rel_diff_as_given",
                    "rel_diff_as_given_median",
                    "rel_diff_as_given_max",
                ),
            )
        if "c" in parts:
            results["c"] = part_recentre(args)
            print_table(
                f"c. Flat KLStore, {args.recentre_docs} documents at 100 + 0.1 N(0, 1), dim {args.recentre_dim}, "
                f"{args.recentre_queries} queries a batch",
                results["c"],
                ("state", "recall", "batch_s", "float64_fallbacks", "centre_mean", "compactions"),
            )
        if "d" in parts:
            results["d"] = part_prove(args, workdir)
            print_table(
                f"d. Means N(0, 0.3^2), log-variances N(0, 0.5^2): {args.prove_docs} documents, dim {args.prove_dim}, "
                f"a batch of {args.prove_queries} queries, k = {K}",
                results["d"],
                ("store", "recall", "batch_s", "scanned_queries"),
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        grpc_log.setLevel(grpc_level)
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.0f} s, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.no_log:
        common = {
            "benchmark": "hard_gaussians",
            "command": command,
            "commit": git_commit(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2),
            "run_seconds": round(seconds, 1),
            "seed": args.seed,
        }
        append_log(args.log, [{**common, "part": part, **row} for part, rows in results.items() for row in rows])
    print(summary_line(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
