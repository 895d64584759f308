"""Stores over documents whose float32 arithmetic overflows: k-means indexes refuse them, flat scores them exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kl_retrievers
from kl_retrievers.gaussian import Gaussians, exact_top_k, neg_kl_matrix
from kl_retrievers.store import KLStore

# Run in a child process: on a store without the check, FAISS's k-means aborts the process (SIGABRT).
_EXTREME_ADD = """
import json, sys
import numpy as np
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

kw, built_first = json.loads(sys.argv[1]), sys.argv[2] == "1"
rng = np.random.default_rng(0)
k = 16
store = KLStore(**kw)
docs = Gaussians(rng.normal(size=(500, k)), np.exp(rng.normal(size=(500, k))))
extreme = Gaussians(np.zeros((1, k)), np.full((1, k), 1e-19))
out = {}
if built_first:
    store.add(gaussians=docs, ids=[str(i) for i in range(500)])
    batch, ids = extreme, ["confident"]
else:
    batch = Gaussians.concat([docs, extreme])
    ids = [str(i) for i in range(500)] + ["confident"]
try:
    store.add(gaussians=batch, ids=ids)
    out["error"] = None
except ValueError as exc:
    out["error"] = str(exc)
out["len"] = len(store)
out["hits"] = [h.id for h in store.search(docs[:1], k=3)]
store.add(gaussians=docs[:2], ids=["again0", "again1"])
out["len_after"] = len(store)
print(json.dumps(out))
"""


def _run_child(kw: dict[str, object], built_first: bool) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(Path(kl_retrievers.__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", _EXTREME_ADD, json.dumps(kw), "1" if built_first else "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("kw", "built_first"),
    [
        ({"index_type": "ivf", "nlist": 8}, True),
        ({"index_type": "ivf", "nlist": 8}, False),
        ({"index_type": "hnsw", "compression": "pq", "pq_m": 2, "pq_nbits": 4}, True),
    ],
)
def test_kmeans_index_refuses_overflowing_norm_and_stays_usable(kw: dict[str, object], built_first: bool) -> None:
    out = _run_child(kw, built_first)
    error = out["error"]
    assert isinstance(error, str)
    assert "'confident'" in error and "2.306e+18" in error
    expected_len = 500 if built_first else 0
    assert out["len"] == expected_len  # nothing of the refused batch was added
    assert len(out["hits"]) == (3 if built_first else 0)  # type: ignore[arg-type]
    assert out["len_after"] == expected_len + 2


def _brute_force_top(q: Gaussians, d: Gaussians, k: int) -> np.ndarray:
    scores = neg_kl_matrix(q.astype(np.float64), d.astype(np.float64))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_flat_store_exact_when_float32_inner_product_overflows() -> None:
    rng = np.random.default_rng(0)
    k = 300
    docs = Gaussians(rng.normal(size=(60, k)), 10 ** rng.uniform(-8, -6, size=(60, k))).astype(np.float32)
    query = Gaussians(rng.normal(size=(2, k)), np.full((2, k), 1e30))
    store = KLStore()
    store.add(gaussians=docs, ids=[str(i) for i in range(60)])
    hits = store.search_batch(query, k=3)
    rows, scores = exact_top_k(query, docs, 3)
    assert [[int(h.id) for h in hh] for hh in hits] == rows.tolist()
    assert rows.tolist() == _brute_force_top(query, docs, 3).tolist()
    np.testing.assert_allclose([[h.score for h in hh] for hh in hits], scores, rtol=1e-12)


def test_flat_store_returns_every_document_when_some_overflow() -> None:
    rng = np.random.default_rng(1)
    k = 300
    var = np.vstack([np.ones((10, k)), np.full((10, k), 1e-8)])
    docs = Gaussians(rng.normal(size=(20, k)), var).astype(np.float32)
    query = Gaussians(rng.normal(size=(1, k)), np.full((1, k), 1e30))
    store = KLStore()
    store.add(gaussians=docs, ids=[str(i) for i in range(20)])
    hits = store.search(query, k=20)
    assert len(hits) == 20
    assert sorted(int(h.id) for h in hits) == list(range(20))
    reference = neg_kl_matrix(query.astype(np.float64), docs.astype(np.float64))[0]
    np.testing.assert_allclose([h.score for h in hits], np.sort(reference)[::-1], rtol=1e-12)
    np.testing.assert_allclose([h.score for h in hits], reference[[int(h.id) for h in hits]], rtol=1e-12)
