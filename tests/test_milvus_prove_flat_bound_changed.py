"""A ``prove_flat`` search proves nothing from rows reduced under another ``M`` than its query vectors'.

An L2 flat search reads each float32 distance under the ``M`` its query vectors were made with. A writer that
raises ``M`` stores it first, then rewrites the rows: a search whose state was read before the raise and whose
candidate search ran after some rows were rewritten read those rows too low (``(M'^2 - M^2) |q~| / (2 M)``), left
them out of its pool, and its witness "proved" a top ``k`` without them. The store now reads the state again after
each candidate search and sends the queries to the float64 fallback where the publication changed, or where a rewrite
was pending when the search began (a lowered ``M`` whose rewrite has not ended). Also here: the number of matching
rows is read from the first search only where every query came back short, and a rebuild's kept rows that do not
match the live rows are an internal error, not a silently short index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import proving_milvus_store
from kl_retrievers.gaussian import Gaussians, kl_document_vectors
from kl_retrievers.milvus import MilvusKLStore
from kl_retrievers.store import KLStore, _engines

N, DIM, K = 400, 8, 5


def _docs(n: int = N) -> tuple[Gaussians, list[str]]:
    rng = np.random.default_rng(0)
    docs = Gaussians(rng.normal(size=(n, DIM)), np.exp(rng.normal(0, 0.3, size=(n, DIM))))
    return docs, [f"d{i:03d}" for i in range(n)]


def _rewrite(writer: MilvusKLStore, docs: Gaussians, ids: list[str], some: list[str]) -> None:
    """Rows ``some`` written again under ``writer``'s (just stored) ``M``, as a row rewrite does page by page."""
    sel = [ids.index(i) for i in some]
    raw = np.asarray(kl_document_vectors(Gaussians(np.asarray(docs.mean)[sel], np.asarray(docs.var)[sel])))
    writer._upsert(writer._rows(writer._centred(raw)), some, [None] * len(some), [{}] * len(some))


def _top(store: MilvusKLStore, q: Gaussians) -> list[tuple[str, float]]:
    return [(r.id, r.score) for r in store.search(q, k=K)]


def test_a_bound_raised_during_the_search_sends_it_to_the_float64_scan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs, ids = _docs()
    reader = proving_milvus_store(tmp_path)
    reader.add(gaussians=docs, ids=ids)
    q = Gaussians(np.asarray(docs.mean)[7:8] + 0.1, np.asarray(docs.var)[7:8])
    truth = _top(reader, q)
    assert len(truth) == K
    writer = MilvusKLStore(client=reader.client, collection_name="c")
    real = reader.client.search
    raced: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        # between the reader's state read (its query vectors) and its candidate search, another writer stores a
        # tenfold M (version + 1) and has rewritten some rows (the reader's true top k) when the search runs
        if not raced:
            raced.append(1)
            bound = writer._read_state().norm_bound
            assert bound is not None and writer._publish(10 * bound, writer._state.offset, rewrite=True)
            _rewrite(writer, docs, ids, [i for i, _ in truth])
        return real(*args, **kwargs)

    reader.client.search = racing  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
            got = _top(reader, q)
    finally:
        del reader.client.search
    assert raced
    # HEAD: the rewritten rows read ~50 M |q~| too low and fell out of a pool their witness "proved"
    assert [i for i, _ in got] == [i for i, _ in truth]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in truth], rtol=1e-5)
    assert "another writer stored M=" in caplog.text and "(version 2) since the search read it" in caplog.text
    reader.close()


def test_a_pending_lowered_bound_proves_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs, ids = _docs()
    reader = proving_milvus_store(tmp_path, norm_headroom=4.0)
    reader.add(gaussians=docs, ids=ids)
    q = Gaussians(np.asarray(docs.mean)[11:12] - 0.1, np.asarray(docs.var)[11:12])
    truth = _top(reader, q)
    # a repair lowering M (4x headroom down to 1.5x) has stored it and rewritten every row but the reader's top k:
    # those are still under the larger M, read too low under the stored one
    writer = MilvusKLStore(client=reader.client, collection_name="c")
    writer._read_state()
    assert writer._state.norm_bound is not None
    assert writer._publish(writer._state.norm_bound * 1.5 / 4.0, writer._state.offset, rewrite=True)
    top = {i for i, _ in truth}
    _rewrite(writer, docs, ids, [i for i in ids if i not in top])
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
        got = _top(reader, q)
    assert [i for i, _ in got] == [i for i, _ in truth]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in truth], rtol=1e-5)
    assert "a rewrite of every row under a new M is pending" in caplog.text
    writer.repair()  # the rewrite done: proofs again, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
        again = _top(reader, q)
    assert [i for i, _ in again] == [i for i, _ in truth]
    assert "float32 candidates cannot prove" not in caplog.text
    reader.close()


def test_the_first_search_gives_the_count_only_where_every_query_came_back_short(tmp_path: Path) -> None:
    """One query's first search short (fewer rows than asked) and another's full: the lengths disagree, so they say
    nothing of the number of matching rows. HEAD took the longest (the limit) as that number, so the full query's
    second pool, of that many rows, counted as every matching row and was kept unproven."""
    rng = np.random.default_rng(11)
    dim = 16
    # 1,000 documents spread over [-50, 50]^16 and 1,000 in a tight cluster at p: centred, the cluster's scores differ
    # by less than their float32 rounding, so a pool of the float32 top 11 misses some of the true top 10
    far = rng.uniform(-50, 50, size=(1000, dim))
    p = rng.uniform(-50, 50, size=dim)
    mean = np.concatenate([far, p + 0.01 * rng.normal(size=(1000, dim))])
    var = 1e-4 * np.exp(rng.normal(0, 0.3, size=(len(mean), dim)))
    docs, ids = Gaussians(mean, var), [f"d{i:04d}" for i in range(len(mean))]
    queries = Gaussians(np.stack([p, far[3]]), np.full((2, dim), 1e-4))
    store = MilvusKLStore(
        uri=str(tmp_path / "kl.db"),
        collection_name="c",
        index_type="flat",
        metric="L2",
        prove_flat=True,
        rescore_pool=10,
        rescore_factor=1,
    )
    store.add(gaussians=docs, ids=ids)
    truth = [[(r.id, r.score) for r in row] for row in store.search_batch(queries, k=10)]
    real = store.client.search
    cut: list[int] = []

    def second_short(*args: Any, **kwargs: Any) -> Any:
        hits = real(*args, **kwargs)
        if not cut and len(hits) == 2:  # the first search: the second query's answer cut short
            cut.append(len(hits[1]))
            hits = [hits[0], hits[1][:4]]
        return hits

    store.client.search = second_short  # type: ignore[method-assign]
    try:
        got = [[(r.id, r.score) for r in row] for row in store.search_batch(queries, k=10)]
    finally:
        del store.client.search
    assert cut == [11]  # a full first search (pool of 10 and its witness) was cut
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in truth]
    store.close()


def test_kept_rows_that_do_not_match_the_live_rows_are_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    docs, ids = _docs(1500)
    store = KLStore(index_type="hnsw", hnsw_m=8)
    store.add(gaussians=docs, ids=ids)
    norm_pass = _engines.ApproxEngine._norm_pass

    def one_short(self: Any, live: np.ndarray, keep: bool) -> Any:
        top, row, kept = norm_pass(self, live, keep)
        assert kept is not None  # 1,500 rows: the sample is every live row
        return top, row, (kept[0][:-1], kept[1][:-1])

    monkeypatch.setattr(_engines.ApproxEngine, "_norm_pass", one_short)
    with pytest.raises(RuntimeError, match=r"internal error: .* kept 1499 reduced vectors and 1499 norms for 1500"):
        store.rebuild()


@pytest.mark.parametrize(("n", "reads"), [(15, 1), (N, 2)])
def test_the_state_is_read_again_only_where_the_bound_proves_something(tmp_path: Path, n: int, reads: int) -> None:
    """A first search that returns every matching row (15, within the pool of 20) re-scores them all and uses no
    bound: no second read of the state; a pool of 20 out of 400 rows: one more ``describe_collection`` after it."""
    docs, ids = _docs(n)
    store = proving_milvus_store(tmp_path)
    store.add(gaussians=docs, ids=ids)
    real = store.client.describe_collection
    calls: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    store.client.describe_collection = counting  # type: ignore[method-assign]
    try:
        hits = store.search(Gaussians(np.asarray(docs.mean)[:1], np.asarray(docs.var)[:1]), k=K)
    finally:
        del store.client.describe_collection
    assert hits[0].id == ids[0]
    assert calls == ["c"] * reads  # the search's own state read (_sync), then the proof's
    store.close()
