"""An add compacts first, then extends the exact path's kept ``d~`` (``FaissEngine.rows_appended``).

The extension ran before ``_maybe_compact``: an upsert into an approximate store whose index is not built yet (it
compacts at once) extended the kept vectors, perhaps copying them into a doubled buffer, and the compaction threw
them away at once. An interrupt while they were copied also skipped the compaction and the write count. Now the
extension follows them (after dropping the compacted rows from the kept vectors too:
tests/test_ann_kept_vectors_compacted_with_the_rows.py); the stale check follows it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import clustered_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, _engines

pytest.importorskip("faiss")

DIM = 16
#: nlist=1024: the index waits for 8,192 documents, so every search is exact and a tombstone is compacted at once.
UNBUILT = {"index_type": "ivf", "nlist": 1024}


#: Documents and queries of DIM dimensions: ``_data(n, seed=...)``.
_data = functools.partial(clustered_gaussians, dim=DIM)


def _store_with_kept_vectors() -> tuple[KLStore, Gaussians]:
    store = KLStore(**UNBUILT)  # type: ignore[arg-type]
    store.add(gaussians=_data(600, seed=1), ids=[f"d{i}" for i in range(600)])
    queries = _data(4, seed=2)
    for _ in range(2):  # the first rewrites the table, the second builds the kept vectors
        store.search_batch(queries, k=10)
    assert store._engine._kept is not None and not store.is_built
    return store, queries


def _count_extensions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = _engines.FaissEngine._extend_kept

    def counting(self: _engines.FaissEngine, kept: object, start: int) -> object:
        calls.append(start)
        return real(self, kept, start)  # type: ignore[arg-type]

    monkeypatch.setattr(_engines.FaissEngine, "_extend_kept", counting)
    return calls


def test_an_upsert_into_an_unbuilt_index_extends_the_kept_vectors_once_after_its_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queries = _store_with_kept_vectors()
    extensions = _count_extensions(monkeypatch)
    store.add(gaussians=_data(3, seed=5), ids=["d1", "d2", "new"])  # two upserts: tombstones, compacted at once
    assert not store._table.dead()
    assert extensions == [598]  # once, from the first new row in the compacted table (600 - 2 replaced)
    kept = store._engine._kept
    assert kept is not None and kept.version == store._table.version and len(kept.vectors) == len(store)
    store.add(gaussians=_data(2, seed=6), ids=["n0", "n1"])  # a plain add extends them too
    ids = store.ids
    fresh = KLStore()
    fresh.add(gaussians=store.get_gaussians(ids), ids=ids)
    for got, want in zip(store.search_batch(queries, k=10), fresh.search_batch(queries, k=10), strict=True):
        assert [h.id for h in got] == [h.id for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want], rtol=1e-10, atol=1e-9)


def test_an_interrupt_while_the_kept_vectors_are_extended_leaves_the_add_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queries = _store_with_kept_vectors()
    writes = store.write_count

    def interrupted(self: _engines.FaissEngine, kept: object, start: int) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(_engines.FaissEngine, "_extend_kept", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.add(gaussians=_data(2, seed=7), ids=["n0", "n1"])
    assert store.write_count == writes + 1  # the add happened: counted (a filter cache keyed on it sees it)
    assert len(store) == 602 and store._engine._kept is None
    monkeypatch.undo()
    assert all(len(hits) == 10 for hits in store.search_batch(queries, k=10))
