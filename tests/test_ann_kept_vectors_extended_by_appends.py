"""An add or upsert extends the exact path's kept float32 ``d~`` (``FaissEngine.rows_appended``) instead of letting
them go, so an add-then-search loop no longer rewrites the whole table at each cycle.

The kept ``d~`` used to be freed by every append: the searches after it rewrote their rows again until they added
up to the table, and then built the float32 rewrite of every row anew (``FaissEngine._build_kept``). Now the new rows
get their ``d~`` around the kept centre, in buffers grown by doubling; rows far out from it (block norms past
``_KEPT_NORM_GROWTH`` times those at the build) let them go, and the next exact search builds them again. Results
equal those of a fresh store over the same documents.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import clustered_gaussians, count_kept_builds
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

pytest.importorskip("faiss")

DIM = 16


#: Documents and queries of DIM dimensions: ``_data(n, seed=..., shift=...)``.
_data = functools.partial(clustered_gaussians, dim=DIM)


#: nlist=1024: the index waits for 8,192 documents, so every (unfiltered) search of the stores below it is exact.
EXACT_IVF = {"index_type": "ivf", "nlist": 1024}


def _kept_built(monkeypatch: pytest.MonkeyPatch, n: int, seed: int, queries: Gaussians) -> tuple[KLStore, list[int]]:
    """An :data:`EXACT_IVF` store of ``n`` documents searched twice with ``queries`` (the first search rewrites the
    table, the second builds the kept vectors), and the list of the table sizes its kept vectors were built for."""
    store = KLStore(**EXACT_IVF)  # type: ignore[arg-type]
    store.add(gaussians=_data(n, seed=seed), ids=[f"d{i}" for i in range(n)], metadatas=[{}] * n)
    builds = count_kept_builds(monkeypatch)
    for _ in range(2):
        store.search_batch(queries, k=10)
    return store, builds


def _fresh(store: KLStore, **settings: object) -> KLStore:
    """A new store of ``store``'s live documents (in their order), added at once."""
    ids = store.ids
    g = store.get_gaussians(ids)
    fresh = KLStore(**settings)  # type: ignore[arg-type]
    fresh.add(gaussians=g, ids=ids, metadatas=[d.metadata for d in store.get_by_ids(ids)])
    return fresh


def _same_results(store: KLStore, fresh: KLStore, queries: Gaussians, **search: object) -> None:
    got = store.search_batch(queries, k=10, **search)  # type: ignore[arg-type]
    want = fresh.search_batch(queries, k=10, **search)  # type: ignore[arg-type]
    for g, w in zip(got, want, strict=True):
        assert [h.id for h in g] == [h.id for h in w]
        assert np.allclose([h.score for h in g], [h.score for h in w], rtol=1e-10, atol=1e-9)


def test_an_add_then_search_loop_extends_the_kept_vectors_instead_of_rebuilding_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queries = _data(4, seed=2)
    store, builds = _kept_built(monkeypatch, 600, seed=1, queries=queries)
    assert builds == [600]
    rooms = set()
    for cycle in range(40):
        store.add(gaussians=_data(3, seed=100 + cycle), ids=[f"n{cycle}-{j}" for j in range(3)], metadatas=[{}] * 3)
        store.search_batch(queries, k=10)
        kept = store._engine._kept
        assert kept is not None and kept.version == store._table.version and len(kept.vectors) == len(store)
        rooms.add(id(kept.room[0]))
    assert builds == [600]  # no rebuild of the whole table's d~ in the loop
    assert len(rooms) <= 2  # 600 -> 1,200 rows of room: grown by doubling, not copied at every add
    _same_results(store, _fresh(store, **EXACT_IVF), queries)
    _same_results(store, _fresh(store), queries)  # a flat store's exact results too


def test_extended_kept_vectors_give_a_fresh_stores_results_after_upserts_and_deletes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a built IVF index (tombstones kept until compact_threshold), searched exactly through a tenth filter
    settings = {"index_type": "ivf", "nlist": 16}
    n = 3000
    store = KLStore(**settings)  # type: ignore[arg-type]
    store.add(
        gaussians=_data(n, seed=3), ids=[str(i) for i in range(n)], metadatas=[{"t": i % 10 == 0} for i in range(n)]
    )
    assert store.is_built
    queries = _data(3, seed=4)
    for _ in range(12):  # the exact searches rewrite the table's rows: the last builds the kept vectors
        store.search_batch(queries, k=10, filter={"t": True})
    builds = count_kept_builds(monkeypatch)
    rng = np.random.default_rng(5)
    for step in range(6):
        new = _data(4, seed=200 + step)
        ids = [str(int(i)) for i in rng.choice(n, 2, replace=False)] + [f"a{step}-0", f"a{step}-1"]  # 2 upserts
        store.add(gaussians=new, ids=ids, metadatas=[{"t": True}] * 4)
        store.delete([str(int(rng.integers(n))), f"a{step}-0"])
        store.search_batch(queries, k=10, filter={"t": True})
        kept = store._engine._kept
        assert kept is not None and kept.version == store._table.version
    assert store._table.dead()  # tombstones kept: the kept rows keep their numbers
    assert builds == []
    _same_results(store, _fresh(store, **settings), queries, filter={"t": True})
    _same_results(store, _fresh(store), queries, filter={"t": True})


def test_rows_far_out_from_the_kept_centre_let_the_kept_vectors_go_and_the_next_search_builds_them_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queries = _data(3, seed=7)
    store, builds = _kept_built(monkeypatch, 500, seed=6, queries=queries)
    assert builds == [500]
    store.add(gaussians=_data(2, seed=8, shift=300.0), ids=["far0", "far1"], metadatas=[{}] * 2)
    assert store._engine._kept is None  # d~ norms far past those at the build
    store.search_batch(queries, k=10)
    assert builds == [500, 502]  # built again at once, around the mean of every row
    _same_results(store, _fresh(store, **EXACT_IVF), queries)
    _same_results(store, _fresh(store, **EXACT_IVF), _data(2, seed=9, shift=300.0))
