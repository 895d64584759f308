"""The exact path's kept ``d~`` stay exact after a failed add and in a store loaded with ``mmap=True``.

An add or upsert extends the kept float32 ``d~`` by its new rows (``FaissEngine.rows_appended``). An add whose index
add raises is undone (the table and index as before, the kept vectors let go), and the exact searches after it, and
after later adds that extend the vectors built again, give a fresh store's results. A store loaded with
``mmap=True`` builds them in RAM, and its adds (which copy the mapped index) extend them, with a fresh store's results.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from conftest import clustered_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, _engines

pytest.importorskip("faiss")

DIM = 16
BUILT = {"index_type": "ivf", "nlist": 16}
TENTH = {"t": True}  # a tenth of the documents: searched exactly


#: Documents and queries of DIM dimensions: ``_data(n, seed=...)``.
_data = functools.partial(clustered_gaussians, dim=DIM)


def _same_as_fresh(store: KLStore, queries: Gaussians) -> None:
    ids = store.ids
    fresh = KLStore()
    fresh.add(gaussians=store.get_gaussians(ids), ids=ids, metadatas=[d.metadata for d in store.get_by_ids(ids)])
    got, want = store.search_batch(queries, k=10, filter=TENTH), fresh.search_batch(queries, k=10, filter=TENTH)
    for g, w in zip(got, want, strict=True):
        assert [h.id for h in g] == [h.id for h in w]
        assert np.allclose([h.score for h in g], [h.score for h in w], rtol=1e-10, atol=1e-9)


def _built_store(queries: Gaussians) -> KLStore:
    n = 3000
    store = KLStore(**BUILT)  # type: ignore[arg-type]
    store.add(
        gaussians=_data(n, seed=3), ids=[str(i) for i in range(n)], metadatas=[{"t": i % 10 == 0} for i in range(n)]
    )
    assert store.is_built
    for _ in range(12):  # the exact searches rewrite the table's rows: the last builds the kept vectors
        store.search_batch(queries, k=10, filter=TENTH)
    assert store._engine._kept is not None
    return store


def _kept_is_current(store: KLStore) -> bool:
    kept = store._engine._kept
    return kept is not None and kept.version == store._table.version and len(kept.vectors) == store._table.n_rows


def test_exact_searches_after_a_failed_add_give_a_fresh_stores_results(monkeypatch: pytest.MonkeyPatch) -> None:
    queries = _data(4, seed=2)
    store = _built_store(queries)
    real = _engines.ApproxEngine.add_rows

    def fails_after_adding(self: _engines.ApproxEngine, start: int, prepared: object) -> None:
        real(self, start, prepared)  # type: ignore[arg-type]
        raise RuntimeError("index add failed")

    monkeypatch.setattr(_engines.ApproxEngine, "add_rows", fails_after_adding)
    with pytest.raises(RuntimeError, match="index add failed"):  # an upsert and three new documents
        store.add(gaussians=_data(4, seed=9), ids=["5", "x1", "x2", "x3"], metadatas=[TENTH] * 4)
    monkeypatch.undo()
    assert "x1" not in store and store.get_by_ids(["5"])[0].metadata == {"t": False}  # undone
    assert store._engine._kept is None
    _same_as_fresh(store, queries)
    store.add(gaussians=_data(4, seed=10), ids=["y0", "y1", "7", "y3"], metadatas=[TENTH] * 4)
    for _ in range(12):  # built again
        store.search_batch(queries, k=10, filter=TENTH)
    store.add(gaussians=_data(4, seed=11), ids=["z0", "z1", "z2", "z3"], metadatas=[TENTH] * 4)
    assert _kept_is_current(store)  # extended
    _same_as_fresh(store, queries)


def test_adds_to_a_store_loaded_with_mmap_extend_the_kept_vectors_exactly(tmp_path: Path) -> None:
    queries = _data(4, seed=2)
    _built_store(queries).save(tmp_path / "s")
    store = KLStore.load(tmp_path / "s", mmap=True)
    for _ in range(12):
        store.search_batch(queries, k=10, filter=TENTH)
    assert _kept_is_current(store)  # built in RAM over the mapped rows
    store.add(gaussians=_data(4, seed=12), ids=["m0", "m1", "m2", "3"], metadatas=[TENTH] * 4)  # one upsert
    assert _kept_is_current(store)
    _same_as_fresh(store, queries)
    store.add(gaussians=_data(3, seed=13), ids=["m3", "m4", "m5"], metadatas=[TENTH] * 3)
    assert _kept_is_current(store)
    _same_as_fresh(store, queries)
