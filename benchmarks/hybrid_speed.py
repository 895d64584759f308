"""Latency of one KLHybridStore search by fusion mode, with and without a metadata filter.

What is timed is ``KLHybridStore.search`` with the query given as a Gaussian (no encoder): both halves'
candidates, fusion and the final hits' stored texts and metadata. Synthetic corpus: texts of random words
from a 5,000-word vocabulary (Zipf), random Gaussians, four metadata keys per document. Each cell is the
best of ``--repeats`` runs of ``--queries`` searches, in milliseconds per search. With a filter, a
callable filter also counts how often it is called: ``filter_calls_per_row`` is the calls per search
over the number of documents (each half scanning the metadata on its own gives 2.0, one shared scan 1.0).
Then the KL half alone (``store.kl.search``, the dense store) is timed by ``k`` (10 to 200, none above
the store's size, and ``--k``: the hybrid asks it for 100 candidates), with the ratio of each fusion mode's
unfiltered search to the KL half's at ``--k`` and at 100.
``--gaussians`` reads the documents' and queries' Gaussians from an ``.npz`` (arrays ``dm``, ``dv``, ``qm``,
``qv``: a real corpus's encodings; the texts stay synthetic), as embedding-like data can make the exact
dense search prove its candidates differently from random Gaussians. ``--dataset`` times real data: a BEIR
folder's corpus texts and the ``--split``'s queries (all of them unless ``--queries`` is given), with
``--model``'s Gaussians (default: the default model) from the encoding cache that ``kl-retrievers evaluate``
and ``benchmarks/hybrid.py`` share, encoded once on ``--backend`` (default ``onnx``, the library's CPU default;
the cache keys the backend, so pass ``torch`` to reuse ``evaluate``'s encodings) where not cached yet; the
four metadata keys stay synthetic, so the filter columns mean the same. ``--clock cpu`` times the process's
CPU time instead of the wall clock (less disturbed by other processes on a busy machine; with
``OMP_NUM_THREADS=1`` a search runs on one thread).

Prints, last, ``rrf_ms=X convex_ms=Y adaptive_ms=Z filtered_ms=W filter_calls_per_row=C kl_half_ms=D``: the
unfiltered latency of each mode, the mean latency of the filtered searches, the filter calls per row, and the
KL half alone at the hybrid's candidate depth (``max(--k, 100)``: what it asks the dense store for).

``--digest`` times nothing: it prints a SHA-256 of every search's results (each fusion mode, without and with
a filter, at ``--k`` and 100), so that two checkouts can be shown to return the same results.

Compare two checkouts by running this script alternately with ``PYTHONPATH`` pointing at each (the
numbers in docs/hybrid.md were measured with ``OMP_NUM_THREADS=1``):

    python benchmarks/hybrid_speed.py            # 20,000 documents, dim 384, 200 queries
    python benchmarks/hybrid_speed.py --quick    # 5,000 documents, dim 128, 100 queries (under a minute)
    python benchmarks/hybrid_speed.py --gaussians enc.npz --queries 100   # a corpus's encodings
    python benchmarks/hybrid_speed.py --dataset ../shared/datasets/scifact --clock cpu   # real texts and queries
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from timing import CLOCKS, best_of

from kl_retrievers.cli_common import positive_int
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import DEFAULT_CANDIDATES, FUSION_MODES, FusionMode, KLHybridStore
from kl_retrievers.pretrained import BACKENDS, Backend, load_model

_LANGS = ("en", "de", "fr")
#: Results per search at which the KL half alone is timed.
_DENSE_KS = (10, 25, 50, 100, 200)


def _best_ms(
    search: Callable[[int], object], n_queries: int, repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best of ``repeats`` runs of ``n_queries`` searches by ``clock``: milliseconds per search."""

    def run() -> None:
        for i in range(n_queries):
            search(i)

    (best,), _ = best_of(run, repeats, (clock,))
    return best / n_queries * 1000.0


class CountingFilter:
    """A callable filter (``lang == "en"``) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, meta: Mapping[str, Any]) -> bool:
        self.calls += 1
        return bool(meta.get("lang") == "en")


def build_store(
    n: int, dim: int, seed: int = 0, gaussians: Gaussians | None = None, texts: list[str] | None = None
) -> KLHybridStore:
    """A hybrid store of ``n`` synthetic documents (RRF by default; each search names its mode).

    Their Gaussians are random, or ``gaussians`` (``n`` of dimension ``dim``) where given; their texts
    random words, or ``texts`` (``n`` of them) where given.
    """
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    words = rng.zipf(1.3, size=(n, 60)) % len(vocab)
    if texts is None:
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


def load_dataset(
    folder: str, split: str, model: str | None, backend: Backend
) -> tuple[list[str], list[str], Gaussians, Gaussians]:
    """A BEIR split's corpus texts, query texts and their Gaussians (documents', queries'), in file order.

    The Gaussians come from :func:`~kl_retrievers.evaluation.encode_dataset`: read from the encoding cache,
    or encoded once by ``model`` (``None``: the default model) on ``backend`` and cached.
    """
    from kl_retrievers.datasets import load_beir
    from kl_retrievers.evaluation import encode_dataset

    ds = load_beir(folder, split)
    q, d = encode_dataset(load_model(model, backend=backend), ds, show_progress=False)
    return ds.document_texts(), ds.query_texts(), d, q


def results_digest(store: KLHybridStore, queries: list[str], qg: Gaussians, ks: tuple[int, ...]) -> str:
    """``<mode>=<sha256 prefix> ... results_digest=<sha256 prefix>`` of every search's results.

    Each result is hashed with every field of :class:`~kl_retrievers.hybrid.HybridResult` (ids, order, fused,
    ``-KL`` and BM25 scores to the last bit, ranks, weights, texts and metadata), for each fusion mode without a
    filter, with ``{"lang": "en"}`` and with a callable filter, at each ``k`` in ``ks``.
    """
    total = hashlib.sha256()
    parts = []
    for mode in FUSION_MODES:
        h = hashlib.sha256()
        for flt in (None, {"lang": "en"}, CountingFilter()):
            for k in sorted(set(ks)):
                for i, text in enumerate(queries):
                    hits = store.search(text, k=k, filter=flt, query_gaussians=qg[i : i + 1], fusion=mode)
                    rows = [dataclasses.asdict(r) for r in hits]
                    h.update(json.dumps(rows, sort_keys=True, default=repr, allow_nan=True).encode())
        parts.append(f"{mode}={h.hexdigest()[:16]}")
        total.update(h.digest())
    return " ".join(parts) + f" results_digest={total.hexdigest()[:16]}"


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
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="FOLDER",
        help="a BEIR folder: its corpus texts, the --split's queries and their cached (else encoded) Gaussians; "
        "sets --n, --dim and, unless given, --queries",
    )
    parser.add_argument("--split", default=None, help="--dataset's query split (default test)")
    parser.add_argument("--model", default=None, help="--dataset's encoder (default: the default model)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="--model's backend (default onnx; the cache keys it)",
    )
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="wall", help="wall time or the process's CPU time (default wall)"
    )
    parser.add_argument(
        "--digest",
        action="store_true",
        help="time nothing: print a SHA-256 of every search's results (each fusion mode, no filter, a dict and a "
        "callable filter, at --k and 100) to compare two checkouts' results",
    )
    args = parser.parse_args(argv)
    if args.dataset is not None and args.gaussians is not None:
        parser.error("--dataset and --gaussians both give the Gaussians: pass one")
    if args.dataset is None and (args.split, args.model, args.backend) != (None, None, None):
        parser.error("--split, --model and --backend choose --dataset's queries and encodings: pass --dataset too")
    n = args.n if args.n is not None else (5_000 if args.quick else 20_000)
    dim = args.dim if args.dim is not None else (128 if args.quick else 384)
    n_queries = args.queries if args.queries is not None else (100 if args.quick else 200)
    clock = CLOCKS[args.clock]
    given: tuple[Gaussians, Gaussians] | None = None
    real: tuple[list[str], list[str]] | None = None
    if args.gaussians is not None:
        with np.load(args.gaussians) as z:
            given = Gaussians(z["dm"], z["dv"]), Gaussians(z["qm"], z["qv"])
    elif args.dataset is not None:
        doc_texts, query_texts, d, q = load_dataset(
            args.dataset, args.split or "test", args.model, args.backend or "onnx"
        )
        given, real = (d, q), (doc_texts, query_texts)
        n_queries = args.queries if args.queries is not None else len(q)
    if given is not None:
        (n, dim), n_queries = given[0].mean.shape, min(n_queries, len(given[1]))

    if given is None:
        store = build_store(n, dim)
    else:
        store = build_store(n, dim, gaussians=given[0], texts=None if real is None else real[0])
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(5000)]
    queries = [" ".join(vocab[w] for w in row) for row in rng.zipf(1.3, size=(n_queries, 6)) % len(vocab)]
    if real is not None:
        queries = real[1][:n_queries]
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

    source = "synthetic" if real is None else f"{args.dataset} ({args.split or 'test'} queries)"
    if args.digest:
        print(f"{source}: n={n} dim={dim} queries={n_queries}")
        print(results_digest(store, queries, qg, (args.k, DEFAULT_CANDIDATES)))
        return
    print(
        f"{source}: n={n} dim={dim} queries={n_queries} k={args.k} (best of {args.repeats}, {args.clock} ms per search)"
    )
    print(f"{'fusion':<10}{'no filter':>12}{'dict filter':>14}{'callable':>12}")
    unfiltered: dict[str, float] = {}
    filtered: list[float] = []
    counter = CountingFilter()
    for mode in FUSION_MODES:
        cells = []
        for flt in (None, {"lang": "en"}, counter):

            def one(i: int, flt: Any = flt, mode: FusionMode = mode) -> object:
                return store.search(queries[i], k=args.k, filter=flt, query_gaussians=qg[i : i + 1], fusion=mode)

            cells.append(_best_ms(one, n_queries, args.repeats, clock))
        unfiltered[mode] = cells[0]
        filtered += cells[1:]
        print(f"{mode:<10}{cells[0]:>12.3f}{cells[1]:>14.3f}{cells[2]:>12.3f}")
    dense: dict[int, float] = {}
    depth = min(
        max(args.k, DEFAULT_CANDIDATES), n
    )  # what the hybrid asks the KL half for (hybrid.py: max(k, candidates))
    for k in sorted({*(k for k in _DENSE_KS if k <= n), args.k, depth}):  # a k above the store's size times no more

        def alone(i: int, k: int = k) -> object:
            return store.kl.search(qg[i : i + 1], k=k)

        dense[k] = _best_ms(alone, n_queries, args.repeats, clock)
    print("KL half alone, ms per search by k: " + " ".join(f"k={k}: {ms:.3f}" for k, ms in dense.items()))
    for k in sorted({args.k, depth}):
        print(
            f"hybrid / KL half at k={k}{' (the hybrid asks it for this many)' if k == depth else ''}: "
            + " ".join(f"{mode} {unfiltered[mode] / dense[k]:.2f}x" for mode in FUSION_MODES)
        )
    counter.calls = 0
    store.search(queries[0], k=args.k, filter=counter, query_gaussians=qg[0:1])
    calls_per_row = counter.calls / len(store)
    print(
        " ".join(f"{mode}_ms={unfiltered[mode]:.3f}" for mode in FUSION_MODES)
        + f" filtered_ms={float(np.mean(filtered)):.3f} filter_calls_per_row={calls_per_row:.2f}"
        + f" kl_half_ms={dense[depth]:.3f}"
    )


if __name__ == "__main__":
    main()
