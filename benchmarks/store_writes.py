"""Cost of small writes to a large KLStore: one-document adds and upserts after a bulk add (flat index).

Each add used to copy the whole table (O(N)); the table now keeps spare rows. Prints
``one_doc_add_ms=X`` (mean over the small adds), after the settings. Then one-document upserts
(each replaces a stored document), side by side on one machine: with ``compact_threshold=0`` (the
flat store compacts its tables on every write, as every flat store did before replaced rows were
tombstoned) and with the default threshold (tombstones until it is passed). Last, searches answered
by one thread while another upserts back to back for ``--seconds`` (the store's read-write lock
lets waiting searches in between writes). Prints, last,
``upsert_ms_compact_each=X upsert_ms_default=Y ratio=Z searches_during_upserts=S writes=W``.

``--load`` times instead a load of the saved bulk store with ``mmap=True`` (each load in a fresh process,
``verify_checksums`` true and false alternating, ``--rounds`` of each, the page cache warm after the save).
It prints the files' sizes, then per load ``load_s``, the page faults it took and the process's resident
file pages before and after it (``rss_file_mib_before``: the libraries'; ``rss_file_mib``: with those the
load mapped in, FAISS's and the store's pages it touched), then ``sumlogvar_s``, the time of the
``sum_i log var_i`` pass over the mapped variances (what a load would spare with those sums saved; its
value checks still read every row).

    python benchmarks/store_writes.py            # 100,000 x 64 Gaussians, 200 one-document adds
    python benchmarks/store_writes.py --n 300000
    python benchmarks/store_writes.py --load --n 200000 --dim 384
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="documents added in bulk first (default 100,000)")
    parser.add_argument("--dim", type=int, default=64, help="Gaussian dimension (default 64)")
    parser.add_argument("--adds", type=int, default=200, help="one-document adds (and upserts) timed (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="searches against back-to-back upserts (default 5)")
    parser.add_argument("--load", action="store_true", help="time loads of the saved store with mmap=True instead")
    parser.add_argument("--rounds", type=int, default=3, help="--load: loads of each kind (default 3)")
    parser.add_argument("--load-child", nargs=2, metavar=("FOLDER", "VERIFY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        _load_child(Path(args.load_child[0]), args.load_child[1] == "1")
        return
    rng = np.random.default_rng(0)
    store = KLStore(dim=args.dim)
    if args.load:  # variances not all 1, so that the log pass does real work
        variances = rng.uniform(0.5, 2.0, size=(args.n, args.dim)).astype(np.float32)
        bulk = Gaussians(rng.normal(size=(args.n, args.dim)).astype(np.float32), variances)
        store.add(gaussians=bulk, ids=[f"d{i}" for i in range(args.n)])
        _time_loads(store, args.rounds)
        return
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


def _time_loads(store: KLStore, rounds: int) -> None:
    """Save ``store`` to a temporary folder; time ``rounds`` mmap loads of it each way, each in a fresh process."""
    print(f"n={len(store)} dim={store.dim} rounds={rounds} (mmap=True, warm page cache)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.save(Path(tmp) / "store")
        del store
        sizes = " ".join(f"{p.name}={p.stat().st_size / 2**20:.0f}" for p in sorted(folder.iterdir()))
        print(f"files_mib: {sizes}")
        for r in range(rounds):
            for verify in ("1", "0"):
                cmd = [sys.executable, __file__, "--load-child", str(folder), verify]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                print(f"round={r} {out}")
        var = np.load(folder / "var.npy", mmap_mode="r")
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for s in range(0, len(var), 32768):  # the block size of the load's pass (LOAD_BLOCK)
                np.log(np.asarray(var[s : s + 32768], np.float64)).sum(1)
            best = min(best, time.perf_counter() - t)
        print(f"sumlogvar_s={best:.3f} (best of {rounds})")


def _load_child(folder: Path, verify: bool) -> None:
    """One timed ``KLStore.load(folder, mmap=True)``: prints its time, page faults and resident file pages."""
    before, file_before = resource.getrusage(resource.RUSAGE_SELF), _rss_file_mib()
    t = time.perf_counter()
    store = KLStore.load(folder, mmap=True, verify_checksums=verify)  # held while its pages are counted
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"verify_checksums={verify} load_s={seconds:.3f} minor_faults={after.ru_minflt - before.ru_minflt} "
        f"major_faults={after.ru_majflt - before.ru_majflt} rss_file_mib_before={file_before:.0f} "
        f"rss_file_mib={_rss_file_mib():.0f} documents={len(store)}"
    )


def _rss_file_mib() -> float:
    """This process's resident file-backed pages (``RssFile`` of ``/proc/self/status``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
