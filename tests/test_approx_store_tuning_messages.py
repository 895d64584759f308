"""What a user tuning an approximate ``KLStore`` is told.

* An index trained by k-means (IVF lists, PQ codebooks) is not retrained as documents are added: a store grown
  past ``STALE_GROWTH`` times the documents of its last build (or load) warns once, at the caller's line,
  naming ``rebuild()``; a rebuild arms the warning again. It was an INFO line only, which a user with
  warnings-only logging never saw (a probe grew a store 7x past its training size without a word).
* ``nprobe`` above ``nlist`` acts as ``nlist`` (FAISS clamps it): assigning one warns at the user's line (giving
  one to the constructor too: tests/test_ann_nprobe_above_nlist_at_construction.py).
* The build log names ``M`` the norm bound (a user read ``hnsw_m`` in ``(M=122.9)``), and long steps (PQ
  training, the HNSW graph) log a line when they start, not only when they end.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore
from kl_retrievers.store._engines import STALE_GROWTH

pytest.importorskip("faiss")

ENGINE_LOGGER = "kl_retrievers.store._engines"


def _gaussians(n: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        rng.normal(size=(n, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (n, 8))).astype(np.float32)
    )


def _stale(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if "index's k-means was trained " in str(w.message)]


def _grow(store: KLStore, batch: Gaussians, times: int, tag: str) -> list[warnings.WarningMessage]:
    """Add copies of ``batch`` (norms under the index's bound: no rebuild) ``times`` times; the warnings given."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for copy in range(times):
            store.add(gaussians=batch, ids=[f"{tag}{copy}-{i}" for i in range(len(batch))])  # the caller's line
    return caught


def test_an_ivf_store_grown_past_its_training_warns_once_at_the_callers_line() -> None:
    batch = _gaussians(32)
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=batch, ids=[f"a{i}" for i in range(32)])  # 8 x nlist: built over these 32
    assert store.is_built
    caught = _grow(store, batch, STALE_GROWTH - 1, "b")  # 4 x 32 documents: not past the factor
    assert not _stale(caught) and store.rebuild_count == 0
    caught = _grow(store, batch, 3, "c")  # 160, 192, 224: past it from the first of these adds, warned once
    stale = _stale(caught)
    assert len(stale) == 1 and store.rebuild_count == 0, [str(w.message) for w in caught]
    message = str(stale[0].message)
    assert "held 32 documents, and 128 have been added or upserted since: 5.0 times as many in all" in message
    assert "(it now holds 160)" in message and "the lists learnt from the first ones" in message
    assert "Call store.rebuild() to retrain it on a sample of all of them" in message and "check nprobe" in message
    assert stale[0].category is UserWarning and stale[0].filename == __file__
    # a rebuild retrains over every document and arms the warning again, from the new size
    store.rebuild()
    assert not _stale(_grow(store, batch, 4 * 7 - 7, "d"))  # 224 -> 896 = 4 x 224: not past it
    assert len(_stale(_grow(store, batch, 2, "e"))) == 1


def test_pq_codebooks_warn_too_and_an_index_training_nothing_does_not(caplog: pytest.LogCaptureFixture) -> None:
    batch = _gaussians(64, seed=3)
    pq = KLStore(index_type="hnsw", compression="pq", pq_m=4, pq_nbits=4)
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        pq.add(gaussians=batch, ids=[f"a{i}" for i in range(64)])
    assert pq.is_built
    stale = _stale(_grow(pq, batch, STALE_GROWTH, "b"))
    assert len(stale) == 1 and "product-quantizer codebooks" in str(stale[0].message)
    assert "nprobe" not in str(stale[0].message)  # no lists on HNSW
    for kind in ("hnsw", "flat"):
        store = KLStore(index_type=kind)
        store.add(gaussians=batch, ids=[f"a{i}" for i in range(64)])
        assert not _stale(_grow(store, batch, 2 * STALE_GROWTH, "b")), kind


def test_a_store_saved_before_index_growth_counts_from_its_size_at_load(tmp_path: Path) -> None:
    batch = _gaussians(32)
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=batch, ids=[f"a{i}" for i in range(32)])
    _grow(store, batch, 2, "b")  # 96 documents, built over 32
    store.save(tmp_path / "s")
    cfg = tmp_path / "s" / "config.json"  # as saved before the counts were (tests/test_ann_stale_counts_saved.py)
    config = json.loads(cfg.read_text())
    del config["index_growth"]
    cfg.write_text(json.dumps(config))
    loaded = KLStore.load(tmp_path / "s")
    assert not _stale(_grow(loaded, batch, 9, "c"))  # 384 = 4 x 96
    (stale,) = _stale(_grow(loaded, batch, 1, "d"))
    assert "trained before the store was loaded with 96 documents, and 320 have been added" in str(stale.message)
    assert "(it now holds 416)" in str(stale.message)


def test_nprobe_above_nlist_warns_at_the_assignment() -> None:
    store = KLStore(index_type="ivf", nlist=16)  # the default nprobe (32) above nlist: no warning at construction
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.nprobe = 5000
        store.nprobe = 16  # every list, said as such: fine
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert str(caught[0].message).startswith("nprobe=5000 exceeds this store's nlist=16: ")
    assert "acts as nprobe=16" in str(caught[0].message) and caught[0].filename == __file__
    assert store.nprobe == 16


def test_build_logs_name_the_norm_bound_and_announce_long_steps(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        KLStore(index_type="hnsw", compression="pq", pq_m=4, pq_nbits=4).add(
            gaussians=_gaussians(64), ids=[f"a{i}" for i in range(64)]
        )
        KLStore(index_type="ivf", nlist=4).add(gaussians=_gaussians(32), ids=[f"a{i}" for i in range(32)])
    lines = [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER and r.levelno == logging.INFO]
    starts = [i for i, line in enumerate(lines) if line.startswith(("training the hnsw", "building the HNSW graph"))]
    built = [i for i, line in enumerate(lines) if line.startswith("built ")]
    assert len(starts) == 2 and len(built) == 2 and max(starts) < built[0], lines
    assert "product quantizer (pq_m=4, pq_nbits=4) on 64 documents" in lines[starts[0]]
    assert "(hnsw_m=32, ef_construction=80) over 64 documents" in lines[starts[1]]
    assert all("(norm bound M=" in lines[i] and "(M=" not in lines[i] for i in built), lines
    assert "a warning past 4 x 32" in lines[built[1]]
    assert not any(line.startswith("training the ivf") for line in lines)  # IVF k-means without PQ is quick
