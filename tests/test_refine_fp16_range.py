"""``refine="fp16"`` where the reduced vectors' norm bound M exceeds float16's largest value (65504).

The refine copies of the reduced vectors (coordinates up to M) overflowed to inf: the store ranked
its pool on them and saved a folder that ``KLStore.load`` refused. Such a store now keeps float32
refine copies (one warning), saves and loads; a folder saved with the inf copies is refused with
an error that says what happened and how to rebuild.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, _engines

FP16_MAX = 65504.0
SMALL_VAR_SETTINGS = [
    {"index_type": "ivf", "nlist": 8, "nprobe": 2, "compression": "sq8", "refine": "fp16"},
    {"index_type": "hnsw", "compression": "sq8", "refine": "fp16"},
    {"index_type": "ivf", "nlist": 4, "nprobe": 2, "compression": "pq", "pq_m": 5, "pq_nbits": 4, "refine": "fp16"},
]


def _small_variance_gaussians(n: int, dim: int = 4, seed: int = 0) -> Gaussians:
    """Valid Gaussians with variances about 1e-4: the reduced vectors' norm bound M is about 1e5."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 1.0, (n, dim))
    var = np.full((n, dim), 1e-4) * np.exp(rng.normal(0.0, 0.3, (n, dim)))
    return Gaussians(mean, var)


def _refine_copies(store: KLStore) -> np.ndarray:
    """Every row's refine copy, decoded from the index's refine stage."""
    faiss = _engines._faiss()
    ref = faiss.downcast_index(faiss.downcast_index(store._index).refine_index)
    return np.asarray(ref.reconstruct_n(0, ref.ntotal))


def _top_ids(store: KLStore, queries: Gaussians, k: int = 5) -> list[list[str]]:
    return [[h.id for h in row] for row in store.search_batch(queries, k=k)]


@pytest.mark.parametrize("settings", SMALL_VAR_SETTINGS, ids=["ivf-sq8", "hnsw-sq8", "ivf-pq4"])
def test_fp16_refine_above_float16_range_saves_loads_and_holds_no_inf(
    settings: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = _small_variance_gaussians(300)
    store = KLStore(rescore_pool=20, rescore_factor=2, **settings)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._engines"):
        store.add(gaussians=docs, ids=[f"d{i}" for i in range(300)])
    assert store.is_built and store.norm_bound is not None and store.norm_bound > FP16_MAX
    assert np.isfinite(_refine_copies(store)).all()
    warned = [r.getMessage() for r in caplog.records if "float16" in r.getMessage()]
    assert len(warned) == 1 and "65504" in warned[0] and "float32" in warned[0]
    queries = docs[:4]
    before = _top_ids(store, queries)
    assert all(len(row) == 5 for row in before)
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s")
    assert loaded.refine == "fp16" and loaded.norm_bound == pytest.approx(store.norm_bound)
    assert np.isfinite(_refine_copies(loaded)).all()
    assert _top_ids(loaded, queries) == before
    loaded.save(tmp_path / "again")  # and the loaded store saves a folder that loads again
    assert _top_ids(KLStore.load(tmp_path / "again", mmap=True), queries) == before


def test_fp16_refine_ranks_like_no_refine_above_float16_range() -> None:
    """The inf copies re-ranked the pool blindly: recall@10 fell below the unrefined index's (0.586 < 0.650)."""
    rng = np.random.default_rng(0)
    n, dim, nq = 3000, 16, 50
    mean = rng.normal(0.0, 1.0, (n, dim))
    var = np.full((n, dim), 1e-4) * np.exp(rng.normal(0.0, 0.3, (n, dim)))
    qi = rng.integers(0, n, nq)
    queries = Gaussians(mean[qi] + 0.003 * rng.normal(size=(nq, dim)), var[qi])
    docs, ids = Gaussians(mean, var), [str(i) for i in range(n)]
    exact = KLStore()
    exact.add(gaussians=docs, ids=ids)
    truth = _top_ids(exact, queries, k=10)
    recalls = {}
    for refine in (None, "fp16"):
        store = KLStore(
            index_type="ivf",
            nlist=16,
            nprobe=4,
            compression="pq",
            pq_m=4,
            refine=refine,
            rescore_pool=40,
            rescore_factor=2,
        )
        store.add(gaussians=docs, ids=ids)
        got = _top_ids(store, queries, k=10)
        recalls[refine] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)])
    assert store.norm_bound is not None and store.norm_bound > FP16_MAX
    assert recalls["fp16"] >= recalls[None] - 1e-9, recalls


def test_fp16_refine_keeps_float16_copies_within_range(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = Gaussians(rng.normal(size=(300, 4)), np.exp(rng.normal(0.0, 0.3, (300, 4))))
    store = KLStore(index_type="ivf", nlist=8, compression="sq8", refine="fp16")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store._engines"):
        store.add(gaussians=docs)
    assert store.norm_bound is not None and store.norm_bound < FP16_MAX
    assert _engines._index_structure(store._index)["refine"] == "fp16"
    assert not [r for r in caplog.records if "float16" in r.getMessage()]
    store.save(tmp_path / "s")
    assert _engines._index_structure(KLStore.load(tmp_path / "s")._index)["refine"] == "fp16"


def test_a_later_add_raising_m_past_float16_range_switches_to_float32_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    docs = Gaussians(rng.normal(size=(300, 4)), np.exp(rng.normal(0.0, 0.3, (300, 4))))
    store = KLStore(index_type="hnsw", compression="sq8", refine="fp16", rescore_pool=20, rescore_factor=2)
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(300)])
    assert store.norm_bound is not None and store.norm_bound < FP16_MAX
    assert _engines._index_structure(store._index)["refine"] == "fp16"
    tiny = Gaussians(np.full((1, 4), 0.5), np.full((1, 4), 1e-5))
    store.add(gaussians=tiny, ids=["tiny"])  # its norm exceeds M: a rebuild, with M past the float16 range
    assert store.norm_bound > FP16_MAX
    assert _engines._index_structure(store._index)["refine"] == "fp32"
    assert np.isfinite(_refine_copies(store)).all()
    before = _top_ids(store, docs[:3])
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s")
    assert _top_ids(loaded, docs[:3]) == before
    assert np.isfinite(_refine_copies(loaded)).all()
