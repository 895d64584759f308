"""A compaction drops the same rows from the exact path's kept float32 ``d~`` (``FaissEngine.rows_compacted``).

The kept ``d~`` (``FaissEngine._kept_vectors``) are per row, around a centre that a compaction leaves valid, but a
compaction let them go: the exact searches after it rewrote their rows again until they added up to the table, and
then built every row's ``d~`` anew (``FaissEngine._build_kept``). An approximate store whose index is not built yet
compacts at every upsert or delete, so an upsert-then-search loop rebuilt them at each cycle. Now the compaction
moves the live rows' ``d~`` up in their buffers (and an add that compacted extends them after), under the same
table-version guards as the extension at an append, and results equal a fresh store's.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import pytest

from conftest import clustered_gaussians, count_kept_builds
from kl_retrievers.gaussian import Gaussians, rewrite_block_norms, score_vectors_float32
from kl_retrievers.store import KLStore, _engines

pytest.importorskip("faiss")

DIM = 16
#: Approximate stores whose index is not built yet (8 x 1,024 and 4 x 2^8 documents needed): every search is exact,
#: and every tombstone is compacted at once.
UNBUILT: dict[str, dict[str, Any]] = {
    "ivf": {"index_type": "ivf", "nlist": 1024},
    "hnsw": {"index_type": "hnsw", "compression": "pq"},
}


#: Documents and queries of DIM dimensions: ``_data(n, seed=..., shift=...)``.
_data = functools.partial(clustered_gaussians, dim=DIM)


def _store(settings: dict[str, Any], n: int = 600) -> KLStore:
    store = KLStore(**settings)
    store.add(
        gaussians=_data(n, seed=1), ids=[f"d{i}" for i in range(n)], metadatas=[{"t": i % 4 == 0} for i in range(n)]
    )
    return store


def _assert_kept_are_the_tables(store: KLStore) -> None:
    """The kept ``d~`` are those of the table's rows now, around their centre, with their block norms."""
    kept, table = store._engine._kept, store._table
    assert kept is not None and kept.version == table.version and len(kept.vectors) == table.n_rows
    want = score_vectors_float32(Gaussians(table.mean, table.var, validate=False), "document", centre=kept.centre)
    assert np.array_equal(kept.vectors, want)
    assert np.array_equal(kept.norms, rewrite_block_norms(want))


def _same_results(store: KLStore, queries: Gaussians, **search: Any) -> None:
    """``store``'s results are those of a fresh flat store of its live documents (in their order)."""
    ids = store.ids
    fresh = KLStore()
    fresh.add(gaussians=store.get_gaussians(ids), ids=ids, metadatas=[d.metadata for d in store.get_by_ids(ids)])
    got_all, want_all = store.search_batch(queries, k=10, **search), fresh.search_batch(queries, k=10, **search)
    for got, want in zip(got_all, want_all, strict=True):
        assert [h.id for h in got] == [h.id for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want], rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(UNBUILT))
def test_an_upsert_then_search_loop_builds_the_kept_vectors_once(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(UNBUILT[kind])
    queries = _data(4, seed=2)
    builds = count_kept_builds(monkeypatch)
    for _ in range(2):  # the first rewrites the table, the second builds the kept vectors
        store.search_batch(queries, k=10)
    assert builds == [600]
    rng = np.random.default_rng(3)
    for cycle in range(20):  # two upserts and an add: the two replaced rows are compacted at once
        ids = [f"d{int(i)}" for i in rng.choice(600, 2, replace=False)] + [f"n{cycle}"]
        store.add(gaussians=_data(3, seed=100 + cycle), ids=ids, metadatas=[{"t": True}] * 3)
        assert not store._table.dead() and not store.is_built
        assert store._engine._kept is not None  # read by the next search, not rewritten row by row
        for _ in range(2):
            store.search_batch(queries, k=10)
    assert builds == [600]  # were 21: every upsert's compaction let them go, the second search built them again
    assert store.compaction_count == 20
    _assert_kept_are_the_tables(store)
    _same_results(store, queries)


def _mix(store: KLStore, rng: np.random.Generator, queries: Gaussians, step: int, **search: Any) -> None:
    """One round of adds, upserts, deletes (one matching nothing) and a compaction, each followed by a search."""
    live = store.ids
    upserted = [live[int(i)] for i in rng.choice(len(live), 3, replace=False)]
    store.add(
        gaussians=_data(5, seed=300 + step),
        ids=[*upserted, f"a{step}-0", f"a{step}-1"],
        metadatas=[{"t": j % 2 == 0} for j in range(5)],
    )
    store.search_batch(queries, k=10, **search)
    store.delete([live[int(i)] for i in rng.choice(len(live), 4, replace=False)] + [f"a{step}-1", "no-such-id"])
    store.search_batch(queries, k=10, **search)
    store.add(gaussians=_data(2, seed=400 + step), ids=[f"b{step}-0", f"b{step}-1"], metadatas=[{"t": True}] * 2)
    if step % 2:
        store.compact()
    store.search_batch(queries, k=10, **search)


@pytest.mark.parametrize(
    ("settings", "search"),
    [
        ({}, {}),  # flat: no kept vectors, the reference's own mixes
        (UNBUILT["ivf"], {}),
        (UNBUILT["hnsw"], {}),
        ({"index_type": "ivf", "nlist": 16}, {"filter": {"t": True}}),  # built: its filtered searches are exact
    ],
    ids=["flat", "ivf-unbuilt", "hnsw-unbuilt", "ivf-built-filtered"],
)
@pytest.mark.parametrize("block", [None, 7], ids=["one-block", "blocks-of-7"])
def test_mixes_of_adds_upserts_deletes_and_compactions_give_a_fresh_stores_results(
    settings: dict[str, Any], search: dict[str, Any], block: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block is not None:  # compacting the kept rows in place, 7 rows at a time
        monkeypatch.setattr(_engines, "_block_rows", lambda width: block)
    store = _store(settings, n=3000 if search else 600)
    queries = _data(3, seed=5)
    for _ in range(12):  # enough exact searches to build the kept vectors (a quarter of the rows each, filtered)
        store.search_batch(queries, k=10, **search)
    approximate = settings.get("index_type", "flat") != "flat"
    assert (store._engine._kept is not None) == approximate
    builds = count_kept_builds(monkeypatch)
    rng = np.random.default_rng(6)
    compactions = store.compaction_count
    for step in range(4):
        _mix(store, rng, queries, step, **search)
        _same_results(store, queries, **search)
    assert store.compaction_count >= compactions + 2
    assert builds == []  # kept across every write
    if approximate:
        _assert_kept_are_the_tables(store)


def test_a_compaction_after_the_rows_changed_otherwise_lets_the_kept_vectors_go() -> None:
    store = _store(UNBUILT["ivf"])
    queries = _data(2, seed=7)
    for _ in range(2):
        store.search_batch(queries, k=10)
    engine, table = store._engine, store._table
    assert engine._kept is not None
    table.version += 1  # the rows changed without a write step of the engine
    with store._lock.write():
        table.tombstone(["d3"])
        before = table.version
        engine.rows_compacted(before, table.compact())  # kept for an older version: left to the next search
    assert engine._kept is not None and engine._kept.version != table.version
    store.search_batch(queries, k=10)
    assert engine._kept is None  # let go by the search, as before
    for _ in range(2):
        store.search_batch(queries, k=10)
    _assert_kept_are_the_tables(store)


def test_compactions_during_concurrent_searches_never_give_a_search_kept_vectors_of_another_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(UNBUILT["ivf"], n=400)
    queries = _data(2, seed=8)
    real = _engines.exact_top_k
    checked: list[int] = []
    errors: list[BaseException] = []

    def checking(qg: Gaussians, docs: Gaussians, kk: int, **kwargs: Any) -> Any:
        kept = kwargs.get("doc_vectors")
        if kept is not None:  # under the search's read lock: the kept rows must be the table's now
            table = store._table
            vectors, norms = kept
            assert len(vectors) == len(norms) == table.n_rows
            rows = np.unique(np.linspace(0, table.n_rows - 1, 9).astype(np.int64))
            g = Gaussians(table.mean[rows], table.var[rows], validate=False)
            want = score_vectors_float32(g, "document", centre=kwargs["centre"])
            assert np.array_equal(vectors[rows], want)
            checked.append(1)
        return real(qg, docs, kk, **kwargs)

    monkeypatch.setattr(_engines, "exact_top_k", checking)
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                for hits in store.search_batch(queries, k=5):
                    assert len(hits) == 5
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            stop.set()

    readers = [threading.Thread(target=search) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        rng = np.random.default_rng(9)
        for step in range(40):
            if stop.is_set():
                break
            live = store.ids
            store.add(gaussians=_data(2, seed=500 + step), ids=[live[int(rng.integers(len(live)))], f"w{step}"])
            if step % 3 == 0:
                store.delete([live[int(rng.integers(len(live)))]])
            if step % 5 == 0:
                store.compact()
    finally:
        stop.set()
        for t in readers:
            t.join()
    if errors:
        raise errors[0]
    assert checked  # the searches read kept vectors
    for _ in range(2):  # built by now unless a write came before the readers' first two searches
        store.search_batch(queries, k=5)
    _assert_kept_are_the_tables(store)
    _same_results(store, queries)


def test_an_interrupt_while_the_kept_vectors_are_compacted_leaves_the_delete_done_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(UNBUILT["ivf"])
    queries = _data(3, seed=10)
    for _ in range(2):
        store.search_batch(queries, k=10)
    assert store._engine._kept is not None
    writes = store.write_count

    def interrupted(kept: object, dead: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(_engines.FaissEngine, "_compact_kept", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        store.delete(["d5", "d9"])  # compacted at once, the index first
    assert store.write_count == writes + 1  # the delete happened: counted (a filter cache keyed on it sees it)
    assert len(store) == 598 and not store._table.dead() and store._engine._kept is None
    monkeypatch.undo()
    _same_results(store, queries)
    for _ in range(2):
        store.search_batch(queries, k=10)
    _assert_kept_are_the_tables(store)
