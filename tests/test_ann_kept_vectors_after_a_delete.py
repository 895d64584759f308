"""A delete that only tombstones rows keeps the exact path's kept float32 ``d~`` (``FaissEngine._kept_vectors``).

The rows keep their numbers and Gaussians, and the exact path leaves tombstones out (its mask), so the vectors kept
before the delete stay exact: the store's engine re-keys them to the table's new version at the delete
(``FaissEngine.rows_tombstoned``). They used to stay in memory, unread, until the next exact search found them older
than the rows and let them go, and the searches after it rewrote their rows again until they added up to the table.
Results after the delete equal those of a fresh store built over the live documents alone.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import clustered_gaussians, count_kept_builds
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

pytest.importorskip("faiss")

N = 3000


#: Documents and queries of 16 dimensions: ``_data(n, seed=...)``.
_data = functools.partial(clustered_gaussians, dim=16)


def _store(docs: Gaussians, keep: np.ndarray) -> KLStore:
    """An IVF store of the ``keep`` rows of ``docs``, a tenth of them tagged (a filter under exact_threshold)."""
    store = KLStore(index_type="ivf", nlist=16)
    rows = keep.tolist()
    store.add(
        gaussians=Gaussians(np.asarray(docs.mean)[keep], np.asarray(docs.var)[keep], validate=False),
        ids=[str(i) for i in rows],
        metadatas=[{"t": i % 10 == 0} for i in rows],
    )
    assert store.is_built
    return store


@pytest.mark.parametrize("deleted", [["0", "10", "20", "1", "7"], ["no-such-id"]])
def test_a_tombstone_only_delete_keeps_the_kept_vectors_and_the_results_of_a_fresh_store(
    deleted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, queries = _data(N, seed=4), _data(3, seed=5)
    store = _store(docs, np.arange(N))
    for _ in range(12):  # the exact searches rewrite the table's rows: the next builds the kept vectors
        store.search_batch(queries, k=5, filter={"t": True})
    kept = store._engine._kept
    assert kept is not None
    store.delete(deleted)  # a missing id: the table's version changes all the same
    assert store._table.n_rows == N  # tombstones only, no compaction
    after = store._engine._kept
    assert after is not None and after[2] is kept[2] and after[0] == store._table.version
    live = np.array([i for i in range(N) if str(i) not in deleted])
    fresh = _store(docs, live)  # its first searches rewrite their rows: no kept vectors
    builds = count_kept_builds(monkeypatch)
    for _ in range(2):
        got = store.search_batch(queries, k=5, filter={"t": True})
        want = fresh.search_batch(queries, k=5, filter={"t": True})
        assert [[h.id for h in q] for q in got] == [[h.id for h in q] for q in want]
        assert np.allclose([[h.score for h in q] for q in got], [[h.score for h in q] for q in want], rtol=1e-12)
        assert not any(h.id in deleted for q in got for h in q)
    assert builds == [] and store._engine._kept is after  # read, not built again
    assert fresh._engine._kept is None


def test_kept_vectors_older_than_the_rows_go_at_the_delete() -> None:
    docs, queries = _data(N, seed=6), _data(1, seed=7)
    store = _store(docs, np.arange(N))
    for _ in range(12):
        store.search_batch(queries, k=5, filter={"t": True})
    assert store._engine._kept is not None
    store._table.version += 1  # the rows changed without a write step of the engine
    store.delete(["3"])
    assert store._engine._kept is None  # not kept in memory until the next exact search
