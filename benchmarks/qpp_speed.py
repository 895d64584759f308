"""Time of the QPP block of ``kl-retrievers evaluate``: :func:`kl_retrievers.qpp.qpp_for_run`, bootstrap included.

``evaluate`` computes it for ``--json``, ``--qpp`` and ``--per-query`` (``qpp_seconds`` in its JSON); most of
it is the bootstrap, ``--bootstrap`` resamples (default 1000, evaluate's ``--qpp-bootstrap``) for each
predictor's Kendall tau and Pearson r. For each query count n of ``--queries`` (default ``225,809``) it
calls ``qpp_for_run`` as ``evaluate`` does, with seven predictors (``uncertainty``, ``max_score``, ``nqc``,
``gap12``, ``wig``, ``avg_idf``, ``scq``), and prints the best of ``--repeats`` calls (default 3), wall
seconds (``time.perf_counter``) and CPU seconds of the process (``time.process_time``: every thread's, so
BLAS threads count), then the same with no bootstrap (``--bootstrap 0``); one small call before them takes
the first-call costs (lazy imports).

Data, per n (the output says which):

* ``pq:FILE``: the first per-query file of ``runs/eval/pq/`` (by name; ``--pq-dir``) that logs n queries and all
  seven predictors, the uncertainty not constant (for 225: ``minilm-gauss-lora.cranfield.test.json``), or each
  ``--per-query FILE`` (its n; ``--queries`` is then ignored; without an ``uncertainty`` column, as a
  baseline's, six predictors). The file gives the target (each query's nDCG@10),
  the uncertainty, and each query's top two scores (``qpp.max_score``, ``qpp.max_score - qpp.gap12``); the
  other 98 scores of a query's 100 are a seeded tail below the second (so ``nqc`` and ``wig`` are not the
  logged ones). A query logged without ``qpp.max_score`` retrieved nothing (a BM25 run's query that shares
  no term with the collection): its run is empty, as ``evaluate``'s, and its nDCG counts where ``evaluate``'s
  does; one without ``qpp.gap12`` retrieved one document (its ``qpp.max_score``). A ``--per-query`` file that
  cannot be read, or a row without ``ndcg@10``, is a usage error. ``avg_idf`` and ``scq`` read the collection
  the file's ``meta`` names (``texts=dataset``), when its folder is found (relative to the repository, as
  logged, or to the working directory), with its qrels; otherwise seeded synthetic texts (``texts=synthetic``).
* ``synthetic``: no such file (for 809: the logged files hold 53, 225, 300 and 323 queries): seeded nDCG-like
  targets (zeros, ones and values in between), uncertainties, -KL-like score lists and texts (``--docs``
  documents).

Everything is seeded, so two versions of the library see the same inputs; the ``digest`` of the reports
(every tau, r and interval, bit for bit) says whether they computed the same. Compare two checkouts by
running this file with ``PYTHONPATH`` set to each (the first line says which library it imported), in
alternation, with ``OMP_NUM_THREADS=1`` and with the default threads:

    python benchmarks/qpp_speed.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/qpp_speed.py
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/other/checkout python benchmarks/qpp_speed.py --queries 225

It prints, last, one line ``wall_225=... cpu_225=... nb0_wall_225=... wall_809=... cpu_809=... nb0_wall_809=...
digest=...`` (seconds; ``nb0_wall``: the wall time with no bootstrap).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from timing import best_of

import kl_retrievers
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import load_per_query
from kl_retrievers.qpp import qpp_for_run

ROOT = Path(__file__).resolve().parents[1]
#: the per-query columns a file must hold (the uncertainty not constant) to be picked
COLUMNS = ("ndcg@10", "uncertainty", "qpp.max_score", "qpp.gap12")
DEPTH = 100


def _words(rng: np.random.Generator, count: int, size: int) -> list[str]:
    """``count`` texts of ``size`` words drawn from a Zipf-like vocabulary of 20,000 words."""
    ranks = np.minimum(rng.zipf(1.3, size=(count, size)), 20_000)
    return [" ".join(f"w{r}" for r in row) for row in ranks]


def _tail(rng: np.random.Generator, s1: float, s2: float) -> dict[str, float]:
    """A query's 100 scores: ``s1``, ``s2``, then 98 seeded ones below ``s2`` of its sign."""
    scores = [s1, s2]
    factors = rng.uniform(0.97, 1.0, DEPTH - 2) if s2 > 0 else rng.uniform(1.0, 1.03, DEPTH - 2)
    s = s2 if s2 != 0 else -1e-3
    for f in factors:
        s *= float(f)
        scores.append(s)
    return {f"d{i}": v for i, v in enumerate(scores)}


def _pick(pq_dir: Path, n: int) -> Path | None:
    """The first per-query file (by name) of ``n`` queries with :data:`COLUMNS`, its uncertainty not constant."""
    for path in sorted(pq_dir.glob("*.json")):
        try:
            rows, _ = load_per_query(path)
        except ValueError:
            continue
        if len(rows) != n or not all(all(c in r for c in COLUMNS) for r in rows.values()):
            continue
        if len({r["uncertainty"] for r in rows.values()}) > 1:
            return path
    return None


def _read(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """A per-query file's rows and meta, checked for what :func:`_from_file` reads.

    Raises:
        ValueError: The file cannot be read, is no per-query file, holds no query, or a row has no
            ``ndcg@10``, or a ``qpp.gap12`` without a ``qpp.max_score``.
    """
    rows, meta = load_per_query(path)
    if not rows:
        raise ValueError(f"{path}: no queries")
    for q, r in rows.items():
        if "ndcg@10" not in r:
            raise ValueError(f"{path}: query {q!r} has no 'ndcg@10'; every row needs one")
        if "qpp.gap12" in r and "qpp.max_score" not in r:
            raise ValueError(f"{path}: query {q!r} has a 'qpp.gap12' but no 'qpp.max_score'")
    return rows, meta


def _scores(rng: np.random.Generator, row: dict[str, float]) -> dict[str, float]:
    """A query's scores as its row logs them: none without ``qpp.max_score`` (nothing retrieved: ``evaluate``'s
    run for it is empty), one without ``qpp.gap12`` (one document), else :func:`_tail`'s 100."""
    if "qpp.max_score" not in row:
        return {}
    if "qpp.gap12" not in row:
        return {"d0": row["qpp.max_score"]}
    return _tail(rng, row["qpp.max_score"], row["qpp.max_score"] - row["qpp.gap12"])


def _from_file(
    path: Path, rows: dict[str, dict[str, float]], meta: dict[str, Any], rng: np.random.Generator, docs: int
) -> tuple[dict[str, Any], str]:
    ids = list(rows)
    run = {q: _scores(rng, r) for q, r in rows.items()}
    inputs: dict[str, Any] = {
        "run": run,
        "per_query": {q: {"ndcg@10": r["ndcg@10"]} for q, r in rows.items()},
        "query_ids": ids,
    }
    if all("uncertainty" in r for r in rows.values()):  # a baseline's file has none: six predictors
        inputs["query_stats"] = {"uncertainty": {q: r["uncertainty"] for q, r in rows.items()}}
    logged = str(meta.get("dataset") or "")
    folder = next((p for p in (ROOT / logged, Path(logged)) if logged and p.is_dir()), None)
    if folder is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = load_beir(folder, str(meta.get("split", "test")), unknown_docs="drop")
        if all(q in dataset.queries for q in ids):
            inputs.update(
                query_texts=dataset.query_texts(ids),
                corpus_texts=dataset.document_texts(),
                qrels=dataset.qrels,
            )
            return inputs, "dataset"
    inputs.update(query_texts=_words(rng, len(ids), 8), corpus_texts=_words(rng, docs, 60))
    return inputs, "synthetic"


def _synthetic(n: int, rng: np.random.Generator, docs: int) -> dict[str, Any]:
    ids = [f"q{i}" for i in range(n)]
    kind = rng.uniform(size=n)
    ndcg = np.where(kind < 0.3, 0.0, np.where(kind < 0.45, 1.0, np.round(rng.uniform(0.05, 0.95, n), 4)))
    top = -rng.gamma(4.0, 0.1, n)
    return {
        "run": {q: _tail(rng, float(top[i]), float(top[i] - rng.exponential(0.05))) for i, q in enumerate(ids)},
        "per_query": {q: {"ndcg@10": float(ndcg[i])} for i, q in enumerate(ids)},
        "query_ids": ids,
        "query_stats": {"uncertainty": {q: float(v) for q, v in zip(ids, rng.normal(0.0, 0.01, n), strict=True)}},
        "query_texts": _words(rng, n, 8),
        "corpus_texts": _words(rng, docs, 60),
    }


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """The best of ``repeats`` runs of ``fn`` by wall time and by CPU time, seconds, and its last result."""
    (wall, cpu), out = best_of(fn, repeats, (time.perf_counter, time.process_time))
    return wall, cpu, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", default="225,809", help="query counts, comma-separated (default 225,809)")
    parser.add_argument("--per-query", nargs="+", type=Path, help="per-query files to read instead (n: theirs)")
    parser.add_argument("--pq-dir", type=Path, default=ROOT / "runs" / "eval" / "pq", help="where to pick files")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per measurement; the best counts (default 3)")
    parser.add_argument("--docs", type=int, default=2000, help="documents of a synthetic corpus (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic parts (default 0)")
    args = parser.parse_args(argv)
    if args.bootstrap < 0 or args.repeats < 1 or args.docs < 1:
        parser.error(
            f"--bootstrap must be >= 0, --repeats and --docs >= 1; got {args.bootstrap}, {args.repeats}, {args.docs}"
        )
    try:
        sizes = [int(s) for s in args.queries.split(",")] if not args.per_query else []
    except ValueError:
        parser.error(f"--queries must be comma-separated integers; got {args.queries!r}")
    if any(n < 2 for n in sizes):
        parser.error(f"every --queries count must be >= 2; got {args.queries!r}")
    try:  # before anything runs: a missing or unreadable file is a usage error
        read = {p: _read(p) for p in args.per_query or []}
    except ValueError as exc:
        parser.error(f"--per-query: {exc}")
    print(
        f"library={Path(kl_retrievers.__file__).parent} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
        f"bootstrap={args.bootstrap} repeats={args.repeats}",
        flush=True,
    )
    jobs: list[tuple[Path | None, int]] = [(p, 0) for p in args.per_query or []]
    jobs += [(_pick(args.pq_dir, n), n) for n in sizes]
    with warnings.catch_warnings():  # lazy imports and first-call costs, outside the timings
        warnings.simplefilter("ignore")
        qpp_for_run(**_synthetic(20, np.random.default_rng(args.seed), 50), depth=DEPTH, n_boot=10, seed=0)
    digest = hashlib.sha256()
    last: list[str] = []
    for path, n in jobs:
        rng = np.random.default_rng(args.seed)
        if path is not None:
            rows, meta = read[path] if path in read else _read(path)
            inputs, texts = _from_file(path, rows, meta, rng, args.docs)
            data = f"pq:{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} texts={texts}"
        else:
            inputs, data = _synthetic(n, rng, args.docs), "synthetic"
        n = len(inputs["query_ids"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call = functools.partial(qpp_for_run, **inputs, depth=DEPTH, seed=0)
            wall, cpu, (report, _) = _best(functools.partial(call, n_boot=args.bootstrap), args.repeats)
            wall0, cpu0, _ = _best(functools.partial(call, n_boot=0), args.repeats)
        predictors = report["predictors"]
        digest.update(json.dumps(predictors, sort_keys=True).encode())
        print(
            f"n={n} data={data} predictors={len(predictors)} wall_s={wall:.3f} cpu_s={cpu:.3f} "
            f"no_bootstrap_wall_s={wall0:.3f} no_bootstrap_cpu_s={cpu0:.3f}",
            flush=True,
        )
        last += [f"wall_{n}={wall:.3f}", f"cpu_{n}={cpu:.3f}", f"nb0_wall_{n}={wall0:.3f}"]
    print(" ".join([*last, f"digest={digest.hexdigest()[:16]}"]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
