"""The exact path of an approximate store reads kept float32 ``d~`` (``FaissEngine._kept_vectors``) instead of
rewriting the allowed rows at each search; its results stay those of a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians, exact_top_k, neg_kl_matrix, rewrite_block_norms, score_vectors_float32
from kl_retrievers.store import KLStore


def _data(n: int, dim: int, seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(32, dim))[rng.integers(0, 32, n)] + rng.normal(0, 0.5, (n, dim)) + 3.0
    return Gaussians(mean.astype(np.float32), np.exp(rng.normal(0, 0.5, (n, dim))).astype(np.float32), validate=False)


def _brute(queries: Gaussians, docs: Gaussians, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))[:, rows]
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows[top], np.take_along_axis(s, top, 1)


def test_filtered_exact_path_matches_brute_force_across_writes() -> None:
    docs = _data(3000, 24, seed=0)
    queries = _data(6, 24, seed=1)
    store = KLStore(index_type="ivf", nlist=32)  # a 50% filter (1,500 rows) is under exact_threshold
    meta = [{"even": i % 2 == 0} for i in range(len(docs))]
    store.add(gaussians=docs, ids=[str(i) for i in range(len(docs))], metadatas=meta)
    rows = np.arange(0, len(docs), 2)
    ids = [str(i) for i in range(len(docs))]

    def check() -> None:
        want_rows, want_scores = _brute(queries, docs, rows, 10)
        for _ in range(3):  # the second search on unchanged rows keeps the vectors, the third reads them
            for i in range(len(queries)):
                hits = store.search(queries[i : i + 1], k=10, filter={"even": True})
                assert [h.id for h in hits] == [ids[r] for r in want_rows[i]]
                assert np.allclose([h.score for h in hits], want_scores[i], rtol=1e-12, atol=1e-9)
        assert store._engine._kept is not None

    check()
    # a write changes the rows: the kept vectors are not read again
    new = Gaussians(np.asarray(queries.mean)[:1], np.asarray(queries.var)[:1])
    store.add(gaussians=new, ids=["2"], metadatas=[{"even": True}])  # replaces row 2 (a matching one)
    docs = Gaussians(
        np.concatenate([np.asarray(docs.mean), np.asarray(new.mean, np.float32)]),
        np.concatenate([np.asarray(docs.var), np.asarray(new.var, np.float32)]),
        validate=False,
    )
    rows = np.concatenate([rows[rows != 2], [len(docs) - 1]])
    ids.append("2")
    check()
    assert store.search(queries[:1], k=1, filter={"even": True})[0].id == "2"


@pytest.mark.parametrize("allowed", ["all", "spread", "dense"])
def test_exact_top_k_with_kept_vectors_equals_without(allowed: str) -> None:
    docs = _data(2000, 16, seed=2)
    queries = _data(5, 16, seed=3).astype(np.float64)
    rows = {"all": None, "spread": np.arange(0, 2000, 37), "dense": np.arange(500, 1500)}[allowed]
    centre = np.asarray(docs.mean, np.float64).mean(axis=0)
    vectors = score_vectors_float32(docs, "document", centre=centre)
    kept = (vectors, rewrite_block_norms(vectors))
    want = exact_top_k(queries, docs, 12, rows=rows, centre=centre)
    got = exact_top_k(queries, docs, 12, rows=rows, centre=centre, doc_vectors=kept)
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="doc_vectors must be"):
        exact_top_k(queries, docs, 12, rows=rows, doc_vectors=kept)  # no centre
    with pytest.raises(ValueError, match="doc_vectors must be"):
        exact_top_k(queries, docs, 12, rows=rows, centre=centre, doc_vectors=(vectors[:10], kept[1][:10]))
