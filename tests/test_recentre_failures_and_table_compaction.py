"""A failed optional re-centre or compaction leaves a flat store whole; format refusals say what they know.

1. A compaction (automatic in ``delete``) may re-centre a flat index (``FlatEngine._maybe_recentre``): an
   optimisation only, so an error there (``MemoryError`` building the new index) must neither fail the
   delete that already happened nor change the centre; ``KeyboardInterrupt`` still propagates. A
   re-centred index is built from the compacted rows, so the dead rows are not removed from the old one first.
2. ``DocumentTable.compact`` builds its new rows before holding any: a failure midway leaves the table
   as it was (its arrays used to be compacted, its ids not: the next search raised ``IndexError``).
3. ``too_new_message`` says a writer version it cannot parse cannot be compared, and names a
   ``library_version`` that is not a string instead of saying none is recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore
from kl_retrievers.store import _engines
from kl_retrievers.store._format import too_new_message

N, K, NQ, TOP = 3000, 16, 5, 5


def _corpus() -> tuple[Gaussians, Gaussians]:
    rng = np.random.default_rng(0)
    mean = (100.0 + 0.1 * rng.normal(size=(N, K))).astype(np.float32)
    var = np.exp(0.3 * rng.normal(size=(N, K))).astype(np.float32)
    queries = Gaussians(mean[:NQ] + 0.05 * rng.normal(size=(NQ, K)), var[:NQ])
    return Gaussians(mean, var), queries


def _store(compact_threshold: float = 0.3) -> tuple[KLStore, Gaussians, Gaussians]:
    """A flat store centred on an outlier at 0 (added first), then ``N`` documents near 100."""
    docs, queries = _corpus()
    store = KLStore(compact_threshold=compact_threshold)
    store.add(gaussians=Gaussians(np.zeros((1, K), np.float32), np.ones((1, K), np.float32)), ids=["out"])
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(N)])
    return store, docs, queries


def _assert_exact(store: KLStore, queries: Gaussians, docs: Gaussians, rows: np.ndarray) -> None:
    """The store's top ``TOP`` equal float64 brute force over ``docs[rows]`` (ids ``d{row}``)."""
    qm, qv = np.asarray(queries.mean, np.float64), np.asarray(queries.var, np.float64)
    dm, dv = np.asarray(docs.mean, np.float64)[rows], np.asarray(docs.var, np.float64)[rows]
    kl = 0.5 * (
        np.log(dv).sum(1)[None, :]
        - np.log(qv).sum(1)[:, None]
        + ((qv[:, None, :] + (qm[:, None, :] - dm[None, :, :]) ** 2) / dv[None, :, :]).sum(2)
        - K
    )
    best = np.argsort(kl, axis=1, kind="stable")[:, :TOP]
    for i, hits in enumerate(store.search_batch(queries, k=TOP)):
        assert [h.id for h in hits] == [f"d{rows[j]}" for j in best[i]]
        np.testing.assert_allclose([h.score for h in hits], -kl[i, best[i]], rtol=1e-9, atol=1e-9)


def _flat(store: KLStore) -> _engines.FlatEngine:
    engine = store._engine
    assert isinstance(engine, _engines.FlatEngine)
    return engine


def _fail(exc: BaseException) -> Any:
    def recentre(self: _engines.FlatEngine, centre: np.ndarray, *, compact: bool) -> None:
        raise exc

    return recentre


def test_a_failed_recentre_does_not_fail_the_delete_and_keeps_the_centre(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, docs, queries = _store()
    centre = _flat(store).centre
    assert centre is not None and not centre.any()  # the outlier's mean
    monkeypatch.setattr(_engines.FlatEngine, "_recentre", _fail(MemoryError("simulated")))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._engines"):
        report = store.delete(["out"] + [f"d{i}" for i in range(2000)])  # past the threshold: compacted
    assert len(report.deleted) == 2001
    assert any("not re-centred" in r.getMessage() and "MemoryError" in r.getMessage() for r in caplog.records)
    engine = _flat(store)
    assert engine.centre is not None and not engine.centre.any()  # the old centre kept
    assert len(store) == store._table.n_rows == engine.index.ntotal == N - 2000
    _assert_exact(store, queries, docs, np.arange(2000, N))


def test_a_keyboard_interrupt_in_the_recentre_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _ = _store()
    monkeypatch.setattr(_engines.FlatEngine, "_recentre", _fail(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.delete(["out"] + [f"d{i}" for i in range(2000)])


def test_a_compaction_that_recentres_does_not_remove_rows_from_the_old_index_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, docs, queries = _store()
    owned: list[int] = []
    own = _engines.FlatEngine.own

    def counting(self: _engines.FlatEngine) -> None:
        owned.append(1)
        own(self)

    monkeypatch.setattr(_engines.FlatEngine, "own", counting)
    store.delete(["out"] + [f"d{i}" for i in range(2000)])
    engine = _flat(store)
    assert engine.centre is not None
    np.testing.assert_allclose(engine.centre, np.asarray(docs.mean[2000:], np.float64).mean(axis=0), rtol=1e-9)
    assert owned == []  # the old index was replaced, not copied and pruned
    assert engine.index.ntotal == len(store) == N - 2000
    _assert_exact(store, queries, docs, np.arange(2000, N))


class _FailingList(list):  # type: ignore[type-arg]
    """A list whose items cannot be read (a ``MemoryError`` midway through a compaction)."""

    def __getitem__(self, item: Any) -> Any:
        raise MemoryError("simulated")


@pytest.mark.parametrize("how", ["compact", "rebuild"])
def test_a_failed_table_compaction_leaves_the_store_whole(how: str) -> None:
    store, docs, queries = _store(compact_threshold=0.5)
    store.delete(["out"] + [f"d{i}" for i in range(10)])  # tombstones, below the threshold
    table = _flat(store).table
    before = (table.n_rows, len(table.ids), table.dead(), _flat(store).index.ntotal)
    metas = table.metas
    table.metas = _FailingList(metas)
    with pytest.raises(MemoryError):
        getattr(store, how)()
    table.metas = list(metas)
    assert (table.n_rows, len(table.ids), table.dead(), _flat(store).index.ntotal) == before
    assert table.mean.shape[0] == table.var.shape[0] == table.alive.size == len(table.texts) == before[0]
    _assert_exact(store, queries, docs, np.arange(10, N))
    store.compact()  # and it compacts once it can
    assert table.dead() == 0 and table.n_rows == N - 10
    _assert_exact(store, queries, docs, np.arange(10, N))


def test_an_unparseable_writer_version_is_said_not_to_compare() -> None:
    message = too_new_message("s", "banana", "store format_version", 9, 3)
    assert "'banana'" in message and "cannot be compared" in message
    assert "not a later version" not in message and "newer" not in message


def test_a_writer_version_that_is_not_a_string_is_named() -> None:
    message = too_new_message("s", 3, "store format_version", 9, 3)
    assert "does not record" not in message
    assert "library_version 3 is not a version string" in message
    assert "does not record" in too_new_message("s", None, "store format_version", 9, 3)
