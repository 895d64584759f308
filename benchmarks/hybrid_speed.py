"""Latency of one KLHybridStore search by fusion mode, with and without a metadata filter.

What is timed is ``KLHybridStore.search`` with the query given as a Gaussian (no encoder): both halves'
candidates, fusion and the final hits' stored texts and metadata. Synthetic corpus: texts of random words
from a 5,000-word vocabulary (Zipf), random Gaussians, four metadata keys per document. Each cell is the
best of ``--repeats`` runs of ``--queries`` searches, in milliseconds per search. With a filter, a
callable filter also counts how often it is called: ``filter_calls_per_row`` is the calls per search
over the number of documents (each half scanning the metadata on its own gives 2.0, one shared scan 1.0).
Then the KL half alone (``store.kl.search``, the dense store) is timed by ``k`` (10 to 200, none above
the store's size, and ``--k``: the hybrid asks it for 100 candidates), with the ratio of each fusion mode's
unfiltered search to the KL half's at ``--k``.
``--gaussians`` reads the documents' and queries' Gaussians from an ``.npz`` (arrays ``dm``, ``dv``, ``qm``,
``qv``: a real corpus's encodings; the texts stay synthetic), as embedding-like data can make the exact
dense search prove its candidates differently from random Gaussians.

Prints, last, ``rrf_ms=X convex_ms=Y adaptive_ms=Z filtered_ms=W filter_calls_per_row=C``: the unfiltered
latency of each mode, the mean latency of the filtered searches, and the filter calls per row.

Compare two checkouts by running this script alternately with ``PYTHONPATH`` pointing at each (the
numbers in docs/hybrid.md were measured with ``OMP_NUM_THREADS=1``):

    python benchmarks/hybrid_speed.py            # 20,000 documents, dim 384, 200 queries
    python benchmarks/hybrid_speed.py --quick    # 5,000 documents, dim 128, 100 queries (under a minute)
    python benchmarks/hybrid_speed.py --gaussians enc.npz --queries 100   # a corpus's encodings
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from store_filters import _best  # the same best-of-N timer (this folder is on sys.path when run as a script)

from kl_retrievers.cli_common import positive_int
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import FUSION_MODES, KLHybridStore

_LANGS = ("en", "de", "fr")
#: Results per search at which the KL half alone is timed.
_DENSE_KS = (10, 25, 50, 100, 200)


def _best_ms(search: Callable[[int], object], n_queries: int, repeats: int) -> float:
    """Best of ``repeats`` (``store_filters._best``): milliseconds per search over ``n_queries`` searches."""
    seconds, _ = _best(lambda: [search(i) for i in range(n_queries)], repeats)
    return seconds / n_queries * 1000.0


class CountingFilter:
    """A callable filter (``lang == "en"``) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, meta: Mapping[str, Any]) -> bool:
        self.calls += 1
        return bool(meta.get("lang") == "en")


def build_store(n: int, dim: int, seed: int = 0, gaussians: Gaussians | None = None) -> KLHybridStore:
    """A hybrid store of ``n`` synthetic documents (RRF by default; each search names its mode).

    Their Gaussians are random, or ``gaussians`` (``n`` of dimension ``dim``) where given.
    """
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    words = rng.zipf(1.3, size=(n, 60)) % len(vocab)
    texts = [" ".join(vocab[w] for w in row) for row in words]
    mean = rng.normal(size=(n, dim)).astype(np.float32)
    var = rng.uniform(0.5, 2.0, size=(n, dim)).astype(np.float32)
    if gaussians is not None:
        mean, var = gaussians.mean, gaussians.var
    metas = [
        {"lang": _LANGS[i % 3], "year": 1990 + i % 35, "source": f"s{i % 17}", "score": float(i % 101) / 100.0}
        for i in range(n)
    ]
    store = KLHybridStore(fusion="rrf")
    store.add(texts, gaussians=Gaussians(mean, var), ids=[f"d{i}" for i in range(n)], metadatas=metas)
    return store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=None, help="documents (default 20,000; --quick: 5,000)")
    parser.add_argument("--dim", type=positive_int, default=None, help="Gaussian dimension (default 384; --quick: 128)")
    parser.add_argument(
        "--queries", type=positive_int, default=None, help="searches per measurement (default 200; --quick: 100)"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--k", type=positive_int, default=10, help="results per search (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smaller corpus: under a minute")
    parser.add_argument(
        "--gaussians",
        default=None,
        metavar="NPZ",
        help="documents' and queries' Gaussians from this .npz (arrays dm, dv, qm, qv; sets --n and --dim)",
    )
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (5_000 if args.quick else 20_000)
    dim = args.dim if args.dim is not None else (128 if args.quick else 384)
    n_queries = args.queries if args.queries is not None else (100 if args.quick else 200)
    given: tuple[Gaussians, Gaussians] | None = None
    if args.gaussians is not None:
        with np.load(args.gaussians) as z:
            given = Gaussians(z["dm"], z["dv"]), Gaussians(z["qm"], z["qv"])
        (n, dim), n_queries = given[0].mean.shape, min(n_queries, len(given[1]))

    store = build_store(n, dim) if given is None else build_store(n, dim, gaussians=given[0])
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(5000)]
    queries = [" ".join(vocab[w] for w in row) for row in rng.zipf(1.3, size=(n_queries, 6)) % len(vocab)]
    qg = (
        Gaussians(
            rng.normal(size=(n_queries, dim)).astype(np.float32),
            rng.uniform(0.5, 2.0, size=(n_queries, dim)).astype(np.float32),
        )
        if given is None
        else given[1][:n_queries]
    )
    store.search(queries[0], k=args.k, query_gaussians=qg[0:1])  # builds the BM25 index
    store.adaptive_params()  # read once, outside the timing

    print(f"n={n} dim={dim} queries={n_queries} k={args.k} (best of {args.repeats}, ms per search)")
    print(f"{'fusion':<10}{'no filter':>12}{'dict filter':>14}{'callable':>12}")
    unfiltered: dict[str, float] = {}
    filtered: list[float] = []
    counter = CountingFilter()
    for mode in FUSION_MODES:
        cells = []
        for flt in (None, {"lang": "en"}, counter):

            def one(i: int, flt: Any = flt, mode: str = mode) -> object:
                return store.search(queries[i], k=args.k, filter=flt, query_gaussians=qg[i : i + 1], fusion=mode)

            cells.append(_best_ms(one, n_queries, args.repeats))
        unfiltered[mode] = cells[0]
        filtered += cells[1:]
        print(f"{mode:<10}{cells[0]:>12.3f}{cells[1]:>14.3f}{cells[2]:>12.3f}")
    dense: dict[int, float] = {}
    for k in sorted({*(k for k in _DENSE_KS if k <= n), args.k}):  # a k above the store's size times nothing more

        def alone(i: int, k: int = k) -> object:
            return store.kl.search(qg[i : i + 1], k=k)

        dense[k] = _best_ms(alone, n_queries, args.repeats)
    print("KL half alone, ms per search by k: " + " ".join(f"k={k}: {ms:.3f}" for k, ms in dense.items()))
    print(
        f"hybrid / KL half at k={args.k}: "
        + " ".join(f"{mode} {unfiltered[mode] / dense[args.k]:.2f}x" for mode in FUSION_MODES)
    )
    counter.calls = 0
    store.search(queries[0], k=args.k, filter=counter, query_gaussians=qg[0:1])
    calls_per_row = counter.calls / len(store)
    print(
        " ".join(f"{mode}_ms={unfiltered[mode]:.3f}" for mode in FUSION_MODES)
        + f" filtered_ms={float(np.mean(filtered)):.3f} filter_calls_per_row={calls_per_row:.2f}"
    )


if __name__ == "__main__":
    main()
