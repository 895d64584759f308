"""An HNSW compaction builds the graph again over every live row, as long as a build's graph: it logs an INFO line
when it starts (with the row counts), as a build does ("building the HNSW graph ..."); it logged nothing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

pytest.importorskip("faiss")

ENGINE_LOGGER = "kl_retrievers.store._engines"


def _store(index_type: str) -> KLStore:
    rng = np.random.default_rng(0)
    store = KLStore(index_type=index_type, nlist=4)  # type: ignore[arg-type]
    store.add(gaussians=Gaussians(rng.normal(size=(64, 8)), np.ones((64, 8))), ids=[f"d{i}" for i in range(64)])
    assert store.is_built
    return store


def test_an_hnsw_compaction_logs_its_start_with_the_row_counts(caplog: pytest.LogCaptureFixture) -> None:
    store = _store("hnsw")
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        store.delete([f"d{i}" for i in range(40)])  # past compact_threshold: compacted at once
    assert store.compaction_count == 1
    lines = [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER and r.levelno == logging.INFO]
    starts = [line for line in lines if line.startswith("compacting the HNSW index")]
    assert len(starts) == 1, lines
    assert "(hnsw_m=32, ef_construction=80) over the 24 live documents, without the 40 deleted" in starts[0]


def test_an_ivf_compaction_re_adds_quickly_and_logs_no_start(caplog: pytest.LogCaptureFixture) -> None:
    store = _store("ivf")
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        store.delete([f"d{i}" for i in range(40)])
    assert store.compaction_count == 1
    assert not [r for r in caplog.records if r.getMessage().startswith("compacting")]
