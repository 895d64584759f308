"""Approximate -KL search benchmark for ``KLStore``: recall@10, queries/s, build time, bytes/doc.

Synthetic Gaussians (k=384 by default): document means are drawn around 1,000 cluster
centres (centre ~ N(0, 1), offset ~ N(0, 0.5)), log-variances ~ N(0, 0.5); queries are
perturbed copies of random documents (mean noise N(0, 0.5), fresh log-variances).  Exact
ground truth is the flat store, itself checked for every query against float64 brute force
(:func:`float64_top_k`: every document scored in float64, the best re-scored term by term with
``neg_kl``).  Also compares the flat KL search (2k+1 dims) with a plain k-dim ``IndexFlatIP``
over the same documents (time and memory ratios).

Timing: every searcher (flat KL store, raw 2k+1-d and k-d ``IndexFlatIP``, each approximate
index and each sweep setting) gets one untimed warm-up search of all queries, then
``--repeats`` timed ones; the figure is the best (minimum) of those.  The three flat timings are
interleaved, so a slow spell of this noisy machine hits all three.

Usage:
    python benchmarks/ann.py --quick                  # 100k docs, < 5 min on 2 cores
    python benchmarks/ann.py --sizes 100000 1000000   # full run
    python benchmarks/ann.py --quick --scifact-gaussians enc.npz  # + real encodings
        (npz with arrays doc_mean, doc_var, query_mean, query_var)
    python benchmarks/ann.py --scifact ../shared/datasets/scifact --no-synthetic  # real SciFact Gaussians
        (the default model, encodings cached; flat checked against brute force for every query)

The last line printed is always
``recall_at_10=<hnsw recall> speedup=<hnsw qps / flat qps> flat_time_ratio=<KL flat / dot flat time>``
for the largest synthetic size.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kl_retrievers.cli_common import positive_int
from kl_retrievers.gaussian import (
    Gaussians,
    kl_document_vectors,
    kl_query_constant,
    kl_query_vectors,
    neg_kl,
    rewrite_block_norms,
)
from kl_retrievers.index import KLStore

logger = logging.getLogger("benchmarks.ann")


def synthetic(n_docs: int, n_queries: int, dim: int, seed: int = 0) -> tuple[Gaussians, Gaussians]:
    """Clustered synthetic document and query Gaussians (float32).

    Example:
        >>> d, q = synthetic(100, 5, 8)
        >>> len(d), len(q)
        (100, 5)
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    mean = np.empty((n_docs, dim), np.float32)
    var = np.empty((n_docs, dim), np.float32)
    for s in range(0, n_docs, 100_000):
        e = min(n_docs, s + 100_000)
        mean[s:e] = centres[rng.integers(0, 1000, e - s)] + rng.normal(0, 0.5, (e - s, dim)).astype(np.float32)
        var[s:e] = np.exp(rng.normal(0, 0.5, (e - s, dim))).astype(np.float32)
    src = rng.integers(0, n_docs, n_queries)
    q_mean = mean[src] + rng.normal(0, 0.5, (n_queries, dim)).astype(np.float32)
    q_var = np.exp(rng.normal(0, 0.5, (n_queries, dim))).astype(np.float32)
    return Gaussians(mean, var, validate=False), Gaussians(q_mean, q_var, validate=False)


def scifact_gaussians(path: Path, model: str | None = None) -> tuple[Gaussians, Gaussians]:
    """SciFact documents and test + train queries as Gaussians of ``model`` (default: the package's; cached)."""
    from kl_retrievers import load_model
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.evaluation import encode_dataset

    encoder = load_model(model, device="cpu")
    parts = [encode_dataset(encoder, load_beir(path, split)) for split in ("test", "train")]
    docs = parts[0][1]
    queries = Gaussians(
        np.concatenate([q.mean for q, _ in parts]).astype(np.float32),
        np.concatenate([q.var for q, _ in parts]).astype(np.float32),
    )
    print(f"SciFact: {len(docs)} documents, {len(queries)} queries (test + train), model {encoder.name_or_path}")
    return Gaussians(docs.mean.astype(np.float32), docs.var.astype(np.float32)), queries


def timed_search(store: Any, queries: Gaussians, k: int = 10, repeats: int = 3) -> tuple[list[list[str]], float]:
    """Ids per query (from an untimed warm-up search) and the best wall time over ``repeats`` more searches."""
    res = store.search_batch(queries, k=k)
    best = min(_time(lambda: store.search_batch(queries, k=k)) for _ in range(repeats))
    return [[r.id for r in rr] for rr in res], best


def float64_top_k(queries: Gaussians, docs: Gaussians, k: int = 10, extra: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Float64 brute force: rows and exact -KL of each query's top ``k``, best first.

    Every document is scored in float64 through the inner-product rewrite around the documents'
    mean (a BLAS matmul), the best ``k + extra`` are re-scored term by term with ``neg_kl``, and a
    float64 error bound (``gamma_{n+2} * sum_b ||q~_b|| * max ||d~_b||``, u = 2^-53) proves they hold
    the top ``k`` (asserted).

    Example:
        >>> d, q = synthetic(300, 4, 8)
        >>> rows, _ = float64_top_k(q, d, 5)
        >>> from kl_retrievers.gaussian import neg_kl_matrix
        >>> ref = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))
        >>> bool((rows == np.argsort(-ref, axis=1)[:, :5]).all())
        True
    """
    q64, d64 = queries.astype(np.float64), docs.astype(np.float64)
    centre = d64.mean.mean(axis=0)
    qv = np.asarray(kl_query_vectors(Gaussians(q64.mean - centre, q64.var, validate=False)))
    nq, n, dim = len(q64), len(d64), q64.dim
    scores = np.empty((nq, n))
    dmax = np.zeros(3)
    for s in range(0, n, 20_000):
        dv = np.asarray(kl_document_vectors(Gaussians(d64.mean[s : s + 20_000] - centre, d64.var[s : s + 20_000])))
        scores[:, s : s + 20_000] = qv @ dv.T
        dmax = np.maximum(dmax, rewrite_block_norms(dv).max(axis=0))
    width = 2 * dim + 3
    bound = width * 2.0**-53 / (1 - width * 2.0**-53) * (rewrite_block_norms(qv) @ dmax) * 1.01
    c = min(n, k + extra)
    cand = np.argpartition(-scores, c - 1, axis=1)[:, :c] if c < n else np.tile(np.arange(n), (nq, 1))
    left_out = np.partition(-scores, c, axis=1)[:, c] * -1 if c < n else np.full(nq, -np.inf)
    exact = np.stack([np.asarray(neg_kl(q64[i], d64[cand[i]])) for i in range(nq)])
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    rows, top = np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)
    const = np.asarray(kl_query_constant(q64))
    assert (left_out + bound + const < top[:, -1]).all(), "float64 brute force: k + extra candidates not enough"
    return rows, top


def check_ground_truth(found: list[list[str]], queries: Gaussians, docs: Gaussians, k: int = 10) -> None:
    """Assert that ``found`` (ids ``"0".."n-1"``) is the float64 top ``k`` of every query, ties aside."""
    _, top = float64_top_k(queries, docs, k)
    for i, ids in enumerate(found):
        got = np.array([int(j) for j in ids])
        assert len(got) == min(k, len(docs)), f"query {i}: {len(got)} results"
        scores = np.asarray(neg_kl(queries[i : i + 1].astype(np.float64), docs[got].astype(np.float64)))
        # same rows in the same order, or rows whose exact scores tie with the reference's
        np.testing.assert_allclose(scores, top[i], rtol=1e-10, atol=1e-10, err_msg=f"query {i}: top-{k} differs")
    print(f"flat top-{k} identical (same order, ties aside) to float64 brute-force -KL for all {len(found)} queries")


def recall(found: list[list[str]], truth: list[list[str]], k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def index_bytes(index: Any) -> int:
    return int(faiss.serialize_index(index).nbytes)


def run_size(
    n_docs: int, n_queries: int, dim: int, args: argparse.Namespace, docs: Gaussians | None = None, queries: Any = None
) -> dict[str, Any]:
    label = "synthetic" if docs is None else "scifact"
    if docs is None:
        docs, queries = synthetic(n_docs, n_queries, dim, seed=args.seed)
    n_docs, dim = len(docs), docs.dim
    ids = [str(i) for i in range(n_docs)]
    gauss_bytes = 2 * 4 * dim  # mean + var, float32
    rows: list[dict[str, Any]] = []
    row: dict[str, Any]
    print(f"\n== {label}: {n_docs} docs, {len(queries)} queries, k={dim} ==", flush=True)

    # exact flat KL store
    t = time.perf_counter()
    flat = KLStore(index_type="flat")
    flat.add(gaussians=docs, ids=ids)
    build = time.perf_counter() - t
    truth = [[r.id for r in rr] for rr in flat.search_batch(queries, k=10)]  # also the flat store's warm-up
    check_ground_truth(truth, queries, docs)
    rows.append(
        {
            "index": "flat (exact)",
            "build_s": build,
            "qps": float("nan"),  # set below
            "recall": 1.0,
            "bytes_per_doc": index_bytes(flat._index) / n_docs + gauss_bytes,
        }
    )

    # plain dot-product flat index over the means (what a vector retriever would pay)
    dot = faiss.IndexFlatIP(dim)
    dot.add(np.ascontiguousarray(docs.mean, dtype=np.float32))
    qm = np.ascontiguousarray(queries.mean, dtype=np.float32)
    klraw = flat._index
    qv = np.ascontiguousarray(
        np.concatenate([np.ones((len(queries), 1)), queries.var + queries.mean**2, queries.mean], 1), dtype=np.float32
    )
    # the three timings interleaved (after one warm-up each), best of --repeats each, like every
    # other searcher here: this machine is noisy, and a slow spell should hit all three rather than one
    dot.search(qm, 10)
    klraw.search(qv, 10)
    t_store_l, t_dot_l, t_raw_l = [], [], []
    for _ in range(args.repeats):
        t_store_l.append(_time(lambda: flat.search_batch(queries, k=10)))
        t_dot_l.append(_time(lambda: dot.search(qm, 10)))
        t_raw_l.append(_time(lambda: klraw.search(qv, 10)))
    t_flat, t_dot, t_klraw = min(t_store_l), min(t_dot_l), min(t_raw_l)
    rows[0]["qps"] = flat_qps = len(queries) / t_flat
    store_ratio = t_flat / t_dot
    raw_ratio = t_klraw / t_dot
    mem_ratio = index_bytes(klraw) / index_bytes(dot)
    print(
        f"flat KL store {t_flat:.3f}s, raw 769-d IndexFlatIP {t_klraw:.3f}s, 384-d dot IndexFlatIP {t_dot:.3f}s "
        f"-> time ratio store/dot {store_ratio:.2f}, raw/dot {raw_ratio:.2f}; index memory ratio {mem_ratio:.3f}",
        flush=True,
    )

    configs: list[tuple[str, dict[str, Any]]] = [
        (
            f"hnsw M={args.hnsw_m} efC={args.ef_construction} efS={args.ef_search} pool={args.pool}",
            dict(
                index_type="hnsw",
                hnsw_m=args.hnsw_m,
                ef_construction=args.ef_construction,
                ef_search=args.ef_search,
                rescore_pool=args.pool,
            ),
        ),
        (
            f"ivf nlist={args.nlist} nprobe={args.nprobe} pool={args.pool}",
            dict(index_type="ivf", nlist=args.nlist, nprobe=args.nprobe, rescore_pool=args.pool),
        ),
        (
            f"ivf+sq8 nlist={args.nlist} nprobe={args.nprobe} pool={args.pool}",
            dict(index_type="ivf", nlist=args.nlist, nprobe=args.nprobe, compression="sq8", rescore_pool=args.pool),
        ),
    ]
    configs += [
        (
            f"ivf+pq{pq_m}x4fs{'+' + args.refine if args.refine else ''} nlist={args.nlist} "
            f"nprobe={args.nprobe} pool={args.pool}",
            dict(
                index_type="ivf",
                nlist=args.nlist,
                nprobe=args.nprobe,
                compression="pq",
                pq_m=pq_m,
                pq_nbits=4,
                refine=args.refine,
                rescore_pool=args.pool,
            ),
        )
        for pq_m in args.pq_m
    ]
    configs = [(name, kw) for name, kw in configs if _kind(kw) in args.types]
    if args.compare_centring:  # the same IVF on the plain reduction (no shift of the first coordinate)
        configs.append(
            (
                f"ivf, plain reduction (no shift) nlist={args.nlist} nprobe={args.nprobe} pool={args.pool}",
                dict(index_type="ivf", nlist=args.nlist, nprobe=args.nprobe, rescore_pool=args.pool, plain=True),
            )
        )
    flat = dot = klraw = None  # type: ignore[assignment]  # free memory before the approximate stores (1M docs)
    hnsw_result: dict[str, float] = {}
    for name, kw in configs:
        t = time.perf_counter()
        store = KLStore(**{k: v for k, v in kw.items() if k != "plain"})
        if kw.get("plain"):
            store._engine._shifted = lambda dvec: dvec  # type: ignore[attr-defined]  # this store only
        store.add(gaussians=docs, ids=ids)
        build = time.perf_counter() - t
        found, t_s = timed_search(store, queries, repeats=args.repeats)
        r = recall(found, truth)
        qps = len(queries) / t_s
        row = {
            "index": name,
            "build_s": build,
            "qps": qps,
            "recall": r,
            "bytes_per_doc": index_bytes(store._index) / n_docs + gauss_bytes,
        }
        rows.append(row)
        first = len(rows) - 1
        print(f"{name}: build {build:.1f}s recall@10 {r:.4f} qps {qps:.0f} speedup {qps / flat_qps:.2f}x", flush=True)
        if kw["index_type"] == "hnsw":
            hnsw_result = {"recall": r, "speedup": qps / flat_qps}
            sweep = [("ef_search", ef, f"  hnsw efS={ef} (same graph)") for ef in args.sweep_ef]
        elif kw.get("compression") in (None, "pq"):
            sweep = [("nprobe", nprobe, f"  {_kind(kw)} nprobe={nprobe} (same lists)") for nprobe in args.sweep_nprobe]
            if kw.get("compression") == "pq":
                sweep += [
                    ("rescore_pool", pool, f"  {_kind(kw)} pool={pool} nprobe={kw['nprobe']} (same lists)")
                    for pool in args.sweep_pool
                ]
        else:
            sweep = []
        for attr, value, label_ in sweep:  # the same index, searched with another setting
            store.nprobe, store.rescore_pool = kw.get("nprobe", store.nprobe), kw["rescore_pool"]  # one change per row
            setattr(store, attr, value)
            found, t_s = timed_search(store, queries, repeats=args.repeats)
            rows.append(
                {
                    "index": label_,
                    "build_s": float("nan"),
                    "qps": len(queries) / t_s,
                    "recall": recall(found, truth),
                    "bytes_per_doc": row["bytes_per_doc"],
                }
            )
            print(f"  {attr}={value}: recall {rows[-1]['recall']:.4f} qps {rows[-1]['qps']:.0f}", flush=True)
        if kw["index_type"] == "ivf" and kw.get("compression") != "sq8":
            _ivf_scan_report(store, queries, [kw["nprobe"], *args.sweep_nprobe], n_docs, flat_qps, rows[first:])
        del store

    print("\n| data | docs | index | build s | recall@10 | queries/s | speedup vs flat | bytes/doc |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {label} k={dim} | {n_docs} | {row['index']} | {row['build_s']:.1f} | {row['recall']:.4f} | "
            f"{row['qps']:.0f} | {row['qps'] / flat_qps:.2f} | {row['bytes_per_doc']:.0f} |"
        )
    _plot(rows, label + ("_centring" if args.compare_centring else ""), n_docs, dim, flat_qps)
    return {
        "recall": hnsw_result.get("recall", float("nan")),
        "speedup": hnsw_result.get("speedup", float("nan")),
        "flat_time_ratio": store_ratio,
        "raw_ratio": raw_ratio,
        "mem_ratio": mem_ratio,
    }


def _plot(rows: list[dict[str, Any]], label: str, n_docs: int, dim: int, flat_qps: float) -> None:
    """Recall@10 against queries/s, one point per index setting: docs/ann_<label>_<n>.png."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev dependency
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        name = row["index"].strip()
        ax.scatter(row["qps"], row["recall"], s=30)
        ax.annotate(
            name.split(" pool")[0][:28],
            (row["qps"], row["recall"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.axvline(20 * flat_qps, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (log scale; dotted: 20x exact flat)")
    ax.set_ylabel("recall@10 against exact -KL")
    ax.set_title(f"KLStore, {label} Gaussians, {n_docs:,} docs, k={dim}")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / f"ann_{label}_{n_docs}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def _ivf_scan_report(
    store: KLStore,
    queries: Gaussians,
    nprobes: list[int],
    n_docs: int,
    flat_qps: float,
    rows: list[dict[str, Any]],
) -> None:
    """How uneven the IVF lists are, and how many documents a query scans at each nprobe.

    Scanned documents x queries/s is the scan rate; ``n_docs x`` the flat queries/s is the flat
    search's rate. Their ratio says how few documents IVF may scan to beat flat by a factor.
    """
    ivf = faiss.extract_index_ivf(store._index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    qr = store._engine._query_reduced(queries.astype(np.float64))  # type: ignore[attr-defined]
    print(
        f"  lists: {ivf.nlist}, mean size {sizes.mean():.0f}, imbalance factor {ivf.invlists.imbalance_factor():.2f}; "
        f"flat scans {n_docs * flat_qps / 1e6:.1f} M documents/s",
        flush=True,
    )
    # rows: this index's own rows (the store's nprobe, then the nprobe sweep, then the pool sweep);
    # each nprobe keeps its first row's queries/s
    qps_by_nprobe: dict[int, float] = {}
    for row in rows:
        qps_by_nprobe.setdefault(int(row["index"].split("nprobe=")[1].split()[0]), row["qps"])
    for nprobe in sorted(set(nprobes)):
        _, lists = ivf.quantizer.search(qr, nprobe)
        scanned = float(sizes[lists].sum(axis=1).mean())
        rate = scanned * qps_by_nprobe.get(nprobe, float("nan")) / 1e6
        print(
            f"  nprobe={nprobe}: {scanned:.0f} documents scanned per query "
            f"({scanned / (nprobe * sizes.mean()):.2f}x {nprobe} average lists), {rate:.1f} M documents/s",
            flush=True,
        )


def _kind(kw: dict[str, Any]) -> str:
    return kw["index_type"] + ("+" + kw["compression"] if kw.get("compression") else "")


def _time(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="100k synthetic documents only (unless --sizes is given; it wins)"
    )
    parser.add_argument(
        "--sizes", type=positive_int, nargs="+", default=None, help="synthetic corpus sizes (default 100000 1000000)"
    )
    parser.add_argument("--dim", type=positive_int, default=384)
    parser.add_argument("--queries", type=positive_int, default=500)
    parser.add_argument("--hnsw-m", type=positive_int, default=16)
    parser.add_argument("--ef-construction", type=positive_int, default=40)
    parser.add_argument("--ef-search", type=positive_int, default=256)
    parser.add_argument("--sweep-ef", type=positive_int, nargs="*", default=[64, 128, 512])
    parser.add_argument("--pool", type=positive_int, default=100)
    parser.add_argument(
        "--nlist", type=positive_int, default=None, help="IVF lists (default 256 with --quick, else 1024)"
    )
    parser.add_argument("--nprobe", type=positive_int, default=32)
    parser.add_argument(
        "--compare-centring",
        action="store_true",
        help="also build the IVF on the plain reduction (first coordinate not shifted)",
    )
    parser.add_argument(
        "--sweep-nprobe", type=positive_int, nargs="*", default=[8, 16], help="more nprobe on the same IVF"
    )
    parser.add_argument(
        "--types",
        nargs="+",
        default=["hnsw", "ivf", "ivf+sq8", "ivf+pq"],
        choices=["hnsw", "ivf", "ivf+sq8", "ivf+pq"],
        help="approximate index types to build (default: all)",
    )
    parser.add_argument(
        "--pq-m",
        type=positive_int,
        nargs="+",
        default=[96],
        help="sub-quantizers of the ivf+pq index (4-bit fast scan), one index each",
    )
    parser.add_argument(
        "--refine", choices=["sq8", "fp16"], default=None, help="the ivf+pq index re-ranks its pool on these codes"
    )
    parser.add_argument(
        "--sweep-pool", type=positive_int, nargs="*", default=[], help="more re-scoring pools on the ivf+pq index"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed searches per searcher after one warm-up; the best is reported (same for every searcher)",
    )
    parser.add_argument(
        "--scifact-gaussians",
        type=Path,
        default=None,
        help="npz with doc_mean, doc_var, query_mean, query_var (optional real encodings)",
    )
    parser.add_argument(
        "--scifact",
        type=Path,
        default=None,
        help="BEIR SciFact folder: encode it (test + train queries) with --model, cached, and benchmark",
    )
    parser.add_argument("--model", default=None, help="--scifact: bundled name or folder (default: the default model)")
    parser.add_argument("--no-synthetic", action="store_true", help="only the SciFact run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(max(1, faiss.omp_get_max_threads()))
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 1_000_000])
    if args.nlist is None:
        args.nlist = 256 if args.quick else 1024
    print(f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}, sizes {sizes}", flush=True)
    if args.scifact_gaussians is not None or args.scifact is not None:
        if args.scifact is not None:
            docs, queries = scifact_gaussians(args.scifact, args.model)
        else:
            with np.load(args.scifact_gaussians, allow_pickle=False) as z:
                docs = Gaussians(z["doc_mean"].astype(np.float32), z["doc_var"].astype(np.float32))
                queries = Gaussians(z["query_mean"].astype(np.float32), z["query_var"].astype(np.float32))
        sci_args = argparse.Namespace(**{**vars(args), "nlist": max(16, min(args.nlist, len(docs) // 39))})
        run_size(len(docs), len(queries), docs.dim, sci_args, docs=docs, queries=queries)
    last: dict[str, Any] = {}
    for n in [] if args.no_synthetic else sizes:
        last = run_size(n, args.queries, args.dim, args)
    if not last:
        return 0
    print(
        f"recall_at_10={last['recall']:.4f} speedup={last['speedup']:.2f} flat_time_ratio={last['flat_time_ratio']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
