"""An add whose compaction is interrupted is still counted as a write (``write_count``), as a delete is."""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, _engines


def _gaussians(rng: np.random.Generator, n: int) -> Gaussians:
    mean = rng.normal(size=(n, 8)).astype(np.float32)
    return Gaussians(mean, np.exp(rng.normal(0, 0.3, (n, 8))).astype(np.float32))


def test_an_upsert_interrupted_in_its_compaction_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw", compact_threshold=0.0)
    store.add(gaussians=_gaussians(rng, 50), ids=[f"d{i}" for i in range(50)])
    before = store.write_count

    def interrupted(self: object, dead: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_engines.ApproxEngine, "remove_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):  # an upsert: its tombstone passes the threshold 0, so it compacts
        store.add(gaussians=_gaussians(rng, 2), ids=["d1", "new"])
    assert "new" in store  # the add itself is done
    assert store.write_count == before + 1  # and counted, so caches keyed on the count see it
