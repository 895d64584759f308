"""Tests for ``KLStore``: exactness, approximate recall, mutation, persistence, threads, bad input."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

import kl_retrievers.store._format as format_module
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.index import KLStore, SearchResult, StoreFormatError
from kl_retrievers.store._engines import ApproxEngine

APPROX = [
    ("hnsw", {"hnsw_m": 16, "ef_construction": 40}),
    ("ivf", {"nlist": 32, "nprobe": 8}),
    ("ivf", {"nlist": 32, "nprobe": 8, "compression": "sq8"}),
    ("hnsw", {"hnsw_m": 16, "ef_construction": 40, "compression": "sq8"}),
]
ALL_TYPES = [("flat", {}), *APPROX, ("ivf", {"nlist": 8, "nprobe": 4, "compression": "pq", "pq_m": 11, "pq_nbits": 4})]

pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # tests/conftest.py


def gaussians(n: int, k: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, k)).astype(np.float32)
    var = np.exp(rng.normal(0.0, 0.5, size=(n, k))).astype(np.float32)
    return Gaussians(mean, var)


def clustered(n: int, k: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, k))
    mean = (centres[rng.integers(0, 50, n)] + rng.normal(0, 0.5, (n, k))).astype(np.float32)
    var = np.exp(rng.normal(0.0, 0.5, size=(n, k))).astype(np.float32)
    return Gaussians(mean, var)


def brute_force(q: Gaussians, d: Gaussians) -> np.ndarray:
    return np.asarray(neg_kl_matrix(q.astype(np.float64), d.astype(np.float64)))


def make_store(index_type: str, kw: dict[str, Any], docs: Gaussians, **extra: Any) -> KLStore:
    store = KLStore(index_type=index_type, **kw, **extra)  # type: ignore[arg-type]
    store.add(gaussians=docs, ids=[str(i) for i in range(len(docs))], metadatas=[{"i": i} for i in range(len(docs))])
    return store


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("k", [16, 64])
def test_flat_matches_brute_force(k: int) -> None:
    docs, queries = gaussians(2000, k, seed=1), gaussians(20, k, seed=2)
    store = make_store("flat", {}, docs)
    ref = brute_force(queries, docs)
    for i, res in enumerate(store.search_batch(queries, k=25)):
        assert [r.id for r in res] == [str(j) for j in np.argsort(-ref[i])[:25]]
        np.testing.assert_allclose([r.score for r in res], np.sort(ref[i])[::-1][:25], rtol=1e-10, atol=1e-10)


def test_scores_are_exact_neg_kl_and_higher_is_better() -> None:
    docs = gaussians(300, 32, seed=3)
    store = make_store("flat", {}, docs)
    res = store.search(docs[7], k=5)
    assert res[0].id == "7" and res[0].score == pytest.approx(0.0, abs=1e-9)
    assert all(r.score <= 0 for r in res)
    ref = brute_force(docs[7], docs)[0]
    for r in res:
        assert r.score == pytest.approx(ref[int(r.id)], abs=1e-9)
    assert isinstance(res[0], SearchResult) and res[0].metadata == {"i": 7}


def test_unit_variance_ranks_like_l2() -> None:
    rng = np.random.default_rng(4)
    docs = Gaussians(rng.normal(size=(500, 16)), np.ones((500, 16)))
    q = Gaussians(rng.normal(size=(1, 16)), np.ones((1, 16)))
    store = make_store("flat", {}, docs)
    l2 = ((docs.mean - q.mean) ** 2).sum(1)
    assert [r.id for r in store.search(q, k=10)] == [str(j) for j in np.argsort(l2)[:10]]


@pytest.mark.parametrize(("index_type", "kw"), APPROX)
def test_approximate_recall(index_type: str, kw: dict[str, Any]) -> None:
    docs, queries = clustered(4000, 32, seed=5), clustered(40, 32, seed=6)
    store = make_store(index_type, kw, docs, rescore_pool=100)
    assert store.is_built
    ref = brute_force(queries, docs)
    found = store.search_batch(queries, k=10)
    recall = np.mean([len({int(r.id) for r in f} & set(np.argsort(-ref[i])[:10])) / 10 for i, f in enumerate(found)])
    assert recall >= 0.9, recall
    for i, f in enumerate(found):  # scores are exact even when the ranking is approximate
        np.testing.assert_allclose([r.score for r in f], ref[i, [int(r.id) for r in f]], rtol=1e-10, atol=1e-10)


def test_float32_prescoring_keeps_the_exact_top_k() -> None:
    docs, queries = gaussians(3000, 48, seed=21), gaussians(30, 48, seed=22)
    store = make_store("flat", {}, docs)
    labels = np.random.default_rng(23).permuted(np.tile(np.arange(3000), (30, 1)), axis=1)[:, :800]
    labels[:, -5:] = -1  # padding stays out
    mask = np.ones(3000, dtype=bool)
    mask[::7] = False  # so do disallowed rows
    engine = ApproxEngine(store, store._table)  # the float32 pass of the approximate indexes' pool
    kept = engine._prescore(queries, labels, mask, keep=26)
    assert kept.shape == (30, 26) and (kept >= 0).all() and mask[kept].all()
    full = engine._rescore(queries, labels, mask)
    for i in range(30):
        best = set(labels[i, np.argsort(-full[i])[:10]])
        assert best <= set(kept[i])  # the exact top 10 of the pool survives the float32 pass
    np.testing.assert_array_equal(engine._prescore(queries, labels[:, :20], mask, keep=26), labels[:, :20])


def test_pq_pads_dimension() -> None:
    docs = gaussians(1500, 16, seed=7)
    store = make_store(
        "ivf", {"nlist": 8, "nprobe": 8, "compression": "pq", "pq_m": 11, "pq_nbits": 4}, docs, rescore_pool=200
    )
    assert store._index.d % 11 == 0 and store._index.d >= 2 * 16 + 2
    assert store.search(docs[3], k=3)[0].id == "3"


def test_late_document_with_larger_norm_triggers_rebuild() -> None:
    docs = gaussians(500, 16, seed=8)
    store = make_store("hnsw", {"hnsw_m": 8}, docs, norm_headroom=1.05)
    bound = store.norm_bound
    assert bound is not None
    far = Gaussians(np.full((1, 16), 30.0), np.full((1, 16), 0.01))
    store.add(gaussians=far, ids=["far"])
    assert store.rebuild_count == 1 and store.norm_bound is not None and store.norm_bound > bound
    assert store.search(far, k=1)[0].id == "far"
    near = gaussians(20, 16, seed=9)
    store.add(gaussians=near, ids=[f"n{i}" for i in range(20)])  # within the headroom: no rebuild
    assert store.rebuild_count == 1
    assert store.search(near[4], k=1)[0].id == "n4"


def offset_clusters(n: int, nq: int, k: int, n_clusters: int, seed: int = 0) -> tuple[Gaussians, Gaussians]:
    """Documents around many cluster centres, queries near documents (like benchmarks/ann.py)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, k))
    mean = centres[rng.integers(0, n_clusters, n)] + rng.normal(0, 0.5, (n, k))
    var = np.exp(rng.normal(0, 0.5, (n, k)))
    src = rng.integers(0, n, nq)
    q_mean, q_var = mean[src] + rng.normal(0, 0.5, (nq, k)), np.exp(rng.normal(0, 0.5, (nq, k)))
    return Gaussians(mean.astype(np.float32), var.astype(np.float32)), Gaussians(
        q_mean.astype(np.float32), q_var.astype(np.float32)
    )


def test_shifted_reduction_preserves_the_exact_ranking() -> None:
    docs, queries = offset_clusters(1500, 5, 64, 30)
    store = make_store("hnsw", {"hnsw_m": 8}, docs)
    engine = store._engine
    assert isinstance(engine, ApproxEngine) and abs(engine.offset) > 10  # the shared offset of d~'s first coordinate
    x = engine._reduced(store._table.doc_vectors(slice(None))).astype(np.float64)
    y = engine._query_reduced(queries).astype(np.float64)
    l2 = (y**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * y @ x.T
    ref = brute_force(queries, docs)
    for i in range(len(queries)):  # the index's L2 order is the exact -KL order
        assert list(np.argsort(l2[i])[:20]) == list(np.argsort(-ref[i])[:20])


def test_shifting_the_first_coordinate_raises_ivf_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    docs, queries = offset_clusters(4000, 40, 384, 200)
    ref = brute_force(queries, docs)

    def recall() -> float:
        found = make_store("ivf", {"nlist": 32, "nprobe": 8}, docs, rescore_pool=100).search_batch(queries, k=10)
        return float(np.mean([len({int(r.id) for r in f} & set(np.argsort(-ref[i])[:10])) / 10
                              for i, f in enumerate(found)]))  # fmt: skip

    shifted = recall()
    monkeypatch.setattr(ApproxEngine, "_shifted", lambda self, dvec: dvec)  # the plain reduction
    plain = recall()
    assert shifted >= plain + 0.1, (shifted, plain)


@pytest.mark.parametrize("nbits", [4, 8])
def test_ivf_pq_scans_codes_by_inner_product(monkeypatch: pytest.MonkeyPatch, nbits: int) -> None:
    docs, queries = offset_clusters(4000 if nbits == 4 else 2500, 40, 384, 100)
    ref = brute_force(queries, docs)
    kw = {"nlist": 16, "nprobe": 8, "compression": "pq", "pq_m": 77 if nbits == 4 else 35, "pq_nbits": nbits}

    def recall() -> float:
        store = make_store("ivf", kw, docs, rescore_pool=50)
        found = store.search_batch(queries, k=10)
        return float(np.mean([len({int(r.id) for r in f} & set(np.argsort(-ref[i])[:10])) / 10
                              for i, f in enumerate(found)]))  # fmt: skip

    store = make_store("ivf", kw, docs)
    assert store._index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert store._index.quantizer.metric_type == faiss.METRIC_L2
    assert type(store._index).__name__ == ("IndexIVFPQFastScan" if nbits == 4 else "IndexIVFPQ")
    scanned_by_ip = recall()
    assert scanned_by_ip >= 0.85, scanned_by_ip
    if nbits == 4:  # L2 fast-scan tables spend their 8 bits on the constant 2 M^2
        monkeypatch.setattr(
            ApproxEngine,
            "_new_ivf_pq",
            lambda self, d: faiss.index_factory(
                d, f"IVF{self.settings.nlist},PQ{self.settings.pq_m}x4fs", faiss.METRIC_L2
            ),
        )
        assert scanned_by_ip >= (plain := recall()) + 0.3, (scanned_by_ip, plain)


@pytest.mark.parametrize("refine", ["sq8", "fp16"])
def test_refine_reranks_a_large_pool_in_faiss(tmp_path: Path, refine: str) -> None:
    docs, queries = offset_clusters(4000, 40, 64, 100)
    ref = brute_force(queries, docs)
    kw = {"nlist": 16, "nprobe": 8, "compression": "pq", "pq_m": 26, "pq_nbits": 4, "refine": refine}
    store = make_store("ivf", kw, docs, rescore_pool=400)
    assert type(store._index).__name__ == "IndexRefine"
    assert type(faiss.downcast_index(store._index.base_index)).__name__ == "IndexIVFPQFastScan"
    seen: list[int] = []
    rescore = store._engine._rescore

    def counting_rescore(qg: Gaussians, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        seen.append(labels.shape[1])
        return rescore(qg, labels, mask)

    store._engine._rescore = counting_rescore  # type: ignore[method-assign]
    found = store.search_batch(queries, k=10)
    assert seen == [30]  # the pool of 400 left FAISS re-ranked down to k + 20
    recall = np.mean([len({int(r.id) for r in f} & set(np.argsort(-ref[i])[:10])) / 10 for i, f in enumerate(found)])
    assert recall >= 0.9, recall
    for i, f in enumerate(found):  # scores are still the exact -KL
        np.testing.assert_allclose([r.score for r in f], ref[i, [int(r.id) for r in f]], rtol=1e-10, atol=1e-10)
    filtered = store.search_batch(queries, k=10, filter={"i": {"$lt": 2000}})
    assert all(len(f) == 10 and all(int(r.id) < 2000 for r in f) for f in filtered)
    loaded = KLStore.load(store.save(tmp_path / "s"))
    assert loaded.refine == refine and type(loaded._index).__name__ == "IndexRefine"
    assert [[r.id for r in f] for f in loaded.search_batch(queries, k=10)] == [[r.id for r in f] for f in found]
    loaded.delete([str(i) for i in range(0, 4000, 2)])
    loaded.compact()
    assert loaded._index.ntotal == 2000 and all(int(r.id) % 2 for r in loaded.search(queries[0], k=10))
    hnsw = make_store("hnsw", {"hnsw_m": 8, "compression": "sq8", "refine": refine}, docs[:1500])
    assert type(hnsw._index).__name__ == "IndexRefine" and hnsw.search(docs[7], k=1)[0].id == "7"


def test_refine_needs_a_compressed_index() -> None:
    with pytest.raises(ValueError, match="refine must be one of"):
        KLStore(index_type="ivf", compression="pq", refine="pq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="applies to a compressed index"):
        KLStore(index_type="ivf", refine="sq8")


def test_offset_survives_save_and_load(tmp_path: Path) -> None:
    docs, queries = offset_clusters(1500, 5, 32, 30)
    store = make_store("ivf", {"nlist": 16, "nprobe": 16}, docs)
    folder = store.save(tmp_path / "s")
    cfg_path = folder / "config.json"
    assert json.loads(cfg_path.read_text())["index_offset"] == store.index_offset != 0
    loaded = KLStore.load(folder)
    assert loaded.index_offset == store.index_offset
    # a document added after loading is reduced with the same offset, so the index finds it
    loaded.add(gaussians=queries[2:3], ids=["late"])
    assert loaded.rebuild_count == 0 and loaded.search(queries[2], k=1)[0].id == "late"
    cfg = json.loads(cfg_path.read_text())
    cfg["index_offset"] = "NaN"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError, match="index_offset"):
        KLStore.load(folder)


def test_approximate_small_store_is_exact_until_built() -> None:
    docs = gaussians(50, 8, seed=10)
    store = make_store("ivf", {"nlist": 64}, docs)
    assert not store.is_built
    ref = brute_force(docs[:3], docs)
    for i, res in enumerate(store.search_batch(docs[:3], k=5)):
        assert [r.id for r in res] == [str(j) for j in np.argsort(-ref[i])[:5]]


# ------------------------------------------------------------------- mutation
def test_add_generates_ids_and_upserts() -> None:
    docs = gaussians(10, 8, seed=11)
    store = KLStore()
    ids = store.add(gaussians=docs)
    assert len(ids) == 10 and all(len(i) == 32 for i in ids) and len(set(ids)) == 10
    other = gaussians(1, 8, seed=12)
    store.add(["replaced"], gaussians=other, ids=[ids[3]], metadatas=[{"v": 2}])
    assert len(store) == 10
    hits = store.search(other, k=20)
    assert len(hits) == 10 and [h.id for h in hits].count(ids[3]) == 1
    assert hits[0].id == ids[3] and hits[0].text == "replaced" and hits[0].metadata == {"v": 2}
    assert store.get_by_ids([ids[3]])[0].metadata == {"v": 2}


def test_get_by_ids_preserves_order_and_skips_missing() -> None:
    store = make_store("flat", {}, gaussians(5, 4))
    assert [d.id for d in store.get_by_ids(["3", "nope", "0"])] == ["3", "0"]


@pytest.mark.parametrize(("index_type", "kw"), ALL_TYPES)
def test_delete_every_type(index_type: str, kw: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    docs = gaussians(1200, 16, seed=13)
    store = make_store(index_type, kw, docs)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.store._base"):
        report = store.delete(["5", "6", "missing-id"])
    assert report.deleted == ["5", "6"] and report.missing == ["missing-id"]
    assert "missing-id" in caplog.text
    assert len(store) == 1198 and "5" not in store
    hits = store.search(docs[5], k=10)
    assert len(hits) == 10 and not {"5", "6"} & {h.id for h in hits}
    assert store.get_by_ids(["5"]) == []
    # compaction keeps answers right
    store.compact()
    assert store.search(docs[7], k=1)[0].id == "7"
    assert len(store.search(docs[0], k=5000)) == 1198


def test_hnsw_tombstones_are_saved_as_they_are_and_compacted_on_request(tmp_path: Path) -> None:
    docs = gaussians(600, 8, seed=14)
    store = make_store("hnsw", {"hnsw_m": 8}, docs)
    store.delete([str(i) for i in range(10)])
    assert store._index.ntotal == 600  # tombstoned, not removed
    store.save(tmp_path / "s")  # below the compaction threshold: saved with its tombstones, no graph rebuild
    assert store._index.ntotal == 600
    loaded = KLStore.load(tmp_path / "s")
    assert len(loaded) == 590 and loaded._index.ntotal == 600 and loaded._table.dead() == 10
    store.compact()
    store.save(tmp_path / "c")
    loaded = KLStore.load(tmp_path / "c")
    assert len(loaded) == 590 and loaded._index.ntotal == 590 and loaded._table.dead() == 0


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize(("index_type", "kw"), ALL_TYPES)
def test_round_trip(index_type: str, kw: dict[str, Any], tmp_path: Path) -> None:
    docs, queries = gaussians(1200, 16, seed=15), gaussians(5, 16, seed=16)
    store = make_store(index_type, kw, docs)
    before = store.search_batch(queries, k=10, filter={"i": {"$gte": 100}})
    store.save(tmp_path / "store")
    config = json.loads((tmp_path / "store" / "config.json").read_text())
    assert config["score_name"] == "neg_kl" and config["score_direction"] == "higher_is_better"
    assert config["dim"] == 16 and config["count"] == 1200 and config["index_type"] == index_type
    for mmap in (False, True):
        loaded = KLStore.load(tmp_path / "store", mmap=mmap)
        assert len(loaded) == 1200 and loaded.index_type == index_type
        assert loaded.search_batch(queries, k=10, filter={"i": {"$gte": 100}}) == before
        loaded.add(gaussians=gaussians(3, 16, seed=17), ids=["x", "y", "z"])  # mutation after (mmap) load
        loaded.delete(["1"])
        everything = [h.id for h in loaded.search(gaussians(3, 16, seed=17)[1], k=len(loaded))]  # exact path
        assert len(loaded) == 1202 and everything[0] == "y" and "1" not in everything


def test_empty_store_round_trip(tmp_path: Path) -> None:
    KLStore(index_type="hnsw").save(tmp_path / "e")
    loaded = KLStore.load(tmp_path / "e")
    assert len(loaded) == 0 and loaded.search(gaussians(1, 4), k=3) == []


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "store"
    store = make_store("flat", {}, gaussians(100, 8))
    store.save(target)
    store.add(gaussians=gaussians(5, 8, seed=1), ids=[f"new{i}" for i in range(5)])

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(format_module, "_write_jsonl", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save(target)
    assert len(KLStore.load(target)) == 100  # previous copy intact
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temporary leftovers
    monkeypatch.undo()
    store.save(target)
    assert len(KLStore.load(target)) == 105


def test_save_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a KLStore folder"):
        KLStore().save(tmp_path / "mine")


@pytest.mark.parametrize("how", ["truncate", "flip", "missing", "count", "dim"])
def test_load_rejects_inconsistent_folder(how: str, tmp_path: Path) -> None:
    folder = make_store("hnsw", {"hnsw_m": 8}, gaussians(300, 8)).save(tmp_path / "s")
    idx = folder / "index.faiss"
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if how == "truncate":
        idx.write_bytes(idx.read_bytes()[:1000])
    elif how == "flip":
        data = bytearray(idx.read_bytes())
        data[len(data) // 2] ^= 0xFF
        idx.write_bytes(bytes(data))
    elif how == "missing":
        (folder / "var.npy").unlink()
    elif how == "count":
        cfg["count"] = 299
        cfg_path.write_text(json.dumps(cfg))
    else:
        cfg["dim"] = 9
        cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(StoreFormatError):
        KLStore.load(folder)


def test_unreadable_index_without_checksums_is_a_value_error(tmp_path: Path) -> None:
    folder = make_store("hnsw", {"hnsw_m": 8}, gaussians(300, 8)).save(tmp_path / "s")
    idx = folder / "index.faiss"
    size = idx.stat().st_size
    idx.write_bytes(b"\x00" * size)  # same size, garbage content
    with pytest.raises(ValueError):
        KLStore.load(folder, verify_checksums=False)


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KLStore.load(tmp_path / "nothing")


# -------------------------------------------------------------------- threads
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_concurrent_search_and_mutation(index_type: str) -> None:
    docs = gaussians(1500, 16, seed=20)
    kw = {"hnsw_m": 8, "ef_construction": 20} if index_type == "hnsw" else {}
    store = make_store(index_type, kw, docs)
    stable = [str(i) for i in range(100)]  # never touched by the writer
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        try:
            while not stop.is_set():
                i = int(np.random.default_rng(seed).integers(0, 100))
                hits = store.search(docs[i], k=5)
                assert len(hits) == 5 and (index_type != "flat" or hits[0].id == stable[i])
                assert len({h.id for h in hits}) == 5
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for round_ in range(15):
                ids = [f"w{round_}-{j}" for j in range(20)]
                store.add(gaussians=gaussians(20, 16, seed=100 + round_), ids=ids)
                store.delete([*ids[:10], str(200 + round_)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(store) == 1500 + 15 * 10 - 15


# ------------------------------------------------------------------ bad input
def test_bad_inputs() -> None:
    store = make_store("flat", {}, gaussians(20, 8))
    with pytest.raises(ValueError):
        store.search(gaussians(1, 9), k=3)  # wrong dimension
    with pytest.raises(ValueError):
        store.search(Gaussians(np.full((1, 8), np.nan), np.ones((1, 8)), validate=False))
    for bad_k in (0, -1):
        with pytest.raises(ValueError):
            store.search(gaussians(1, 8), k=bad_k)
    assert len(store.search(gaussians(1, 8), k=1000)) == 20  # k > store: everything
    with pytest.raises(ValueError):
        store.add(["a", "b"], gaussians=gaussians(3, 8))
    with pytest.raises(ValueError):
        store.add(gaussians=gaussians(3, 8), ids=["a"])
    with pytest.raises(ValueError):
        store.add(gaussians=gaussians(3, 8), metadatas=[{}])
    with pytest.raises(ValueError):
        store.add(gaussians=gaussians(2, 7))
    with pytest.raises(ValueError):
        store.add(gaussians=gaussians(2, 8), ids=["d", "d"])
    with pytest.raises(ValueError):
        store.add(["text without encoder"])
    with pytest.raises(ValueError):
        store.search("text without encoder")
    with pytest.raises(ValueError):
        KLStore(index_type="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KLStore(index_type="flat", compression="pq")
    assert len(store) == 20


def test_empty_store_search() -> None:
    assert KLStore().search(gaussians(1, 8), k=5) == []
    assert KLStore(index_type="hnsw", dim=8).search_batch(gaussians(2, 8), k=5) == [[], []]


def test_torch_gaussians_accepted() -> None:
    torch = pytest.importorskip("torch")
    g = gaussians(30, 8)
    store = KLStore()
    store.add(gaussians=Gaussians(torch.from_numpy(g.mean), torch.from_numpy(g.var)), ids=[str(i) for i in range(30)])
    assert store.search(Gaussians(torch.from_numpy(g.mean[4]), torch.from_numpy(g.var[4])), k=1)[0].id == "4"


def test_with_tiny_encoder(tiny_encoder: Any, tmp_path: Path) -> None:
    texts = ["the cat sat on the mat", "hello world", "green tea and bread", "the sun and the moon", "a dog"]
    store = KLStore(tiny_encoder, index_type="flat")
    ids = store.add(texts, metadatas=[{"n": i} for i in range(5)])
    hits = store.search("the cat sat", k=3)
    assert len(hits) == 3 and all(h.text in texts for h in hits)
    q = tiny_encoder.encode_queries(["the cat sat"])
    d = tiny_encoder.encode_documents(texts)
    ref = brute_force(q.numpy(), d.numpy().astype(np.float32))[0]
    assert hits[0].id == ids[int(np.argmax(ref))]
    store.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["encoder"]["name_or_path"] == "tiny-random" and cfg["encoder"]["config"]["dim"] == 8
    loaded = KLStore.load(tmp_path / "s", encoder=tiny_encoder)
    assert [h.id for h in loaded.search("the cat sat", k=3)] == [h.id for h in hits]
