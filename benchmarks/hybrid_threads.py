"""Concurrent searches of one KLHybridStore (and of a KLStore beside it): searches per second by thread count.

A web server answers queries from several threads against one store. The hybrid store's lock is a
readers-writer lock, so searches run side by side and only add, upsert and delete wait. Queries
are given as Gaussians (no encoder), so what is timed is the search itself: candidates from both
halves, fusion and the stored texts. Synthetic corpus: texts of random words from a 5,000-word
vocabulary, random Gaussians. Prints, last, ``hybrid_qps_1=X hybrid_qps_max=Y speedup=Z``: the hybrid's
searches per second on 1 thread, its best, and their ratio (when ``--threads`` leaves out 1, the smallest
count given takes its place and is named: ``hybrid_qps_2=X ... speedup=Z (relative to 2 threads)``).

    python benchmarks/hybrid_threads.py                 # 20,000 documents, dim 384, 1/2/4 threads
    python benchmarks/hybrid_threads.py --n 50000 --threads 1 2
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.store import KLStore


def _qps(search: Callable[[int], object], n_queries: int, threads: int, repeats: int) -> float:
    """Best of ``repeats``: ``n_queries`` searches split over ``threads`` threads, searches per second."""
    best = 0.0
    for _ in range(repeats):
        shares = [range(t, n_queries, threads) for t in range(threads)]
        workers = [threading.Thread(target=lambda share=share: [search(i) for i in share]) for share in shares]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, n_queries / (time.perf_counter() - start))
    return best


def summary_line(rows: Sequence[tuple[int, float, float]]) -> str:
    """The last printed line: the hybrid's searches/s at the fewest threads, its best, and the speedup.

    ``rows``: ``(threads, hybrid_qps, dense_qps)`` per measured thread count, in any order. The base is
    the smallest thread count (1 by default), named in the key: ``hybrid_qps_1``, or ``hybrid_qps_2``
    when the smallest count measured is 2; the speedup is the best hybrid rate over the base's.

    Examples:
        >>> summary_line([(2, 150.0, 0.0), (1, 100.0, 0.0), (4, 250.0, 0.0)])
        'hybrid_qps_1=100.0 hybrid_qps_max=250.0 speedup=2.50'
        >>> summary_line([(2, 150.0, 0.0), (4, 300.0, 0.0)])
        'hybrid_qps_2=150.0 hybrid_qps_max=300.0 speedup=2.00 (relative to 2 threads)'
    """
    base, h_base, _ = min(rows, key=lambda r: r[0])
    h_max = max(h for _, h, _ in rows)
    relative = "" if base == 1 else f" (relative to {base} threads)"
    return f"hybrid_qps_{base}={h_base:.1f} hybrid_qps_max={h_max:.1f} speedup={h_max / h_base:.2f}{relative}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="documents (default 20,000)")
    parser.add_argument("--dim", type=int, default=384, help="Gaussian dimension (default 384)")
    parser.add_argument("--queries", type=int, default=400, help="searches per measurement (default 400)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="thread counts (default 1 2 4)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error(f"--threads: every count must be at least 1; got {args.threads}")
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]

    def texts(n: int, length: int) -> list[str]:
        words = rng.zipf(1.3, size=(n, length)) % len(vocab)
        return [" ".join(vocab[w] for w in row) for row in words]

    def gaussians(n: int) -> Gaussians:
        mean = rng.normal(size=(n, args.dim)).astype(np.float32)
        var = rng.uniform(0.5, 2.0, size=(n, args.dim)).astype(np.float32)
        return Gaussians(mean, var)

    ids = [f"d{i}" for i in range(args.n)]
    docs, doc_g = texts(args.n, 60), gaussians(args.n)
    queries, query_g = texts(args.queries, 6), gaussians(args.queries)
    hybrid = KLHybridStore(fusion="rrf")
    hybrid.add(docs, gaussians=doc_g, ids=ids)
    dense = KLStore(dim=args.dim)
    dense.add(docs, gaussians=doc_g, ids=ids)
    hybrid.search(queries[0], k=args.k, query_gaussians=query_g[0:1])  # builds the BM25 index

    def hybrid_one(i: int) -> object:
        return hybrid.search(queries[i], k=args.k, query_gaussians=query_g[i : i + 1])

    def dense_one(i: int) -> object:
        return dense.search(query_g[i : i + 1], k=args.k)

    print(f"n={args.n} dim={args.dim} queries={args.queries} k={args.k} fusion=rrf (best of {args.repeats})")
    rows = []
    for threads in args.threads:
        h = _qps(hybrid_one, args.queries, threads, args.repeats)
        d = _qps(dense_one, args.queries, threads, args.repeats)
        rows.append((threads, h, d))
        print(f"threads={threads} hybrid_qps={h:.1f} dense_qps={d:.1f}")
    print(summary_line(rows))


if __name__ == "__main__":
    main()
