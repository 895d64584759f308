"""Recall@10 of 8-bit / 4-bit codes (SQ8, PQ) when the norm bound M is large (docs/ann.md).

3,000 synthetic float32 Gaussians, k = 6, means ``offset + N(0, 1)``, log-variances ``N(0, lv^2)``,
30 queries drawn the same way; recall@10 against float64 brute force (a returned document counts
when it scores at least the 10th best exact -KL). Prints one line per setting and index, with M.

    python benchmarks/ann_codes_norm_bound.py      # lv = 0.3 (M about 17) and lv = 3 (M about 2e5)
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from kl_retrievers.gaussian import Gaussians, neg_kl_rows
from kl_retrievers.store import KLStore

INDEXES: list[tuple[str, dict[str, Any]]] = [
    ("hnsw", {}),
    ("hnsw", {"compression": "sq8"}),
    ("ivf", {"nlist": 16, "nprobe": 4}),
    ("ivf", {"nlist": 16, "nprobe": 4, "compression": "pq", "pq_m": 7, "pq_nbits": 8, "refine": "fp16"}),
    ("hnsw", {"compression": "pq", "pq_m": 7, "pq_nbits": 4, "refine": "sq8"}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2, help="seed of the synthetic data (default 2, as in docs/ann.md)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    n, k, nq = 3000, 6, 30
    for offset, lv in [(0.0, 0.3), (500.0, 3.0)]:
        rng = np.random.default_rng(args.seed)
        mean = (rng.normal(size=(n, k)) + offset).astype(np.float32)
        var = np.exp(rng.normal(size=(n, k)) * lv).astype(np.float32)
        queries = Gaussians(rng.normal(size=(nq, k)) + offset, np.exp(rng.normal(size=(nq, k)) * lv))
        exact = neg_kl_rows(queries, Gaussians(mean, var).astype(np.float64), np.tile(np.arange(n), (nq, 1)))
        tenth = np.sort(exact, axis=1)[:, -10]
        for index_type, kw in INDEXES:
            store = KLStore(index_type=index_type, rescore_pool=400, rescore_factor=4, **kw)
            store.add(gaussians=Gaussians(mean, var))
            hits = store.search_batch(queries, k=10)
            recall = np.mean([np.mean([h.score >= tenth[i] for h in row]) for i, row in enumerate(hits)])
            print(f"offset={offset} lv={lv} M={store._engine.norm_bound:.3g} {index_type} {kw}: recall@10={recall:.3f}")


if __name__ == "__main__":
    main()
