"""The store's readers-writer lock is fair, delete by a metadata filter is atomic, and a model name is no encoder."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import DeleteReport, GaussianStore, KLStore
from kl_retrievers.store._base import _RWLock

DIM = 4


def _store(n: int = 6, **kw: Any) -> KLStore:
    store = KLStore(**kw)
    rng = np.random.default_rng(0)
    store.add(
        [f"text {i}" for i in range(n)],
        gaussians=Gaussians(rng.normal(size=(n, DIM)), np.ones((n, DIM))),
        ids=[f"d{i}" for i in range(n)],
        metadatas=[{"src": "x" if i % 2 == 0 else "y", "i": i} for i in range(n)],
    )
    return store


def _one(seed: int = 1) -> Gaussians:
    return Gaussians(np.random.default_rng(seed).normal(size=(1, DIM)), np.ones((1, DIM)))


# ------------------------------------------------------------------ delete by filter
@pytest.mark.parametrize("flt", [{"src": "x"}, lambda m: m["src"] == "x"], ids=["dict", "callable"])
def test_delete_by_filter_deletes_only_the_matches(flt: Any) -> None:
    store = _store()
    report = store.delete(filter=flt)
    assert report.deleted == ["d0", "d2", "d4"] and report.missing == []
    assert store.ids == ["d1", "d3", "d5"]
    assert [r.id for r in store.search(_one(), k=10)] != [] and all(
        r.metadata["src"] == "y" for r in store.search(_one(), k=10)
    )


def test_delete_ids_and_filter_deletes_the_matching_ids_and_reports_missing() -> None:
    store = _store()
    report = store.delete(["d0", "d1", "nope", "d0"], filter={"src": "x"})
    assert report.deleted == ["d0"] and report.missing == ["nope"]
    assert "d1" in store and "d0" not in store and len(store) == 5


def test_delete_needs_ids_or_filter_and_empty_filter_deletes_all() -> None:
    store = _store()
    with pytest.raises(ValueError, match="ids, a filter, or both"):
        store.delete()
    assert len(store) == 6
    assert store.delete(filter={}).deleted == [f"d{i}" for i in range(6)] and len(store) == 0


def test_delete_by_filter_reads_no_text(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store()

    def no_copies(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("delete by filter copied documents")

    monkeypatch.setattr(store._table, "documents", no_copies)
    monkeypatch.setattr(store._table, "results", no_copies)
    assert store.delete(filter=lambda m: m["i"] >= 4).deleted == ["d4", "d5"]


def test_delete_by_filter_is_atomic_against_a_writer() -> None:
    """A writer arriving while the filter runs waits for it: it cannot change what is judged before the deletion."""
    store = _store()
    upserted = threading.Event()
    writer: list[threading.Thread] = []

    def upsert_d0_as_y() -> None:
        store.add(["moved"], gaussians=_one(), ids=["d0"], metadatas=[{"src": "y", "i": 0}])
        upserted.set()

    def flt(m: Any) -> bool:
        if not writer:  # first call: another thread upserts d0 (to src=y) now
            writer.append(threading.Thread(target=upsert_d0_as_y))
            writer[0].start()
            assert not upserted.wait(0.3), "a writer got in while delete was choosing what to delete"
        return bool(m["src"] == "x")

    report = store.delete(filter=flt)
    writer[0].join(10)
    assert upserted.is_set()
    # d0 deleted before the upsert (which then stores it again), or judged again after it (kept): never deleted
    # on the metadata the upsert replaced
    assert report.deleted in (["d0", "d2", "d4"], ["d2", "d4"])
    assert store.get_by_ids(["d0"])[0].metadata["src"] == "y"  # the later upsert stands, whole


def test_delete_filter_cannot_modify_the_store() -> None:
    store = _store()

    def flt(m: Any) -> bool:
        store.delete(["d1"])
        return True

    with pytest.raises(RuntimeError, match="choosing the documents to delete .* after delete returns"):
        store.delete(filter=flt)
    assert len(store) == 6
    store.delete(["d1"])  # the lock is usable again
    assert len(store) == 5


def test_flat_search_after_delete_by_filter_matches_brute_force() -> None:
    store = _store(n=40)
    store.delete(filter={"i": {"$lt": 25}})
    q = _one(3)
    hits = store.search(q, k=40)
    g = store.get_gaussians(store.ids)
    mean, var, qm, qv = np.asarray(g.mean), np.asarray(g.var), np.asarray(q.mean)[0], np.asarray(q.var)[0]
    kl = 0.5 * (np.log(var / qv) + (qv + (qm - mean) ** 2) / var - 1).sum(axis=1)
    assert [h.id for h in hits] == [store.ids[j] for j in np.argsort(kl, kind="stable")]


# ------------------------------------------------------------------ a model name is no encoder
@pytest.mark.parametrize("name", ["minilm-gauss-soup", Path("some/folder")])
def test_model_name_as_encoder_is_refused(name: Any) -> None:
    with pytest.raises(TypeError, match=r"load_model\("):
        KLStore(name)
    with pytest.raises(TypeError, match="where an encoder is expected"):
        KLStore(encoder=name)


# ------------------------------------------------------------------ fairness of the lock
def _wait_until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_reader_waiting_when_a_writer_releases_goes_before_the_next_writer() -> None:
    lock = _RWLock()
    order: list[str] = []
    reader_waiting = threading.Event()

    def reader() -> None:
        reader_waiting.set()
        with lock.read():
            order.append("read")
            time.sleep(0.1)
            order.append("read done")

    def writer() -> None:
        with lock.write():
            order.append("write 2")

    with lock.write():
        r = threading.Thread(target=reader)
        r.start()
        reader_waiting.wait(10)
        time.sleep(0.3)  # the reader is blocked in read()
        w = threading.Thread(target=writer)
        w.start()
        _wait_until(lambda: lock._waiting_writers == 1, "the second writer did not wait")
        time.sleep(0.1)
    r.join(10)
    w.join(10)
    assert order == ["read", "read done", "write 2"]


def test_a_writer_waits_for_readers_but_blocks_new_ones() -> None:
    lock = _RWLock()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first_reader() -> None:
        with lock.read():
            inside.set()
            release.wait(10)
            order.append("read 1 done")

    def writer() -> None:
        with lock.write():
            order.append("write")

    def second_reader() -> None:
        with lock.read():
            order.append("read 2")

    r1 = threading.Thread(target=first_reader)
    r1.start()
    inside.wait(10)
    w = threading.Thread(target=writer)
    w.start()
    _wait_until(lambda: lock._waiting_writers == 1, "the writer did not wait")
    r2 = threading.Thread(target=second_reader)
    r2.start()
    time.sleep(0.2)
    assert order == []  # the second reader waits behind the waiting writer
    release.set()
    for t in (r1, w, r2):
        t.join(10)
    assert order == ["read 1 done", "write", "read 2"]


def test_searches_progress_while_a_thread_upserts_back_to_back() -> None:
    store = _store(n=150)
    stop = threading.Event()
    counts = {"search": 0, "write": 0}
    q = _one(5)
    g = _one(6)

    def searcher() -> None:
        while not stop.is_set():
            store.search(q, k=5)
            counts["search"] += 1

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.add(["z"], gaussians=g, ids=[f"d{i % 150}"])
            counts["write"] += 1
            i += 1

    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert counts["write"] >= 10
    # a fair lock lets the searcher in after (about) every write; a writer-preferring one let it in a few times
    assert counts["search"] >= min(50, counts["write"] // 4), counts


# ------------------------------------------------------------------ flat compaction follows compact_threshold
def test_flat_upserts_and_deletes_tombstone_until_compact_threshold() -> None:
    store = _store(n=40)  # flat, compact_threshold=0.3
    for i in range(5):
        store.add(["new"], gaussians=_one(10 + i), ids=[f"d{i}"], metadatas=[{"src": "z", "i": i}])
    store.delete(["d10", "d11"])
    assert store.compaction_count == 0 and store._table.dead() == 7 and len(store) == 38
    hits = store.search(_one(3), k=38)
    assert sorted(h.id for h in hits) == sorted(store.ids)
    assert {h.id: h.metadata["src"] for h in hits if h.id in {"d0", "d4"}} == {"d0": "z", "d4": "z"}
    g = store.get_gaussians(store.ids)
    q = _one(3)
    mean, var, qm, qv = np.asarray(g.mean), np.asarray(g.var), np.asarray(q.mean)[0], np.asarray(q.var)[0]
    kl = 0.5 * (np.log(var / qv) + (qv + (qm - mean) ** 2) / var - 1).sum(axis=1)
    assert np.allclose(sorted(-h.score for h in hits), np.sort(kl), rtol=1e-9, atol=1e-9)
    store.delete([f"d{i}" for i in range(12, 20)])  # 15 dead of 45 rows: past 0.3
    assert store.compaction_count == 1 and store._table.dead() == 0 and len(store) == 30


def test_flat_compact_threshold_zero_compacts_at_every_write() -> None:
    store = _store(n=10, compact_threshold=0.0)
    store.add(["new"], gaussians=_one(), ids=["d0"])
    assert store.compaction_count == 1 and store._table.dead() == 0


# ------------------------------------------------------------------ Milvus: the same API (atomic within the process)
@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_milvus_delete_by_filter_matches_klstore(tmp_path: Path, metric: str) -> None:
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    kl = _store(n=12)
    mv = MilvusKLStore(uri=str(tmp_path / "kl.db"), metric=metric)  # type: ignore[arg-type]
    ids = kl.ids
    docs = kl.get_by_ids(ids)
    mv.add(gaussians=kl.get_gaussians(ids), ids=ids, metadatas=[d.metadata for d in docs])
    for store in (kl, mv):
        report = store.delete(["d1", "d2", "d3", "nope"], filter={"src": "x"})
        assert (report.deleted, report.missing) == (["d2"], ["nope"])
        report = store.delete(filter={"i": {"$gte": 8}})
        assert sorted(report.deleted) == ["d10", "d11", "d8", "d9"] and report.missing == []
    assert sorted(mv.ids) == sorted(kl.ids) == ["d0", "d1", "d3", "d4", "d5", "d6", "d7"]
    with pytest.raises(ValueError):
        mv.delete(filter=lambda m: True)  # Milvus filters are dicts
    mv.close()


# ------------------------------------------------------------------ second round: save, compaction bound, hooks
def test_write_then_read_downgrades_atomically() -> None:
    """A writer waiting during the write section stays out until the downgraded read ends; readers get in."""
    lock = _RWLock()
    order: list[str] = []

    def writer() -> None:
        with lock.write():
            order.append("writer")

    with lock.write_then_read() as downgrade:
        w = threading.Thread(target=writer)
        w.start()
        _wait_until(lambda: lock._waiting_writers == 1, "the writer never waited")
        downgrade()
        assert lock._writer is None and lock._readers == 1
        with lock.read():  # re-entrant for this thread
            pass
        time.sleep(0.05)
        assert order == []
        order.append("reader")
    w.join(10)
    assert order == ["reader", "writer"]


def test_save_writes_under_the_read_lock_while_another_thread_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each compaction lets an upsert in on the old code (three retries, then the write lock): none now."""
    from kl_retrievers.store import _format

    store = _store(n=40)
    store.add(["new"], gaussians=_one(), ids=["d0"])  # a tombstone to compact
    store.compact_threshold = 0.0  # so that the save compacts it (below the threshold it is saved as it is)
    threads: list[threading.Thread] = []
    compact = store._compact

    def compact_and_start_an_upsert() -> None:
        compact()
        i = len(threads)
        threads.append(threading.Thread(target=lambda: store.add(["u"], gaussians=_one(i), ids=[f"d{i + 1}"])))
        threads[-1].start()
        _wait_until(lambda: store._lock._waiting_writers >= 1, "the upsert never waited")

    writing: list[bool] = []
    write_folder = _format.write_folder

    def record(*args: Any, **kwargs: Any) -> Any:
        writing.append(store._lock._writer is not None)
        return write_folder(*args, **kwargs)

    monkeypatch.setattr(store, "_compact", compact_and_start_an_upsert)
    monkeypatch.setattr(_format, "write_folder", record)
    store.save(tmp_path / "st")
    for t in threads:
        t.join(10)
    assert writing == [False]  # written under the read lock
    loaded = KLStore.load(tmp_path / "st")
    assert len(loaded) == 40 and loaded._table.dead() == 0


def test_compact_threshold_one_does_not_grow_without_bound() -> None:
    store = _store(n=10, compact_threshold=1.0)
    for i in range(300):
        store.add(["again"], gaussians=_one(i), ids=[f"d{i % 10}"])
    assert len(store) == 10 and store._table.n_rows <= 100 and store.compaction_count >= 1
    assert store.compact_threshold == 1.0  # the setting is kept; 0.9 is the bound used
    store.delete(filter={})
    assert len(store) == 0 and store._table.n_rows == 0


def test_a_backend_written_to_the_required_hooks_instantiates() -> None:
    assert "_delete_matching" not in GaussianStore.__abstractmethods__
    hooks = ["__len__", "_add_documents", "_delete", "_documents", "_gaussians", "_prepare_filter", "_search"]
    ns: dict[str, Any] = {name: (lambda self, *a, **k: 0) for name in hooks}
    ns["ids"] = property(lambda self: [])
    ns["_delete"] = lambda self, ids: DeleteReport(deleted=[], missing=ids)
    ns["_prepare_filter"] = lambda self, f: f
    backend = type("MyBackend", (GaussianStore,), ns)()
    assert backend.delete(["a"]).missing == ["a"]
    with pytest.raises(NotImplementedError, match="MyBackend does not delete by a filter"):
        backend.delete(filter={"a": 1})


def test_load_refuses_a_model_name_before_reading_any_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-store-here"
    with pytest.raises(TypeError, match=r"KLStore\.load\(path, encoder=load_model\('m'\)\)"):
        KLStore.load(missing, encoder="m")  # type: ignore[arg-type]  # refused at run time
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    with pytest.raises(TypeError, match=r"KLHybridStore\.load\(path, encoder=load_model\('m'\)\)"):
        KLHybridStore.load(missing, encoder="m")  # type: ignore[arg-type]  # refused at run time
    with pytest.raises(TypeError, match=r"KLHybridStore\(encoder=load_model\('m'\)\)"):
        KLHybridStore(encoder="m", fusion="rrf")  # type: ignore[arg-type]  # refused at run time


def test_every_way_of_setting_an_encoder_refuses_a_model_name(tmp_path: Path) -> None:
    store = _store()
    with pytest.raises(TypeError, match="where an encoder is expected"):
        store.encoder = "m"
    assert store.encoder is None
    with pytest.raises(TypeError, match="where an encoder is expected"):
        KLStore(b"m")  # type: ignore[arg-type]  # refused at run time
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    with pytest.raises(TypeError, match=r"KLHybridStore\(encoder="):
        KLHybridStore(kl_store=store, encoder="m", fusion="rrf")  # type: ignore[arg-type]  # refused at run time
    hybrid = KLHybridStore(kl_store=store, fusion="rrf")
    with pytest.raises(TypeError, match="where an encoder is expected"):
        hybrid.kl.encoder = Path("m")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    with pytest.raises(TypeError, match=r"MilvusKLStore\(encoder=load_model\('m'\)\)"):
        MilvusKLStore("m", uri=str(tmp_path / "kl.db"))  # type: ignore[arg-type]  # refused at run time
    assert not (tmp_path / "kl.db").exists()


def test_hybrid_delete_by_filter_keeps_the_halves_in_step() -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    hybrid = KLHybridStore(kl_store=_store(), fusion="rrf")
    report = hybrid.delete(filter={"src": "x"})
    assert report.deleted == ["d0", "d2", "d4"] and hybrid.ids == ["d1", "d3", "d5"]
    assert hybrid.delete(["d1", "d3", "zz"], filter=lambda m: m["i"] == 3).deleted == ["d3"]
    hits = hybrid.search("text", k=10, query_gaussians=_one())
    assert sorted(h.id for h in hits) == ["d1", "d5"]
    with pytest.raises(ValueError, match="ids, a filter, or both"):
        hybrid.delete()


def test_a_callable_delete_filter_runs_while_searches_go_on() -> None:
    store = _store(n=20)
    searched = threading.Event()

    def search() -> None:
        store.search(_one(), k=3)
        searched.set()

    thread: list[threading.Thread] = []
    during: list[bool] = []

    def flt(m: Any) -> bool:
        if not thread:
            thread.append(threading.Thread(target=search))
            thread[0].start()
            during.append(searched.wait(5))  # the old code held the write lock here: the search waited
        return bool(m["src"] == "x")

    report = store.delete(filter=flt)
    thread[0].join(10)
    assert during == [True] and len(report.deleted) == 10
    assert len(store) == 10


def test_a_delete_filter_is_run_again_when_the_store_changed_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a write between the read-lock choice and the write lock changed is judged again."""
    store = _store()
    matching = store._matching
    calls: list[int] = []

    def choose_then_change_d0(ids: Any, flt: Any) -> Any:
        chosen = matching(ids, flt)
        calls.append(len(chosen[0]))
        if len(calls) == 1:  # as an upsert of d0 (to src=y) would between the two locks
            store._table.metas[store._table.row["d0"]] = {"src": "y", "i": 0}
            store.write_count += 1
        return chosen

    monkeypatch.setattr(store, "_matching", choose_then_change_d0)
    report = store.delete(filter={"src": "x"})
    assert calls == [3, 2] and report.deleted == ["d2", "d4"] and "d0" in store


def test_a_numpy_str_model_name_is_shown_as_a_plain_str() -> None:
    with pytest.raises(TypeError, match=r"got the model name or folder 'm' ") as err:
        KLStore(encoder=np.str_("m"))  # type: ignore[arg-type]  # refused at run time
    assert "np.str_" not in str(err.value) and "load_model('m')" in str(err.value)
