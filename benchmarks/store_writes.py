"""Cost of small writes to a large KLStore: one-document adds and upserts after a bulk add (flat index).

Each add used to copy the whole table (O(N)); the table now keeps spare rows. Prints
``one_doc_add_ms=X`` (mean over the small adds), after the settings. Then one-document upserts
(each replaces a stored document), side by side on one machine: with ``compact_threshold=0`` (the
flat store compacts its tables on every write, as every flat store did before replaced rows were
tombstoned) and with the default threshold (tombstones until it is passed). Last, searches answered
by one thread while another upserts back to back for ``--seconds`` (the store's read-write lock
lets waiting searches in between writes). Prints, last,
``upsert_ms_compact_each=X upsert_ms_default=Y ratio=Z searches_during_upserts=S writes=W``.

    python benchmarks/store_writes.py            # 100,000 x 64 Gaussians, 200 one-document adds
    python benchmarks/store_writes.py --n 300000
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents added in bulk first (default 100,000)")
    parser.add_argument("--dim", type=int, default=64, help="Gaussian dimension (default 64)")
    parser.add_argument("--adds", type=int, default=200, help="one-document adds (and upserts) timed (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="searches against back-to-back upserts (default 5)")
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

    upsert_ms = {}
    for label, threshold in (("compact_each", 0.0), ("default", None)):
        kwargs = {} if threshold is None else {"compact_threshold": threshold}
        target = KLStore(dim=args.dim, **kwargs)
        target.add(gaussians=bulk, ids=[f"d{i}" for i in range(args.n)])
        t = time.perf_counter()
        for i, g in enumerate(one):
            target.add(gaussians=g, ids=[f"d{i}"])  # replaces a stored document
        upsert_ms[label] = (time.perf_counter() - t) / args.adds * 1000
        print(f"{label}: one_doc_upsert_ms={upsert_ms[label]:.3f} compactions={target.compaction_count}")

    query = Gaussians(rng.normal(size=(1, args.dim)).astype(np.float32), np.ones((1, args.dim), np.float32))
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            store.add(gaussians=one[writes % len(one)], ids=[f"d{writes % args.n}"])
            writes += 1

    searches = 0
    thread = threading.Thread(target=writer)
    thread.start()
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        store.search(query, k=10)
        searches += 1
    stop.set()
    thread.join()
    ratio = upsert_ms["compact_each"] / upsert_ms["default"]
    print(
        f"upsert_ms_compact_each={upsert_ms['compact_each']:.3f} upsert_ms_default={upsert_ms['default']:.3f} "
        f"ratio={ratio:.1f} searches_during_upserts={searches} writes={writes}"
    )


if __name__ == "__main__":
    main()
