"""An add that fails after its rows reached the index (undone: the table and the index as before) counts no
written rows towards the stale-index warning (tests/test_ann_stale_index_counts_writes.py): the counter moves only
once the add succeeded."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore
from kl_retrievers.store._engines import STALE_GROWTH, ApproxEngine
from kl_retrievers.store._hnsw_copies import HnswCopies

pytest.importorskip("faiss")


def test_a_failed_add_is_not_counted_as_written(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    n = 300
    batch = Gaussians(
        rng.normal(size=(n, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (n, 8))).astype(np.float32)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = KLStore(index_type="hnsw", compression="pq", pq_m=2, pq_nbits=4)  # k-means: the warning applies
    store.add(gaussians=batch, ids=[f"a{i}" for i in range(n)])
    engine = store._engine
    assert isinstance(engine, ApproxEngine) and engine.index is not None and engine._written_rows == 0

    def fail(self: HnswCopies, *args: Any) -> None:
        raise MemoryError("simulated")

    with monkeypatch.context() as patch:
        patch.setattr(HnswCopies, "track_added", fail)  # the add's last step, after its rows reached the index
        for i in range(STALE_GROWTH):  # 4 x 100 failed writes: past the factor had they counted
            with pytest.raises(MemoryError):
                store.add(gaussians=batch[:100], ids=[f"x{i}-{j}" for j in range(100)])
    assert len(store) == n and engine.index.ntotal == n  # undone (drop_entries_from)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert engine._written_rows == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.add(gaussians=batch[:1], ids=["b0"])
    assert not [w for w in caught if "k-means was trained" in str(w.message)]
    assert engine._written_rows == 1
