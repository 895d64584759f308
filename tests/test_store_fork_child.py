"""A KLStore search in a child made by ``fork`` after the parent used FAISS's OpenMP threads.

faiss-cpu's bundled libgomp keeps a pool of worker threads once the parent has run a parallel region
(a flat search over 10,000+ documents, an HNSW build); a forked child has none of those threads, so
its first parallel FAISS region waited forever. The store registers a fork handler (at its first use
of FAISS) that puts the child's FAISS on one thread. Each case runs in a fresh interpreter that forks;
the child dumps its stack and exits 3 after a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kl_retrievers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

#: Seconds a child may search before it is declared hung (a healthy search takes well under one).
_CHILD_LIMIT = 12

_SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, sys
    import faiss
    import numpy as np
    import kl_retrievers
    from kl_retrievers import Gaussians, KLStore

    print("kl_retrievers from", kl_retrievers.__file__, flush=True)
    case, limit = sys.argv[1], int(sys.argv[2])
    faiss.omp_set_num_threads(2)  # the pool exists only with 2+ threads (a 1-CPU machine defaults to 1)
    rs = np.random.default_rng(0)
    if case == "flat":  # a flat search over 20,000 documents starts the parent's pool
        d, n, nq = 64, 20_000, 1
        store = KLStore(dim=d)
    else:  # building the HNSW graph starts it; the parent never searches
        d, n, nq = 32, 2_000, 32
        store = KLStore(dim=d, index_type="hnsw")
    store.add(gaussians=Gaussians(rs.normal(size=(n, d)), np.ones((n, d))))
    assert case == "flat" or store._engine.index is not None, "the HNSW index was not built"
    queries = Gaussians(rs.normal(size=(nq, d)), np.ones((nq, d)))
    if case == "flat":
        expected = store.search_batch(queries, k=10)
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(limit, exit=True)
        try:
            hits = store.search_batch(queries, k=10)
            assert len(hits) == nq and all(len(h) == 10 for h in hits)
            if case == "flat":
                assert [[h.id for h in q] for q in hits] == [[h.id for h in q] for q in expected]
            print("child ok, omp threads", faiss.omp_get_max_threads(), flush=True)
        except BaseException as exc:
            print("child failed:", repr(exc), flush=True)
            os._exit(2)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("parent omp threads", faiss.omp_get_max_threads(), flush=True)
    print("child exit", os.waitstatus_to_exitcode(status), flush=True)
    """
)


@pytest.mark.parametrize("case", ["flat", "hnsw"])
def test_search_in_forked_child_does_not_hang(case: str, tmp_path: Path) -> None:
    # the child interpreter imports the kl_retrievers this test imported (not one in its working folder)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    root = str(Path(kl_retrievers.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, case, str(_CHILD_LIMIT)],
        capture_output=True,
        text=True,
        timeout=_CHILD_LIMIT + 90,
        env=env,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "child exit 0" in proc.stdout, out  # 1: hung, faulthandler exited it (its stack is in stderr)
    assert "child ok, omp threads 1" in proc.stdout, out
    assert "parent omp threads 2" in proc.stdout, out  # the handler runs in the child only
