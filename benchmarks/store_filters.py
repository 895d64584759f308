"""Python cost around FAISS in a flat KLStore: filtered searches, an add with metadata, nested-metadata hits.

A metadata filter is checked row by row in Python on every query (no index on metadata), so its
cost grows with the store. Prints, last, one line
``filtered_ms=X and_filtered_ms=Y unfiltered_ms=Z add_with_metadata_s=W nested_hits_ms=V check_ms=C``
(``check_ms``: the float32 check every ``add`` makes of 20,000 x 384 document Gaussians)
(best of ``--repeat`` runs each), and a digest of the results so that two versions of the code can
be checked to return the same documents and scores:

    python benchmarks/store_filters.py                 # 20,000 x 64 Gaussians
    PYTHONPATH=/path/to/other/checkout python benchmarks/store_filters.py   # the same, another version
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from timing import best_of

from kl_retrievers.gaussian import Gaussians, check_float32_scorable
from kl_retrievers.store import KLStore


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The best of ``repeat`` runs of ``fn`` by wall time, seconds, and its last result."""
    (seconds,), out = best_of(fn, repeat)
    return seconds, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="documents (default 20,000)")
    parser.add_argument("--dim", type=int, default=64, help="Gaussian dimension (default 64)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement; the best counts (default 7)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, dim = args.n, args.dim
    docs = Gaussians(
        rng.normal(size=(n, dim)).astype(np.float32), rng.uniform(0.5, 2.0, size=(n, dim)).astype(np.float32)
    )
    ids = [f"d{i}" for i in range(n)]
    metas = [{"i": i, "lang": ("en", "de", "fr")[i % 3], "tags": ["a", "b"], "src": {"page": i % 50}} for i in range(n)]

    def build() -> KLStore:
        store = KLStore(dim=dim)
        store.add(gaussians=docs, ids=ids, metadatas=metas)
        return store

    add_s, store = _best(build, 3)
    query = Gaussians(
        rng.normal(size=(1, dim)).astype(np.float32), rng.uniform(0.5, 2.0, size=(1, dim)).astype(np.float32)
    )
    digest = hashlib.sha256()
    times = {}
    for name, flt, k in [
        ("unfiltered", None, 10),
        ("filtered", {"lang": "en"}, 10),
        ("and_filtered", {"lang": "en", "i": {"$lt": n * 3 // 4}}, 10),
        ("nested_hits", None, 100),
    ]:
        seconds, hits = _best(lambda flt=flt, k=k: store.search(query, k=k, filter=flt), args.repeat)
        times[name] = seconds
        digest.update(repr([(h.id, h.score, h.metadata) for h in hits]).encode())
    wide = Gaussians(
        rng.normal(size=(20_000, 384)).astype(np.float32), rng.uniform(0.5, 2.0, size=(20_000, 384)).astype(np.float32)
    )
    check_s, _ = _best(lambda: check_float32_scorable(wide, "document"), 5)
    print(f"n={n} dim={dim} repeat={args.repeat} results_sha256={digest.hexdigest()[:16]}")
    print(
        f"filtered_ms={times['filtered'] * 1e3:.2f} and_filtered_ms={times['and_filtered'] * 1e3:.2f} "
        f"unfiltered_ms={times['unfiltered'] * 1e3:.2f} add_with_metadata_s={add_s:.3f} "
        f"nested_hits_ms={times['nested_hits'] * 1e3:.2f} check_ms={check_s * 1e3:.1f}"
    )


if __name__ == "__main__":
    main()
