"""An HNSW / IVF build whose sample is every live row builds each row's float64 ``d~`` twice, not three or four times.

A rebuild read ``d~`` (:meth:`DocumentTable.doc_vectors`) in up to four passes over the rows: the sample's first
coordinates and norms (offset, centring), every live row's norm (``M``), the training sample's reduced vectors, and
every live row's reduced vectors for the index. Below 65,536 live rows (16,384 for HNSW without compression) the
sample is every live row, and the training and the index took the same vectors: 16.7 s of a 94 s build of 50,000
Gaussians (``k = 384``, IVF) went to ``d~``. The norm pass now keeps those rows' float32 reduced vectors (4 bytes per
coordinate, as the training sample did), completed once ``M`` is known, and the training and the add read them.
The index is the one the three-pass build gives, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, _engines
from kl_retrievers.store._base import IndexType
from kl_retrievers.store._table import DocumentTable


def _gaussians(n: int, k: int, shift: float, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = (rng.standard_normal((n, k)) + shift).astype(np.float32)
    var = np.exp(0.3 * rng.standard_normal((n, k))).astype(np.float32)
    return Gaussians(mean, var, validate=False)


def _rows_of_d(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each ``doc_vectors`` call builds, from here on."""
    asked: list[int] = []
    doc_vectors = DocumentTable.doc_vectors

    def spy(self: DocumentTable, rows: np.ndarray | slice) -> np.ndarray:
        out = doc_vectors(self, rows)
        asked.append(out.shape[0])
        return out

    monkeypatch.setattr(DocumentTable, "doc_vectors", spy)
    return asked


def _build(
    index_type: IndexType, settings: dict[str, Any], n: int, k: int, shift: float
) -> tuple[KLStore, list[np.ndarray]]:
    """A store of ``n`` documents, a third of them deleted and the index rebuilt; the training inputs of that build."""
    store = KLStore(index_type=index_type, **settings)
    store.add(gaussians=_gaussians(n, k, shift), ids=[f"d{i}" for i in range(n)])
    store.delete([f"d{i}" for i in range(0, n, 3)])
    trained: list[np.ndarray] = []
    train = faiss.Index.train

    def spy_train(self: Any, x: np.ndarray) -> None:
        trained.append(np.array(x, copy=True))
        train(self, x)

    with pytest.MonkeyPatch.context() as patch:
        for cls in (faiss.Index, faiss.IndexIVF, faiss.IndexHNSW):  # where the bindings define train
            patch.setattr(cls, "train", spy_train)
        store.rebuild()
    assert store._engine.index is not None
    return store, trained


CASES: list[tuple[IndexType, dict[str, Any], float]] = [
    ("ivf", {"nlist": 8, "nprobe": 8}, 0.0),
    ("ivf", {"nlist": 8, "nprobe": 8}, 20.0),  # means centred on their mean
    ("ivf", {"nlist": 4, "compression": "pq", "pq_m": 3, "pq_nbits": 4}, 0.0),
    ("hnsw", {"hnsw_m": 8}, 0.0),
    ("hnsw", {"hnsw_m": 8, "compression": "sq8"}, 20.0),
]


@pytest.mark.parametrize(("index_type", "settings", "shift"), CASES)
def test_a_build_over_every_live_row_builds_each_d_twice(
    monkeypatch: pytest.MonkeyPatch, index_type: IndexType, settings: dict[str, Any], shift: float
) -> None:
    store = KLStore(index_type=index_type, **settings)
    store.add(gaussians=_gaussians(1500, 8, shift), ids=[f"d{i}" for i in range(1500)])
    monkeypatch.setattr(_engines, "_BUILD_BLOCK", 256)  # several blocks
    monkeypatch.setattr(_engines, "_BLOCK_ELEMENTS", 200 * 17)  # the sample's, of other rows (k = 8)
    asked = _rows_of_d(monkeypatch)
    store.rebuild()
    assert sum(asked) == 2 * len(store)  # the sample's parts, then the norm pass (HEAD: 4 x for IVF, 3 x for HNSW)
    assert max(asked) <= 256


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one thread: an HNSW graph built by several depends on their timing, not only on its input."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@pytest.mark.usefixtures("one_faiss_thread")
@pytest.mark.parametrize(("index_type", "settings", "shift"), CASES)
def test_the_index_is_the_one_the_separate_passes_build(
    monkeypatch: pytest.MonkeyPatch, index_type: IndexType, settings: dict[str, Any], shift: float
) -> None:
    monkeypatch.setattr(_engines, "_BUILD_BLOCK", 256)
    monkeypatch.setattr(_engines, "_BLOCK_ELEMENTS", 256 * 17)  # the sample's blocks (k = 8) are the build's
    kept, kept_trained = _build(index_type, settings, 1500, 8, shift)
    norm_pass = _engines.ApproxEngine._norm_pass
    monkeypatch.setattr(_engines.ApproxEngine, "_norm_pass", lambda self, live, keep: norm_pass(self, live, False))
    built, built_trained = _build(index_type, settings, 1500, 8, shift)
    a, b = kept._engine, built._engine
    assert isinstance(a, _engines.ApproxEngine) and isinstance(b, _engines.ApproxEngine)
    assert (a.centre is None) == (b.centre is None) == (shift == 0.0)
    assert (a.offset, a.norm_bound) == (b.offset, b.norm_bound)
    trains = 0 if index_type == "hnsw" and "compression" not in settings else 1
    assert len(kept_trained) == len(built_trained) == trains
    for x, y in zip(kept_trained, built_trained, strict=True):
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)
    assert np.array_equal(faiss.serialize_index(a.index), faiss.serialize_index(b.index))
    assert all(np.array_equal(p, q) for p, q in zip(a._top_norms, b._top_norms, strict=True))
    q = _gaussians(6, 8, shift, seed=7)
    assert [[(r.id, r.score) for r in rs] for rs in kept.search_batch(q, k=10)] == [
        [(r.id, r.score) for r in rs] for rs in built.search_batch(q, k=10)
    ]


def test_a_sample_of_some_rows_still_reads_every_row_for_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """HNSW's sample (the offset only) is 16,384 rows: above that nothing is kept, the add builds its own ``d~``."""
    n = 16384 + 300
    store = KLStore(index_type="hnsw", hnsw_m=4, ef_construction=8)
    store.add(gaussians=_gaussians(n, 2, 0.0), ids=[f"d{i}" for i in range(n)])
    asked = _rows_of_d(monkeypatch)
    store.rebuild()
    assert sum(asked) == 16384 + 2 * n  # the sample's parts, the norm pass, the add
