"""A loaded flat store starts searching without reading its index again, and stores share the model they load.

1. A flat store saves the largest norm of each block of its index's ``d~`` rows (``flat_norm_max`` in
   ``config.json``), which bounds the float32 error of every search: a load of verified files takes it instead
   of reading every row of the index at the first search. It equals the bound computed from the index, a
   damaged value is refused (its checksum, ``flat_norm_max_sha256``, binds it to ``index.faiss``: a value too low
   in rows the load does not check is refused too), a folder saved without it (an earlier release) loads and
   searches identically, the bound stays an exact upper bound through add, upsert and delete (and an mmap copy),
   and a compaction computes it again (a deleted large row does not leave a loose bound saved for good).
2. Stores loaded without an encoder load the model they were saved with through one process-wide cache of weak
   references: stores of the same model share one object while any holds it, and a freed model is not kept; a
   model changed since it was loaded (in place, ``.half()``) is not handed to a later store, and no load lock is
   kept once its load is over.
3. ``KLStore(KLEmbeddings(enc))`` records the model ``KLStore(enc)`` records (tests/test_adapter_leftovers.py).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers import GaussianEncoder, KLStore
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import _base, _engines, _format
from kl_retrievers.store._base import StoreFormatError

IDS = [f"d{i}" for i in range(300)]
TEXTS = ["the cat sat on the mat", "bread and tea for breakfast", "a dog in the park"]


# ---------------------------------------------------------------- 1. the flat index's norm bound
def _flat_store(n: int = 300, k: int = 8) -> KLStore:
    g = random_gaussians(n, k, seed=1)
    store = KLStore()
    store.add(ids=IDS[:n], gaussians=Gaussians(g.mean + 3.0, g.var))  # off the origin: a centre, format 2
    return store


def _flat(store: KLStore) -> _engines.FlatEngine:
    engine = store._engine
    assert isinstance(engine, _engines.FlatEngine)
    return engine


def _recomputed(store: KLStore) -> np.ndarray:
    """The bound computed from every row of the store's index (what the first search of a load computed)."""
    engine = _flat(store)
    engine._flat_norm = None
    return engine._flat_norm_max().copy()


def _config(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "config.json").read_text()))


def _write_config(path: Path, config: dict[str, Any]) -> None:
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _hits(store: KLStore, queries: Gaussians, k: int = 10) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in hits] for hits in store.search_batch(queries, k=k)]


def _count_index_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the blocks of index rows the flat engine reads to compute its norm bound."""
    calls: list[int] = []
    real = _engines.rewrite_block_norms

    def counting(vectors: np.ndarray, **kw: Any) -> np.ndarray:
        calls.append(len(vectors))
        return real(vectors, **kw)

    monkeypatch.setattr(_engines, "rewrite_block_norms", counting)
    return calls


def test_a_flat_store_saves_the_bound_its_index_gives(tmp_path: Path) -> None:
    store = _flat_store()
    store.save(tmp_path / "s")
    config = _config(tmp_path / "s")
    assert config["flat_norm_max"] == _recomputed(store).tolist()
    assert config["format_version"] == 2  # the field changes no format version (earlier releases ignore it)
    loaded = KLStore.load(tmp_path / "s")
    assert np.array_equal(_flat(loaded)._flat_norm_max(), _recomputed(KLStore.load(tmp_path / "s")))


def test_the_first_search_of_a_loaded_store_reads_no_index_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _flat_store()
    store.save(tmp_path / "s")
    queries = random_gaussians(4, 8, seed=2)
    want = _hits(store, queries)
    loaded = KLStore.load(tmp_path / "s")
    calls = _count_index_reads(monkeypatch)
    assert _hits(loaded, queries) == want
    assert calls == []  # the saved bound: no pass over the index's rows


def test_a_folder_saved_without_the_bound_loads_and_searches_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _flat_store()
    store.save(tmp_path / "s")
    saved = _config(tmp_path / "s")
    queries = random_gaussians(5, 8, seed=3)
    want = _hits(KLStore.load(tmp_path / "s"), queries)
    older = dict(saved)
    del older["flat_norm_max"]  # as an earlier release wrote it (config.json is not under the checksums)
    _write_config(tmp_path / "s", older)
    loaded = KLStore.load(tmp_path / "s")
    calls = _count_index_reads(monkeypatch)
    assert _hits(loaded, queries) == want
    assert calls  # computed from the index at the first search, as before
    assert _flat(loaded)._flat_norm_max().tolist() == saved["flat_norm_max"]
    loaded.save(tmp_path / "again")
    assert _config(tmp_path / "again")["flat_norm_max"] == saved["flat_norm_max"]  # a save writes it again


def test_the_bound_is_taken_only_over_verified_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _flat_store()
    store.save(tmp_path / "s")
    queries = random_gaussians(3, 8, seed=4)
    loaded = KLStore.load(tmp_path / "s", verify_checksums=False)
    calls = _count_index_reads(monkeypatch)
    assert _hits(loaded, queries) == _hits(store, queries)
    assert calls  # files not verified: the bound is computed from the index itself


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([0.0, 0.0, 0.0], r"field 'flat_norm_max' holds 0 for block 0 of d~, below its norm .* in row 0"),
        ([1.0, 2.0], r"field 'flat_norm_max' must be null or, in a flat store, a list of 3 non-negative finite"),
        ([1.0, -2.0, 3.0], r"field 'flat_norm_max' must be null"),
        ("12", r"field 'flat_norm_max' must be null"),
    ],
)
def test_a_damaged_bound_is_refused_by_name(tmp_path: Path, value: Any, match: str) -> None:
    _flat_store().save(tmp_path / "s")
    config = _config(tmp_path / "s")
    config["flat_norm_max"] = value
    if isinstance(value, list) and len(value) == 3:  # its checksum written to match: the rows the load reads refuse it
        config["flat_norm_max_sha256"] = _format.flat_norm_digest(value, config["files"]["index.faiss"]["sha256"])
    _write_config(tmp_path / "s", config)
    with pytest.raises(StoreFormatError, match=match):
        KLStore.load(tmp_path / "s")


def _outlier_store(row: int) -> KLStore:
    """A flat store of 300 rows whose row ``row`` is far larger than the others."""
    g = random_gaussians(300, 8, seed=1)
    mean = g.mean + 3.0
    mean[row] *= 50.0
    store = KLStore()
    store.add(ids=IDS, gaussians=Gaussians(mean, g.var))
    return store


def test_a_low_bound_in_rows_the_load_does_not_check_is_refused(tmp_path: Path) -> None:
    sampled = _engines._sample_rows(300)
    row = next(i for i in range(300) if i not in set(sampled.tolist()))
    store = _outlier_store(row)
    path = store.save(tmp_path / "s")
    config = _config(path)
    saved = config["flat_norm_max"]
    index = _flat(store).index
    low = _engines.rewrite_block_norms(np.stack([index.reconstruct(int(i)) for i in sampled])).max(axis=0)
    assert (low < np.asarray(config["flat_norm_max"])).any()  # too low, but above every row the load reads
    config["flat_norm_max"] = low.tolist()
    _write_config(path, config)
    with pytest.raises(StoreFormatError, match=r"field 'flat_norm_max' .* does not match its checksum"):
        KLStore.load(path)
    loaded = KLStore.load(path, verify_checksums=False)  # not taken over unverified files: computed
    assert np.array_equal(_flat(loaded)._flat_norm_max(), _recomputed(store))
    assert config["flat_norm_max_sha256"] == _format.flat_norm_digest(saved, config["files"]["index.faiss"]["sha256"])


def test_a_bound_without_its_checksum_is_computed_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _outlier_store(5)
    path = store.save(tmp_path / "s")
    config = _config(path)
    config.pop("flat_norm_max_sha256", None)  # as the commit that wrote the bound alone did
    config["flat_norm_max"] = [0.0, 0.0, 0.0]
    _write_config(path, config)
    loaded = KLStore.load(path)
    calls = _count_index_reads(monkeypatch)
    queries = random_gaussians(4, 8, seed=8)
    assert _hits(loaded, queries) == _hits(store, queries)
    assert calls  # the bound is read from the index
    assert np.array_equal(_flat(loaded)._flat_norm_max(), _recomputed(store))


def test_a_compaction_computes_the_bound_again(tmp_path: Path) -> None:
    g = random_gaussians(400, 8, seed=1)
    store = KLStore()
    store.add(ids=IDS[:300] + [f"e{i}" for i in range(100)], gaussians=Gaussians(g.mean + 3.0, g.var))
    tight = _recomputed(store)
    store.add(ids=["outlier"], gaussians=Gaussians(g.mean[:1] * 1e4, g.var[:1]))
    assert (_flat(store)._flat_norm_max() > 100 * tight).any()
    store.delete(["outlier"])
    store.compact()
    assert np.array_equal(_flat(store)._flat_norm_max(), tight)
    path = store.save(tmp_path / "s")
    assert _config(path)["flat_norm_max"] == tight.tolist()
    assert np.array_equal(_flat(KLStore.load(path))._flat_norm_max(), tight)


def test_an_approximate_store_refuses_a_flat_bound(tmp_path: Path) -> None:
    g = random_gaussians(64, 8, seed=5)
    store = KLStore(index_type="hnsw")
    store.add(ids=IDS[:64], gaussians=g)
    store.save(tmp_path / "s")
    config = _config(tmp_path / "s")
    assert "flat_norm_max" not in config
    config["flat_norm_max"] = [1.0, 1.0, 1.0]
    _write_config(tmp_path / "s", config)
    with pytest.raises(StoreFormatError, match=r"field 'flat_norm_max' must be null or, in a flat store"):
        KLStore.load(tmp_path / "s")


@pytest.mark.parametrize("mmap", [False, True])
def test_the_loaded_bound_stays_exact_through_add_upsert_and_delete(tmp_path: Path, mmap: bool) -> None:
    store = _flat_store()
    store.save(tmp_path / "s")
    saved = np.asarray(_config(tmp_path / "s")["flat_norm_max"])
    loaded = KLStore.load(tmp_path / "s", mmap=mmap)
    queries = random_gaussians(6, 8, seed=6)
    far = Gaussians(np.full((1, 8), 40.0), np.full((1, 8), 0.05))  # every block of its d~ above the saved bound
    loaded.add(ids=["far"], gaussians=far)
    store.add(ids=["far"], gaussians=far)
    engine = _flat(loaded)
    assert engine._flat_norm is not None and engine._flat_norm[0] == id(engine.index)  # raised, not dropped
    raised = engine._flat_norm_max().copy()
    assert (raised > saved).all()
    assert np.array_equal(raised, _recomputed(loaded))  # exactly the index's
    assert _hits(loaded, queries) == _hits(store, queries)
    replacement = random_gaussians(2, 8, seed=7)
    for s in (loaded, store):
        s.add(ids=["d3", "d4"], gaussians=replacement)  # an existing id is replaced (upsert)
        s.delete(["far", "d10"])
    kept = _flat(loaded)._flat_norm_max().copy()
    assert (kept >= _recomputed(loaded)).all()  # an upper bound of every row still in the index
    assert _hits(loaded, queries) == _hits(store, queries)
    loaded.save(tmp_path / "t")
    assert np.array_equal(np.asarray(_config(tmp_path / "t")["flat_norm_max"]), kept)
    assert _hits(KLStore.load(tmp_path / "t"), queries) == _hits(store, queries)


# ---------------------------------------------------------------- 2. one model for every store that loads it
def _saved_stores(tmp_path: Path, count: int, seed: int = 3) -> tuple[Path, list[Path]]:
    """``count`` stores saved with one tiny encoder loaded from a folder (so its saved name loads)."""
    make_tiny_encoder(seed=seed).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    paths = []
    for i in range(count):
        store = KLStore(encoder=encoder)
        store.add(TEXTS[i % 3 :] + TEXTS[: i % 3], ids=[f"{i}-{j}" for j in range(3)])
        paths.append(store.save(tmp_path / f"s{i}"))
    return tmp_path / "enc", paths


def _counting_loader(monkeypatch: pytest.MonkeyPatch, pause: float = 0.0) -> list[tuple[str, Any]]:
    """Make ``load_model`` record its calls and load the folder it is given (torch)."""
    from kl_retrievers import pretrained

    calls: list[tuple[str, Any]] = []

    def loader(name: str, **kwargs: Any) -> Any:
        calls.append((name, kwargs.get("backend")))
        time.sleep(pause)  # a slow load: other threads arrive meanwhile
        return GaussianEncoder.from_pretrained(name)

    monkeypatch.setattr(pretrained, "load_model", loader)
    return calls


def test_stores_loaded_from_one_model_share_one_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc, paths = _saved_stores(tmp_path, 3)
    calls = _counting_loader(monkeypatch)
    stores = [KLStore.load(p) for p in paths]
    for store in stores:
        assert store.search("tea for breakfast", k=1)
    assert len(calls) == 1 and Path(calls[0][0]) == enc.resolve()
    assert stores[0].encoder is not None
    assert all(store.encoder is stores[0].encoder for store in stores)


def test_a_freed_model_is_not_kept_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, paths = _saved_stores(tmp_path, 2)
    calls = _counting_loader(monkeypatch)
    first = KLStore.load(paths[0])
    first.search("tea", k=1)
    model = weakref.ref(first.encoder)
    del first
    gc.collect()
    assert model() is None  # no cache holds it
    second = KLStore.load(paths[1])
    second.search("tea", k=1)
    assert len(calls) == 2  # loaded again


def test_concurrent_first_searches_load_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, paths = _saved_stores(tmp_path, 4)
    calls = _counting_loader(monkeypatch, pause=0.2)
    stores = [KLStore.load(p) for p in paths]
    errors: list[BaseException] = []

    def search(store: KLStore) -> None:
        try:
            store.search("a dog", k=2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(calls) == 1
    assert len({id(s.encoder) for s in stores}) == 1


def test_what_changes_the_model_keys_another_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.store._base import _shared_saved_model

    enc, _ = _saved_stores(tmp_path, 1)
    calls = _counting_loader(monkeypatch)
    name = str(enc.resolve())
    torch_model = _shared_saved_model(name, "torch", "w1")
    assert _shared_saved_model(name, "torch", "w1") is torch_model
    assert _shared_saved_model(name, None, "w1") is not torch_model  # another backend
    assert _shared_saved_model(name, "torch", "w2") is not torch_model  # other recorded weights
    make_tiny_encoder(seed=9).save_pretrained(enc)  # saved again in place
    again = _shared_saved_model(name, "torch", "w1")
    assert again is not torch_model
    assert len(calls) == 4


def test_a_failed_load_is_not_kept_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained
    from kl_retrievers.store._base import _shared_saved_model

    enc, _ = _saved_stores(tmp_path, 1)
    outcomes: list[Any] = [OSError("hub unreachable"), None]

    def flaky(name: str, **kwargs: Any) -> Any:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return GaussianEncoder.from_pretrained(name)

    monkeypatch.setattr(pretrained, "load_model", flaky)
    with pytest.raises(OSError, match="hub unreachable"):
        _shared_saved_model(str(enc), "torch")
    assert isinstance(_shared_saved_model(str(enc), "torch"), GaussianEncoder)
    assert outcomes == []


def test_hybrid_stores_share_the_model_they_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    paths = []
    for i in range(2):
        store = KLHybridStore(encoder)
        store.add(TEXTS, ids=["a", "b", "c"])
        paths.append(store.save(tmp_path / f"h{i}"))
    kl = KLStore(encoder=encoder)
    kl.add(TEXTS, ids=["a", "b", "c"])
    paths.append(kl.save(tmp_path / "kl"))
    calls = _counting_loader(monkeypatch)
    hybrids = [KLHybridStore.load(p) for p in paths[:2]]
    plain = KLStore.load(paths[2])
    for hybrid in hybrids:
        assert hybrid.search("tea for breakfast", k=1)[0].id == "b"
    assert plain.search("tea for breakfast", k=1)[0].id == "b"
    assert len(calls) == 1
    assert hybrids[0].encoder is hybrids[1].encoder is plain.encoder


def test_a_model_changed_through_one_store_is_not_handed_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    _, paths = _saved_stores(tmp_path, 4)
    calls = _counting_loader(monkeypatch)
    first = KLStore.load(paths[0])
    want = [(h.id, h.score) for h in first.search("tea for breakfast", k=3)]
    with torch.no_grad():
        for p in first.encoder.parameters():
            p.mul_(-3.0)  # edited in place (as a training step does)
    second = KLStore.load(paths[0])
    assert [(h.id, h.score) for h in second.search("tea for breakfast", k=3)] == want
    assert second.encoder is not first.encoder and len(calls) == 2
    third = KLStore.load(paths[1])
    third.search("tea", k=1)
    assert third.encoder is second.encoder and len(calls) == 2  # an unchanged model is still shared
    third.encoder.half()  # another dtype
    fourth = KLStore.load(paths[2])
    fourth.search("tea", k=1)
    assert fourth.encoder is not third.encoder and len(calls) == 3
    assert next(fourth.encoder.parameters()).dtype == torch.float32


def test_no_load_lock_is_kept_after_its_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import pretrained

    class Model:
        pass

    monkeypatch.setattr(pretrained, "load_model", lambda name, backend=None: Model())
    before = len(_base._SHARED_MODEL_LOADS)
    for i in range(200):
        _base._shared_saved_model(f"org/model-{i}", "torch", f"w{i}")
    gc.collect()
    assert len(_base._SHARED_MODEL_LOADS) == before
