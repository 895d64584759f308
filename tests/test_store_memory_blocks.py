"""A store's memory at scale, checked on small stores: rows are turned into vectors block by block.

Each test measures the numpy memory one step allocates (``tracemalloc``), or the size of the blocks it
works on, with the block constants made small: an IVF build's training sample is float32 built in blocks,
a bulk add holds no float64 copy of the batch and no concatenation of its vectors, the re-scoring
threads follow the CPU affinity and FAISS's thread count, and the first write to a memory-mapped
store copies its index without numpy buffers.
"""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from kl_retrievers.gaussian import (
    Gaussians,
    centre_document_vectors,
    kl_document_vectors,
    means_centre,
    worth_centring,
)
from kl_retrievers.store import KLStore, _engines, _table
from kl_retrievers.store._table import DocumentTable


def _gaussians(n: int, k: int, seed: int = 0, shift: float = 0.0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = (rng.standard_normal((n, k)) + shift).astype(np.float32)
    var = np.exp(0.3 * rng.standard_normal((n, k))).astype(np.float32)
    return Gaussians(mean, var, validate=False)


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the most numpy / Python memory it held at once beyond what was held before (bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _ivf_store(n: int = 3000, k: int = 16, shift: float = 0.0) -> KLStore:
    store = KLStore(index_type="ivf", nlist=16, nprobe=16)
    store.add(gaussians=_gaussians(n, k, shift=shift), ids=[f"d{i}" for i in range(n)])
    assert store._engine.index is not None
    return store


# ----------------------------------------------------------------- finding 1: IVF / PQ training sample
def test_rebuild_builds_the_training_sample_in_float32_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _ivf_store()
    engine, table = store._engine, store._table
    monkeypatch.setattr(_engines, "_BUILD_BLOCK", 128)
    monkeypatch.setattr(_engines, "_BLOCK_ELEMENTS", 128 * 33, raising=False)  # 128 rows of d~ (k = 16)
    rows_asked: list[int] = []
    doc_vectors = DocumentTable.doc_vectors

    def spy(self: DocumentTable, rows: np.ndarray | slice) -> np.ndarray:
        out = doc_vectors(self, rows)
        rows_asked.append(out.shape[0])
        return out

    trained: list[np.ndarray] = []
    train = faiss.IndexIVFFlat.train

    def spy_train(self: Any, x: np.ndarray) -> None:
        trained.append(x)
        train(self, x)

    monkeypatch.setattr(DocumentTable, "doc_vectors", spy)
    monkeypatch.setattr(faiss.IndexIVFFlat, "train", spy_train)
    _, peak = _peak(store.rebuild)
    assert rows_asked and max(rows_asked) <= 128  # never the whole sample (3,000 rows) at once
    (x,) = trained
    assert x.dtype == np.float32 and x.shape == (len(store), engine.width)
    # the float32 sample (3000 x 34 x 4 = 408 KB) is what the build holds; a float64 d~ of the sample
    # is 792 KB, and it was held with a centred and a reduced float64 copy of itself
    assert peak < 2 * x.nbytes, (peak, x.nbytes)
    assert table.n_rows == len(store)


@pytest.mark.parametrize("shift", [0.0, 20.0])  # means about centred (no centre), and a common offset (centred)
def test_rebuild_trains_on_what_the_whole_float64_sample_gives(monkeypatch: pytest.MonkeyPatch, shift: float) -> None:
    store = _ivf_store(shift=shift)
    engine, table = store._engine, store._table
    assert isinstance(engine, _engines.ApproxEngine)
    monkeypatch.setattr(_engines, "_BLOCK_ELEMENTS", 100 * 33, raising=False)
    trained: list[np.ndarray] = []
    train = faiss.IndexIVFFlat.train

    def spy_train(self: Any, x: np.ndarray) -> None:
        trained.append(x.copy())
        train(self, x)

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", spy_train)
    store.rebuild()
    # the sample as the build drew it, and the centre, offset and training vectors its float64 d~ gives
    n = len(store)
    rows = np.sort(np.random.default_rng(store.seed).choice(n, size=n, replace=False))
    sample = table.doc_vectors(rows)
    centre = means_centre(table.mean)
    use = worth_centring(sample, centre)
    assert (engine.centre is not None) == use == (shift > 0)
    assert engine.offset == pytest.approx(float(centre_document_vectors(sample, centre if use else None)[:, 0].mean()))
    bound = engine.norm_bound
    assert bound is not None
    np.testing.assert_allclose(trained[0], engine._reduced(sample), rtol=1e-6, atol=1e-6 * bound)
    # and it finds what the exact (flat) store finds (nprobe = nlist: every list is scanned)
    q = _gaussians(5, 16, seed=9, shift=shift)
    flat = KLStore()
    flat.add(gaussians=table.gaussians, ids=list(table.ids))
    assert [[r.id for r in rs] for rs in store.search_batch(q, k=5)] == [
        [r.id for r in rs] for rs in flat.search_batch(q, k=5)
    ]


@pytest.mark.parametrize("rows", [slice(None), slice(5, 700), np.arange(0, 2000, 3)])
def test_doc_vectors_are_kl_document_vectors_with_no_other_temporaries(rows: np.ndarray | slice) -> None:
    n, k = 2000, 64
    g = _gaussians(n, k, seed=3)
    table = DocumentTable(k)
    table.append(np.asarray(g.mean) * 3, np.asarray(g.var) ** 4, [f"d{i}" for i in range(n)], [None] * n, [{}] * n)
    dvec, peak = _peak(lambda: table.doc_vectors(rows))
    want = kl_document_vectors(
        Gaussians(table.mean[rows].astype(np.float64), table.var[rows].astype(np.float64), validate=False)
    )
    assert dvec.dtype == np.float64 and dvec.shape == want.shape
    np.testing.assert_array_equal(dvec, want)  # the same values, not only close
    # d~ itself, and float64 copies of the rows' means and variances (each half of it): no more
    assert peak < 2.5 * dvec.nbytes, (peak, dvec.nbytes)


def test_the_build_log_names_rebuild_for_a_k_means_index(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store._engines"):
        _ivf_store()
    (built,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("built ivf index")]
    assert "trained on 3000" in built and "rebuild()" in built


# ------------------------------------------------------------------------ finding 2: a bulk add's peak
def test_append_computes_sumlogvar_without_a_float64_copy_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    m, k = 4000, 64
    g = _gaussians(m, k)
    mean, var = np.asarray(g.mean), np.asarray(g.var)
    monkeypatch.setattr(_table, "_LOG_BLOCK", 256, raising=False)
    table = DocumentTable(k)
    _, peak = _peak(lambda: table.append(mean, var, [f"d{i}" for i in range(m)], [None] * m, [{}] * m))
    held = table.mean.nbytes + table.var.nbytes + table.sumlogvar.nbytes + table.alive.nbytes
    # the table's own rows, ids and map; a float64 copy of the variances alone is mean.nbytes * 2
    assert peak < held + mean.nbytes, (peak, held)
    np.testing.assert_array_equal(table.sumlogvar, np.log(var.astype(np.float64)).sum(axis=1))


def test_flat_add_never_concatenates_the_batch_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    k, n = 32, 4000
    store = KLStore()
    store.add(gaussians=_gaussians(10, k, seed=1), ids=[f"a{i}" for i in range(10)])
    monkeypatch.setattr(_engines, "_BLOCK_ELEMENTS", 128 * (2 * k + 1), raising=False)  # 128 rows
    g = _gaussians(n, k, seed=2)
    mean, var = np.asarray(g.mean), np.asarray(g.var)
    prepared, peak = _peak(lambda: store._engine.prepare(mean, var))
    vectors = n * (2 * k + 1) * 4  # the batch's float32 d~ (kept: under _FLAT_KEEP_ELEMENTS)
    assert peak < 1.5 * vectors, (peak, vectors)  # held once, not once more as a concatenation
    blocks = prepared[2]
    assert sum(len(b) for b in blocks) == n and all(b.dtype == np.float32 and len(b) <= 128 for b in blocks)
    store.add(gaussians=g, ids=[f"d{i}" for i in range(n)])
    hits = store.search_batch(g[[0, 1234, n - 1]], k=1)
    assert [h[0].id for h in hits] == ["d0", "d1234", f"d{n - 1}"]


# ---------------------------------------------------------------------- finding 3: re-scoring threads
def _threads_used(monkeypatch: pytest.MonkeyPatch) -> int:
    """The threads :func:`_engines._query_blocks` re-scores a large batch on (1: none started)."""
    workers = [1]

    class Pool(ThreadPoolExecutor):
        def __init__(self, max_workers: int) -> None:
            workers.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(_engines, "ThreadPoolExecutor", Pool)
    _engines._query_blocks(64, 1 << 20, lambda s, e: None)  # large enough work to be threaded
    return workers[-1]


def test_rescore_threads_follow_cpu_affinity_and_faiss_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    omp = faiss.omp_get_max_threads()
    monkeypatch.setattr(_engines.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(_engines.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert _threads_used(monkeypatch) == 1  # one CPU allowed (taskset, a container's CPU set)
    monkeypatch.setattr(_engines.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        faiss.omp_set_num_threads(1)  # OMP_NUM_THREADS=1, or the FAISS setting
        assert _threads_used(monkeypatch) == 1
        faiss.omp_set_num_threads(2)
        assert _threads_used(monkeypatch) == 2
    finally:
        faiss.omp_set_num_threads(omp)


# ------------------------------------------------------------ finding 4: the first write after mmap
@pytest.mark.parametrize("kw", [{}, {"index_type": "ivf", "nlist": 16, "nprobe": 16}])
def test_first_write_after_mmap_copies_the_index_without_numpy_buffers(tmp_path: Path, kw: dict[str, Any]) -> None:
    n, k = 3000, 16
    g = _gaussians(n, k)
    store = KLStore(**kw)
    store.add(gaussians=g, ids=[f"d{i}" for i in range(n)])
    store.save(tmp_path / "s")
    size = faiss.serialize_index(store._engine.index).nbytes
    mapped = KLStore.load(tmp_path / "s", mmap=True)
    assert mapped._engine.viewed
    _, peak = _peak(mapped._engine.own)
    assert not mapped._engine.viewed
    assert peak < size / 4, (peak, size)  # the serialized index stays in FAISS (not copied into numpy twice)
    extra = _gaussians(3, k, seed=5)
    for s in (store, mapped):
        s.add(gaussians=extra, ids=["x0", "x1", "x2"])  # the copy is owned: FAISS may change it
    q = _gaussians(4, k, seed=6)
    assert [[r.id for r in rs] for rs in mapped.search_batch(q, k=5)] == [
        [r.id for r in rs] for rs in store.search_batch(q, k=5)
    ]
