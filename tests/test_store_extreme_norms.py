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
import json, logging, sys
import numpy as np
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # the log: stderr
kw, built_first = json.loads(sys.argv[1]), sys.argv[2] == "1"
rng = np.random.default_rng(0)
k = 16
store = KLStore(**kw)
docs = Gaussians(rng.normal(size=(500, k)), np.exp(rng.normal(size=(500, k))))
extreme = Gaussians(np.zeros((1, k)), np.full((1, k), 1e-19))
out = {}
if built_first:
    store.add(gaussians=docs, ids=[str(i) for i in range(500)], metadatas=[{"i": i} for i in range(500)])
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
if built_first:  # an upsert that brings the extreme document in is refused too: nothing changes
    store.delete(["7", "8"])  # tombstones the refused rebuild must leave as they were

    def snapshot():
        ids = store.ids
        table, engine = store._table, store._engine
        kept = store.get_gaussians(ids)
        return dict(
            ids=ids, allids=list(table.ids), rows=table.n_rows, dead=int((~table.alive).sum()), M=store.norm_bound,
            meta=[d.metadata for d in store.get_by_ids(ids)], g=[kept.mean.tolist(), kept.var.tolist()],
            hits=[[h.id, h.score] for h in store.search(docs[:1], k=5)],
            filtered=[h.id for h in store.search(docs[:1], k=5, filter={"i": 3})],
            ntotal=None if engine.index is None else int(engine.index.ntotal),
        )

    before = snapshot()
    out["upserts"] = []
    for batch, up_ids in [
        (extreme, ["3"]),
        (Gaussians.concat([docs[10:12], extreme]), ["10", "new", "11"]),
    ]:
        try:
            store.add(gaussians=batch, ids=up_ids, metadatas=[{"i": -1}] * len(up_ids))
            error = None
        except ValueError as exc:
            error = str(exc)
        after = snapshot()
        out["upserts"].append([error, sorted(key for key in before if before[key] != after[key])])
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
    result["stderr"] = proc.stderr  # the child's log (warnings go to stderr)
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
    assert "(row" not in error  # a row of the refused batch, gone with it, means nothing to the caller
    expected_len = 500 if built_first else 0
    assert out["len"] == expected_len  # nothing of the refused batch was added
    assert len(out["hits"]) == (3 if built_first else 0)  # type: ignore[arg-type]
    assert out["len_after"] == expected_len + 2 - (2 if built_first else 0)
    # no "rebuilding the index" before the refusal: the rebuild never happened
    stderr = out["stderr"]
    assert isinstance(stderr, str) and "index bound" not in stderr and "rebuilding" not in stderr
    if built_first:
        upserts = out["upserts"]
        assert isinstance(upserts, list) and len(upserts) == 2
        for (up_error, changed), named in zip(upserts, ["'3'", "'11'"], strict=True):
            assert isinstance(up_error, str) and named in up_error and "2.306e+18" in up_error
            assert changed == []  # ids, rows, tombstones, M, metadata, Gaussians, results: as before


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


def test_refine_sends_a_query_with_a_dropped_row_straight_to_the_fallback() -> None:
    """A -1 label (a score that overflowed in float32) would come back in any wider search: no second search."""
    from kl_retrievers.gaussian import refine_top_k

    n_allowed, k = 40, 3
    calls: list[list[int]] = []
    fell_back: list[list[int]] = []
    exact = -np.arange(n_allowed, dtype=np.float64)  # row r scores -r for every query

    def candidates(qi: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(qi.tolist())
        lab = np.tile(np.arange(c), (qi.size, 1))
        approx = np.tile(exact[:c].astype(np.float32), (qi.size, 1))
        # query 1: the float32 search dropped a row (label -1, score -inf); query 2: its pool is too tight
        # to prove (witness within the bound), so it is searched again, wider
        lab[qi == 1, 2], approx[qi == 1, 2] = -1, -np.inf
        bound = np.where(qi == 2, 1e9, 1e-3)
        return lab, approx, bound

    def rescore(qi: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, exact[np.maximum(rows, 0)], -np.inf)

    def fallback(qi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fell_back.append(qi.tolist())
        return np.tile(np.arange(k), (qi.size, 1)), np.tile(exact[:k], (qi.size, 1))

    rows, scores = refine_top_k(3, k, n_allowed, 2, candidates, rescore, fallback, np.zeros(3))
    assert calls[0] == [0, 1, 2]
    assert all(1 not in later for later in calls[1:])  # the query with a dropped row is not searched again
    assert calls[1:] == [[2]]  # the unproven one is (its wider pool holds every row: proven)
    assert fell_back == [[1]]
    assert rows.tolist() == [[0, 1, 2]] * 3
    np.testing.assert_array_equal(scores, np.tile(exact[:k], (3, 1)))


def test_flat_search_without_overflow_never_scores_every_row_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary flat searches (filters allowing fewer rows than k, tombstones) are proven from float32 candidates."""
    import kl_retrievers.store._engines as engines

    fallbacks: list[int] = []
    real = engines.float64_top_k

    def spy(queries: Gaussians, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        fallbacks.append(len(queries))
        return real(queries, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engines, "float64_top_k", spy)
    rng = np.random.default_rng(2)
    k, n = 32, 80
    docs = Gaussians(rng.normal(size=(n, k)), np.exp(rng.normal(size=(n, k)))).astype(np.float32)
    store = KLStore()
    store.add(gaussians=docs, ids=[str(i) for i in range(n)], metadatas=[{"g": i % 4} for i in range(n)])
    store.delete(["0", "21", "22"])
    alive = np.array([i not in (0, 21, 22) for i in range(n)])
    queries = Gaussians(rng.normal(size=(4, k)), np.exp(rng.normal(size=(4, k))))
    reference = neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64))
    for top, group in [(10, None), (3, None), (n, None), (5, 1), (40, 1), (40, 2)]:
        allowed = alive if group is None else alive & (np.arange(n) % 4 == group)
        hits = store.search_batch(queries, k=top, filter=None if group is None else {"g": group})
        for row, want in zip(hits, reference, strict=True):
            expected = np.flatnonzero(allowed)[np.argsort(-want[allowed], kind="stable")][:top]
            assert [int(h.id) for h in row] == expected.tolist()
            np.testing.assert_allclose([h.score for h in row], want[expected], rtol=1e-9)
    assert fallbacks == []


# ------------------------------------------------------------------ norm_headroom: a sane upper limit
@pytest.mark.parametrize("headroom", [1e7, 1e19, np.float64(2e6)])
def test_a_norm_headroom_above_the_limit_is_refused_saying_which_limit_and_why(headroom: float) -> None:
    """A huge headroom made an ordinary document be blamed by the k-means refusal (M = headroom * its norm)."""
    with pytest.raises(ValueError, match=r"norm_headroom must be a finite number >= 1 and <= 1e\+06") as info:
        KLStore(index_type="ivf", nlist=4, norm_headroom=headroom)
    assert f"got {headroom!r}" in str(info.value) and "float32 precision" in str(info.value)


def test_a_norm_headroom_at_the_limit_is_accepted_and_named_in_the_refusal() -> None:
    rng = np.random.default_rng(0)
    k = 16
    store = KLStore(index_type="flat", norm_headroom=1e6)
    store.add(gaussians=Gaussians(rng.normal(size=(4, k)), np.ones((4, k))), ids=list("abcd"))
    assert len(store) == 4 and store.norm_headroom == 1e6


def test_the_kmeans_refusal_names_the_norm_headroom() -> None:
    rng = np.random.default_rng(0)
    k = 16
    docs = Gaussians(rng.normal(size=(40, k)), np.ones((40, k)))
    extreme = Gaussians(np.zeros((1, k)), np.full((1, k), 1e-19))
    store = KLStore(index_type="ivf", nlist=4, norm_headroom=1.5)
    with pytest.raises(ValueError, match=r"times norm_headroom=1\.5 gives the bound M=") as info:
        store.add(gaussians=Gaussians.concat([docs, extreme]), ids=[*map(str, range(40)), "x"])
    assert "'x'" in str(info.value)
