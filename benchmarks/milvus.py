"""Milvus Lite backend against the FAISS ``KLStore``, and single-process against Ray encoding.

Part 1 (search): the same clustered synthetic Gaussians as ``benchmarks/ann.py`` (k=384,
document means around 1,000 centres, log-variances ~ N(0, 0.5), queries are perturbed copies
of documents).  Ground truth is the exact flat ``KLStore``, itself checked for every query
against float64 brute force (``ann.check_ground_truth``).  Compared, each re-scoring its
candidates with the exact -KL:

* ``KLStore`` HNSW (FAISS, MIPS -> L2 reduction);
* ``MilvusKLStore`` HNSW with the L2 reduction, and with plain inner product (``metric="IP"``),
  on Milvus Lite (a local file URI, in-process).

Queries/s come from batched ``search_batch`` calls over all queries: one untimed warm-up, then
the best of ``--repeats`` (the same for every backend).  Milvus's figure includes returning the
candidate vectors over gRPC for the exact re-scoring.

Part 2 (encoding): ``encode_corpus`` on the first ``--encode-docs`` SciFact documents with the
default model, once in this process and once as a local Ray Data job (one actor per CPU).

Usage:
    python benchmarks/milvus.py --quick          # 100k docs, 200 queries, 1,000 docs encoded
    python benchmarks/milvus.py --docs 20000 --skip-encode

The last line printed is always
``recall_at_10=<milvus recall against exact> qps_ratio=<milvus queries/s over FAISS hnsw queries/s>``
(Milvus HNSW with the L2 reduction).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ann import check_ground_truth, recall, synthetic, timed_search

from kl_retrievers.index import KLStore

logger = logging.getLogger("benchmarks.milvus")
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def search_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from kl_retrievers.milvus import MilvusKLStore

    docs, queries = synthetic(args.docs, args.queries, args.dim, seed=0)
    ids = [str(i) for i in range(args.docs)]
    rows: list[dict[str, Any]] = []

    flat = KLStore(index_type="flat")
    t = time.perf_counter()
    flat.add(gaussians=docs, ids=ids)
    build = time.perf_counter() - t
    truth, secs = timed_search(flat, queries, repeats=args.repeats)
    check_ground_truth(truth, queries, docs)
    rows.append(
        {
            "backend": "faiss KLStore",
            "index": "flat (exact)",
            "build_s": build,
            "recall": 1.0,
            "qps": args.queries / secs,
        }
    )
    del flat

    hnsw = KLStore(
        index_type="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search
    )
    t = time.perf_counter()
    hnsw.add(gaussians=docs, ids=ids)
    build = time.perf_counter() - t
    found, secs = timed_search(hnsw, queries, repeats=args.repeats)
    faiss_qps = args.queries / secs
    rows.append(
        {
            "backend": "faiss KLStore",
            "index": f"hnsw M={args.hnsw_m} efC={args.ef_construction} efS={args.ef_search}",
            "build_s": build,
            "recall": recall(found, truth),
            "qps": faiss_qps,
        }
    )
    del hnsw

    milvus_l2: dict[str, Any] = {}
    for metric in args.metrics:
        store = MilvusKLStore(
            uri=str(workdir / f"bench-{metric}.db"),
            collection_name=f"bench_{metric.lower()}",
            index_type="hnsw",
            metric=metric,
            hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
            insert_batch=2000,
            show_progress_bar=True,
        )
        t = time.perf_counter()
        store.add(gaussians=docs, ids=ids)
        store.flush(wait_for_index=True)
        store.search(queries[0], k=10)  # the index is built and loaded by the first search at the latest
        build = time.perf_counter() - t
        found, secs = timed_search(store, queries, repeats=args.repeats)
        row = {
            "backend": "Milvus Lite",
            "index": f"hnsw {metric} M={args.hnsw_m} efC={args.ef_construction} ef=max({args.ef_search}, pool)",
            "build_s": build,
            "recall": recall(found, truth),
            "qps": args.queries / secs,
        }
        rows.append(row)
        if metric == "L2":
            milvus_l2 = row
        store.drop()
        store.close()
    return {"rows": rows, "faiss_hnsw_qps": faiss_qps, "milvus_l2": milvus_l2}


def encode_part(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from kl_retrievers.sharded import encode_corpus, load_encoded

    corpus = workdir / "corpus.jsonl"
    with open(DATA / "scifact" / "corpus.jsonl") as src:
        corpus.write_text("".join(itertools.islice(src, args.encode_docs)))
    out = []
    for backend in ("local", "ray"):
        target = workdir / f"enc-{backend}"
        report = encode_corpus(
            corpus,
            target,
            shard_size=args.shard_size,
            backend=backend,
            num_workers=os.cpu_count() if backend == "ray" else None,
            show_progress_bar=False,
        )
        out.append(
            {
                "backend": backend,
                "docs": report.rows,
                "seconds": report.seconds,
                "docs_per_s": report.rows / report.seconds,
            }
        )
    import numpy as np

    a, _ = load_encoded(workdir / "enc-local")
    b, _ = load_encoded(workdir / "enc-ray")
    out.append({"identical": bool(np.array_equal(a.mean, b.mean) and np.array_equal(a.var, b.var))})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100k docs, 200 queries, 1,000 docs encoded")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=int, default=256)
    p.add_argument("--metrics", nargs="+", choices=("L2", "IP"), default=["L2", "IP"])
    p.add_argument("--encode-docs", type=int, default=1000)
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--skip-encode", action="store_true", help="only the search part")
    p.add_argument("--repeats", type=int, default=2, help="timed searches per backend after one warm-up (best)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.docs, args.queries, args.encode_docs = 100_000, 200, 1000
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="kl-milvus-bench-"))
    try:
        search = search_part(args, workdir)
        print(f"\nSearch: {args.docs} synthetic Gaussians, k={args.dim}, {args.queries} queries, top 10\n")
        print("| backend | index | build s | recall@10 | queries/s |")
        print("|---|---|---|---|---|")
        for r in search["rows"]:
            print(f"| {r['backend']} | {r['index']} | {r['build_s']:.1f} | {r['recall']:.4f} | {r['qps']:.0f} |")
        encode: list[dict[str, Any]] = []
        if not args.skip_encode:
            encode = encode_part(args, workdir)
            print(f"\nEncoding: first {args.encode_docs} SciFact docs, default model, shards of {args.shard_size}\n")
            print("| backend | docs | seconds | docs/s |")
            print("|---|---|---|---|")
            for r in encode[:-1]:
                print(f"| {r['backend']} | {r['docs']} | {r['seconds']:.1f} | {r['docs_per_s']:.1f} |")
            print(f"\nRay output identical to the single-process output: {encode[-1]['identical']}")
            print(f"throughput ratio ray/local: {encode[1]['docs_per_s'] / encode[0]['docs_per_s']:.3f}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"args": vars(args) | {"json": str(args.json)}, "search": search, "encode": encode},
                    indent=2,
                    default=str,
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    m = search["milvus_l2"]
    ratio = m["qps"] / search["faiss_hnsw_qps"] if m else float("nan")
    print(f"recall_at_10={m.get('recall', float('nan')):.4f} qps_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
