"""The exact path of an approximate store reads kept float32 ``d~`` (``FaissEngine._kept_vectors``) instead of
rewriting the allowed rows at each search; its results stay those of a float64 brute force."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import clustered_gaussians, count_kept_builds
from kl_retrievers.gaussian import Gaussians, exact_top_k, neg_kl_matrix, rewrite_block_norms, score_vectors_float32
from kl_retrievers.store import KLStore, _engines


def _brute(queries: Gaussians, docs: Gaussians, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))[:, rows]
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows[top], np.take_along_axis(s, top, 1)


def test_filtered_exact_path_matches_brute_force_across_writes() -> None:
    docs = clustered_gaussians(3000, 24, seed=0)
    queries = clustered_gaussians(6, 24, seed=1)
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
    docs = clustered_gaussians(2000, 16, seed=2)
    queries = clustered_gaussians(5, 16, seed=3).astype(np.float64)
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
    with pytest.raises(ValueError, match="doc_vectors must be a pair .vectors, norms., got ndarray"):
        exact_top_k(queries, docs, 12, rows=rows, centre=centre, doc_vectors=vectors)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="doc_vectors' vectors must be float32.*got float64"):
        exact_top_k(queries, docs, 12, rows=rows, centre=centre, doc_vectors=(vectors.astype(np.float64), kept[1]))


def _tenth_store(n: int = 3000) -> tuple[KLStore, Gaussians]:
    """An IVF store of ``n`` documents, a tenth of them tagged (a filter under exact_threshold), and a query."""
    docs = clustered_gaussians(n, 16, seed=4)
    store = KLStore(index_type="ivf", nlist=16)
    store.add(gaussians=docs, ids=[str(i) for i in range(n)], metadatas=[{"t": i % 10 == 0} for i in range(n)])
    assert store.is_built
    return store, clustered_gaussians(1, 16, seed=5)


def test_searches_between_writes_build_the_kept_vectors_only_once_they_rewrote_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queries = _tenth_store()
    one = clustered_gaussians(1, 16, seed=6)
    builds = count_kept_builds(monkeypatch)
    for cycle in range(4):  # write, search, search: each search rewrites its 300 rows, far from the 3,000
        store.add(gaussians=one, ids=[f"w{cycle}"], metadatas=[{"t": False}])
        for _ in range(2):
            store.search(queries, k=5, filter={"t": True})
    assert builds == []
    # unchanged rows: built once the searches' rewritten rows add up to the table's (11 x 300 >= 3,004 rows):
    # by the 12th search since the last write
    for _ in range(9):
        store.search(queries, k=5, filter={"t": True})
    assert builds == [] and store._engine._kept is None
    store.search(queries, k=5, filter={"t": True})
    assert len(builds) == 1 and store._engine._kept is not None
    for _ in range(3):
        store.search(queries, k=5, filter={"t": True})
    assert len(builds) == 1


def _build_kept(store: KLStore, queries: Gaussians) -> None:
    for _ in range(12):
        store.search(queries, k=5, filter={"t": True})
    assert store._engine._kept is not None


def test_every_write_step_lets_the_kept_vectors_go_at_once() -> None:
    store, queries = _tenth_store()
    _build_kept(store, queries)
    store.add(gaussians=clustered_gaussians(1, 16, seed=7), ids=["new"], metadatas=[{"t": True}])  # add_rows
    # extended by the new row instead (tests/test_ann_kept_vectors_extended_by_appends.py)
    assert store._engine._kept is not None and store._engine._kept.version == store._table.version
    _build_kept(store, queries)
    store.delete(["2"])  # tombstones only: kept (tests/test_ann_kept_vectors_after_a_delete.py)
    assert store._engine._kept is not None
    store.compact()  # the same rows dropped from them (tests/test_ann_kept_vectors_compacted_with_the_rows.py)
    assert store._engine._kept is not None and store._engine._kept.version == store._table.version
    _build_kept(store, queries)
    store.rebuild()
    assert store._engine._kept is None


def test_kept_vectors_older_than_the_rows_go_even_where_new_ones_would_be_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queries = _tenth_store()
    _build_kept(store, queries)
    store._table.version += 1  # the rows changed without a write step of the engine
    monkeypatch.setattr(_engines, "_KEPT_VECTORS_MAX", 0)
    store.search(queries, k=5, filter={"t": True})
    assert store._engine._kept is None


def test_a_search_that_finds_another_building_them_rewrites_its_rows_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queries = _tenth_store()
    builds = count_kept_builds(monkeypatch)
    lock = threading.Lock()
    monkeypatch.setattr(store._engine, "_kept_lock", lock, raising=False)
    want = [h.id for h in store.search(queries, k=5, filter={"t": True})]
    with lock:  # another search is building them
        for _ in range(15):
            assert [h.id for h in store.search(queries, k=5, filter={"t": True})] == want
        assert builds == [] and store._engine._kept is None
    store.search(queries, k=5, filter={"t": True})
    assert len(builds) == 1 and store._engine._kept is not None


def test_a_failed_build_is_not_tried_again_until_the_rows_change(monkeypatch: pytest.MonkeyPatch) -> None:
    store, queries = _tenth_store()
    tries: list[int] = []

    def overflowing(*args: object, **kwargs: object) -> np.ndarray:
        tries.append(1)
        raise ValueError("d~ overflows float32")

    monkeypatch.setattr(_engines, "score_vectors_float32", overflowing)
    want = [h.id for h in store.search(queries, k=5, filter={"t": True})]
    for _ in range(15):
        assert [h.id for h in store.search(queries, k=5, filter={"t": True})] == want
    assert len(tries) == 1 and store._engine._kept is None
    store._table.version += 1  # the rows changed: tried again once the searches rewrote the table
    for _ in range(15):
        store.search(queries, k=5, filter={"t": True})
    assert len(tries) == 2
