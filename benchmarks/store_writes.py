"""Cost of small writes to a large KLStore: one-document adds after a bulk add (flat index).

Each add used to copy the whole table (O(N)); the table now keeps spare rows. Prints one line,
``one_doc_add_ms=X`` (mean over the small adds), after the settings.

    python benchmarks/store_writes.py            # 100,000 x 64 Gaussians, 200 one-document adds
    python benchmarks/store_writes.py --n 300000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents added in bulk first (default 100,000)")
    parser.add_argument("--dim", type=int, default=64, help="Gaussian dimension (default 64)")
    parser.add_argument("--adds", type=int, default=200, help="one-document adds timed (default 200)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    store = KLStore(dim=args.dim)
    bulk = Gaussians(rng.normal(size=(args.n, args.dim)).astype(np.float32), np.ones((args.n, args.dim), np.float32))
    store.add(gaussians=bulk, ids=[f"d{i}" for i in range(args.n)])
    one = [
        Gaussians(rng.normal(size=(1, args.dim)).astype(np.float32), np.ones((1, args.dim), np.float32))
        for _ in range(args.adds)
    ]
    t = time.perf_counter()
    for i, g in enumerate(one):
        store.add(gaussians=g, ids=[f"x{i}"])
    ms = (time.perf_counter() - t) / args.adds * 1000
    print(f"n={args.n} dim={args.dim} adds={args.adds}")
    print(f"one_doc_add_ms={ms:.3f}")


if __name__ == "__main__":
    main()
