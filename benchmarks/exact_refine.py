"""The exact top-k's wider pools: adaptive (this version) against the former fixed 8x, side by side in one run.

:func:`kl_retrievers.gaussian.refine_top_k` proves that a pool of float32 candidates holds the exact float64 top
``k``. Where the first pool does not, the former version (commit 03becba, copied below as
:func:`fixed_refine_top_k`) searched once more with a pool 8 times as large, re-scored all of it in float64, and
scored every allowed row in float64 where that pool was not enough either. This version re-scores, of each wider
pool, only the rows the float32 error bound cannot rule out, and widens the pool again (8x, a few times) while its
witness is not below the ``k``-th score. Both run :func:`~kl_retrievers.gaussian.exact_top_k` on the same data:

- ``ordinary``: means ``N(0, 1)``, log-variances ``N(0, 0.3^2)``, centred (the default): the first pool is enough;
- ``hard``: means ``20 + 0.3 N(0, 1)``, variances ``1e-4`` (log ``N(0, 0.3^2)``), centred on 0 (a centre far from
  the documents, as a flat store's after the documents that set it were deleted): the first pool fails, the first
  wider one is enough;
- ``harder``: means ``10 + 0.1 N(0, 1)``, variances ``1e-3``, centred on 0: the first wider pool is not enough, the
  second is (the former version scores every row in float64). That pool (2,128 rows at ``k`` = 10) is only searched
  within a quarter of the documents, so this case needs 8,512 documents or more (hence ``--quick``'s 10,000);
- ``hopeless``: means ``20 + 0.03 N(0, 1)``, variances ``1e-4``, centred on 0: no pool short of every row is.

What each case shows at ``k`` = 10: ``harder`` takes about half the time (its float64 scoring of every row
replaced by a second wider pool); ``hard`` re-scores fewer rows (``hard_rows_ratio`` about 0.3 with ``--quick``,
0.4 without) and spends less time in float64, but gains no wall time: its float64 work is a few ms of a call of
100 to 200 ms spent in the float32 searches, so ``hard_time_ratio`` is about 1 (0.6 to 1.7 from run to run on a
busy machine); ``ordinary`` (nothing to widen) and ``hopeless`` (scored on every row by both) do the same work in
both versions, ratios about 1.

``--docs`` documents (default 20,000; ``--quick`` 10,000) and ``--queries`` 20 queries of dimension ``--dim`` 64,
drawn the same way; ``k`` = ``--k`` 10. For each case and version (the two in turn, ``--repeats`` 3 times): the best
time of a call and, apart, of its float64 scoring (the re-scoring and the fallback; the rest is the float32 searches
and the float32 rewrite of the documents), the rows passed to the float64 re-scoring (real rows; with ``-1``
padding in brackets), the float32 searches (queries x pool width), the queries scored in float64 on every row, and
whether the results equal float64 brute force (:func:`~kl_retrievers.gaussian.float64_top_k`: the same rows and
the same float64 scores, bit for bit).

Usage:
    python benchmarks/exact_refine.py --quick     # 7 s on 2 cores at load average 10 (2026-12-07)
    python benchmarks/exact_refine.py             # 13 s, the same machine and load
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/exact_refine.py   # steadier times on a busy machine

The last line printed is always ``hard_rows_ratio=... hard_float64_ratio=... hard_time_ratio=... harder_time_ratio=...
ordinary_time_ratio=... hopeless_time_ratio=... identical=...``: this version's over the former's (rows re-scored,
float64 time, times), and whether every result of both equalled float64 brute force.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kl_retrievers import gaussian
from kl_retrievers.cli_common import positive_int
from kl_retrievers.gaussian import Gaussians, exact_top_k, float64_top_k, top_k_rows

#: name -> (mean offset, spread of the means, variance scale, centred on the documents' mean)
CASES: dict[str, tuple[float, float, float, bool]] = {
    "ordinary": (0.0, 1.0, 1.0, True),
    "hard": (20.0, 0.3, 1e-4, False),
    "harder": (10.0, 0.1, 1e-3, False),
    "hopeless": (20.0, 0.03, 1e-4, False),
}
ADAPTIVE = gaussian.refine_top_k


def fixed_refine_top_k(
    nq: int,
    k: int,
    n_allowed: int,
    margin: int,
    candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    rescore: Callable[[np.ndarray, np.ndarray], np.ndarray],
    fallback: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    query_shift: np.ndarray,
    tie_rank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The former ``refine_top_k`` (commit 03becba): one wider pool, ``max(8 c, k + 256)``, re-scored whole."""
    out_r = np.full((nq, k), -1, dtype=np.int64)
    out_s = np.full((nq, k), -np.inf)
    todo = np.arange(nq)
    hopeless: list[np.ndarray] = []
    c = min(n_allowed, k + max(0, margin))
    for _ in range(2):
        if not todo.size:
            break
        want = min(n_allowed, c + 1)
        lab, approx, bound = candidates(todo, want)
        pool = lab[:, :c]
        r, s = top_k_rows(rescore(todo, pool), pool, k, tie_rank)
        complete = (lab.shape[1] >= want) & (lab[:, :want] >= 0).all(axis=1)
        if want == c:
            ok = usable = complete
        else:
            witness = approx[:, c].astype(np.float64) if lab.shape[1] > c else np.full(todo.size, -np.inf)
            finite = np.isfinite(approx[:, :want]).all(axis=1) & np.isfinite(bound)
            usable = complete & finite
            with np.errstate(invalid="ignore"):
                ok = usable & (witness + bound + query_shift[todo] < s[:, k - 1])
        out_r[todo[ok]], out_s[todo[ok]] = r[ok], s[ok]
        hopeless.append(todo[~usable])
        todo = todo[usable & ~ok]
        c = min(n_allowed, max(8 * c, k + 256))
    todo = np.sort(np.concatenate([todo, *hopeless]))
    if todo.size:
        out_r[todo], out_s[todo] = fallback(todo)
    return out_r, out_s


VERSIONS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {"fixed": fixed_refine_top_k, "adaptive": ADAPTIVE}


@contextmanager
def counting(refine: Callable[..., Any], counts: dict[str, Any]) -> Iterator[None]:
    """``exact_top_k`` runs ``refine`` meanwhile, its float32 searches, rows re-scored, fallbacks and time in float64
    scoring (re-scoring and fallback) added to ``counts``."""

    def counted(
        nq: int, k: int, n_allowed: int, margin: int, cand: Any, rescore: Any, fallback: Any, *rest: Any
    ) -> Any:
        def cand2(qi: np.ndarray, c: int) -> Any:
            counts["searches"].append(f"{qi.size}x{c}")
            return cand(qi, c)

        def rescore2(qi: np.ndarray, rows: np.ndarray) -> Any:
            counts["rows"] += int((rows >= 0).sum())
            counts["padded"] += int(rows.size)
            t0 = time.perf_counter()
            out = rescore(qi, rows)
            counts["float64"] += time.perf_counter() - t0
            return out

        def fallback2(qi: np.ndarray) -> Any:
            counts["fallback"] += int(qi.size)
            t0 = time.perf_counter()
            out = fallback(qi)
            counts["float64"] += time.perf_counter() - t0
            return out

        return refine(nq, k, n_allowed, margin, cand2, rescore2, fallback2, *rest)

    module: Any = gaussian  # exact_top_k calls the module's refine_top_k
    module.refine_top_k = counted
    try:
        yield
    finally:
        module.refine_top_k = ADAPTIVE


def draw(rng: np.random.Generator, n: int, dim: int, offset: float, spread: float, var: float) -> Gaussians:
    mean = (offset + spread * rng.normal(size=(n, dim))).astype(np.float32)
    return Gaussians(mean, (var * np.exp(rng.normal(0.0, 0.3, size=(n, dim)))).astype(np.float32))


def run_case(name: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    offset, spread, var, centred = CASES[name]
    rng = np.random.default_rng(args.seed)
    docs = draw(rng, args.docs, args.dim, offset, spread, var)
    queries = draw(rng, args.queries, args.dim, offset, spread, var).astype(np.float64)
    centre = None if centred else np.zeros(args.dim)
    want_r, want_s = float64_top_k(queries, docs, args.k)
    out: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):  # the versions in turn, so that a change of the machine's load hits both
        for version, refine in VERSIONS.items():
            counts: dict[str, Any] = {"searches": [], "rows": 0, "padded": 0, "fallback": 0, "float64": 0.0}
            with counting(refine, counts):
                t0 = time.perf_counter()
                r, s = exact_top_k(queries, docs, args.k, centre=centre)
                counts["time"] = time.perf_counter() - t0
            counts["identical"] = bool(np.array_equal(r, want_r) and np.array_equal(s, want_s))
            best = out.setdefault(version, counts)
            best["identical"] &= counts["identical"]
            best["time"], best["float64"] = min(best["time"], counts["time"]), min(best["float64"], counts["float64"])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10,000 documents (unless --docs is given)")
    p.add_argument("--docs", type=positive_int, default=None, help="documents (default 20,000; --quick 10,000)")
    p.add_argument("--queries", type=positive_int, default=20, help="queries (default 20)")
    p.add_argument("--dim", type=positive_int, default=64, help="dimension (default 64)")
    p.add_argument("--k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed calls per version, the best kept (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    p.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=list(CASES), help="the cases to run (default all)"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.docs is None:
        args.docs = 10000 if args.quick else 20000
    logging.disable(logging.WARNING)
    print(f"{args.docs} documents, {args.queries} queries, dimension {args.dim}, k = {args.k}\n")
    print(
        "| case | version | time (ms) | of which float64 (ms) | rows re-scored (padded) | float32 searches "
        "| float64 on every row | exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name in args.cases:
        results[name] = run_case(name, args)
        for version, c in results[name].items():
            print(
                f"| {name} | {version} | {1000 * c['time']:.1f} | {1000 * c['float64']:.1f} | "
                f"{c['rows']} ({c['padded']}) | {', '.join(c['searches'])} | {c['fallback']} | {c['identical']} |"
            )

    def ratio(name: str, key: str) -> str:
        if name not in results:
            return "nan"
        old, new = results[name]["fixed"][key], results[name]["adaptive"][key]
        return f"{new / old:.3f}" if old else "nan"

    identical = all(c["identical"] for res in results.values() for c in res.values())
    print(
        f"hard_rows_ratio={ratio('hard', 'rows')} hard_float64_ratio={ratio('hard', 'float64')} "
        f"hard_time_ratio={ratio('hard', 'time')} "
        f"harder_time_ratio={ratio('harder', 'time')} ordinary_time_ratio={ratio('ordinary', 'time')} "
        f"hopeless_time_ratio={ratio('hopeless', 'time')} identical={identical}"
    )


if __name__ == "__main__":
    main()
