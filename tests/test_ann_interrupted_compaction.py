"""A compaction interrupted while it adds the rows back to an approximate index (``remove_rows``: the index reset,
then only some rows re-added) leaves the table compacted and the index partial: searches are then exact, and the
next add or save rebuilds the index from the table instead of searching or saving the partial one."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.store import KLStore
from kl_retrievers.store._engines import ApproxEngine

pytest.importorskip("faiss")

N, K = 600, 8
SETTINGS: list[dict[str, Any]] = [{"index_type": "hnsw"}, {"index_type": "ivf", "nlist": 8, "nprobe": 8}]


def _gaussians(seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(N, K)), np.exp(rng.normal(0.0, 0.3, (N, K))))


def _interrupted_store(monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> tuple[KLStore, Gaussians]:
    """A built store whose delete of half its documents compacted, interrupted after 100 rows were re-added."""
    g = _gaussians()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = KLStore(**settings)
    store.add(gaussians=g, ids=[f"d{i}" for i in range(N)])
    engine = store._engine
    assert isinstance(engine, ApproxEngine) and engine.index is not None and engine.index.ntotal == N
    real = ApproxEngine._add_all

    def interrupted(self: ApproxEngine, index: Any, live: np.ndarray | None = None) -> float:
        real(self, index, np.arange(100))
        raise KeyboardInterrupt("simulated")

    with monkeypatch.context() as patch:
        patch.setattr(ApproxEngine, "_add_all", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.delete([f"d{i}" for i in range(0, N, 2)])  # past compact_threshold: compacts
    assert len(store) == N // 2 and store._table.n_rows == N // 2  # the table compacted
    assert engine.index is not None and engine.index.ntotal == 100  # the index not
    return store, g


def _brute_force(store: KLStore, g: Gaussians, queries: Gaussians, k: int) -> tuple[list[list[str]], np.ndarray]:
    live = np.arange(1, N, 2)  # the odd documents were kept
    scores = np.asarray(neg_kl_matrix(queries, Gaussians(g.mean[live], g.var[live])))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[f"d{live[j]}" for j in row] for row in order], np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s["index_type"])
def test_searches_after_an_interrupted_compaction_are_exact(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    store, g = _interrupted_store(monkeypatch, settings)
    queries = _gaussians(seed=1)[:40]
    want_ids, want_scores = _brute_force(store, g, queries, 5)
    got = store.search_batch(queries, k=5)
    assert [[r.id for r in row] for row in got] == want_ids
    np.testing.assert_allclose([[r.score for r in row] for row in got], want_scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s["index_type"])
def test_the_next_add_rebuilds_the_partial_index(monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> None:
    store, g = _interrupted_store(monkeypatch, settings)
    store.add(gaussians=g[:1], ids=["new"])
    engine = store._engine
    assert isinstance(engine, ApproxEngine) and engine.index is not None
    assert engine.index.ntotal == store._table.n_rows == N // 2 + 1
    assert not engine._partial
    assert store.search(g[:1], k=1)[0].id == "new"  # its own Gaussian is a document's best match (-KL = 0)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s["index_type"])
def test_a_save_rebuilds_the_partial_index(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], tmp_path: Path
) -> None:
    store, g = _interrupted_store(monkeypatch, settings)
    loaded = KLStore.load(store.save(tmp_path / "store"))  # not refused: the index is rebuilt first
    engine = loaded._engine
    assert isinstance(engine, ApproxEngine) and engine.index is not None and engine.index.ntotal == N // 2
    queries = _gaussians(seed=2)[:40]
    want_ids, _ = _brute_force(loaded, g, queries, 1)
    got = [[r.id for r in row] for row in loaded.search_batch(queries, k=1)]
    assert sum(a == b for a, b in zip(got, want_ids, strict=True)) >= 36  # an index over every row (IVF: every list)
