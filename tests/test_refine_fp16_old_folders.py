"""``refine="fp16"`` folders saved by the release that kept float16 refine copies whatever ``M``.

That release stored inf copies where the reduced vectors' norm bound ``M`` exceeded float16's
largest value (65504). Such a folder now loads: its index is rebuilt from the (checksum-verified)
stored rows with one warning, and saving writes the fixed index; a folder whose float16 copies
are all finite loads as saved. The folders are built here as that release built them: with
``refine_codes`` answering the setting whatever ``M`` (the equivalent of the old build).
Also: the config mismatch messages quote the settings as written, the warning is logged when a
rebuild switches to float32 copies (after it succeeds, once per switch), float32 copies go back
to float16 when ``M`` falls, and HNSW + PQ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.store import KLStore, StoreFormatError, _engines

FP16_MAX = 65504.0
LOGGER = "kl_retrievers.store._engines"


@contextmanager
def _old_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Build as the previous release did: float16 refine copies whatever M."""
    with monkeypatch.context() as patch:
        patch.setattr(_engines.ApproxEngine, "refine_codes", lambda self: self.settings.refine)
        yield


def _small_variance_gaussians(n: int, dim: int = 4, seed: int = 0) -> Gaussians:
    """Valid Gaussians with variances about 1e-4: M is about 1e5, float16 copies overflow."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 1.0, (n, dim))
    var = np.full((n, dim), 1e-4) * np.exp(rng.normal(0.0, 0.3, (n, dim)))
    return Gaussians(mean, var)


def _equal_norm_gaussians(n: int = 300, var: float = 2e-5, seed: int = 0) -> Gaussians:
    """Means on a unit circle, one variance: every norm about sqrt(2) / var, M above 65504, each coordinate under it."""
    t = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, n)
    mean = np.zeros((n, 4))
    mean[:, 0], mean[:, 1] = np.cos(t), np.sin(t)
    return Gaussians(mean, np.full((n, 4), var))


def _refine_copies(store: KLStore) -> np.ndarray:
    faiss = _engines._faiss()
    ref = faiss.downcast_index(faiss.downcast_index(store._index).refine_index)
    return np.asarray(ref.reconstruct_n(0, ref.ntotal))


def _refine(store: Any) -> str | None:
    return _engines._index_structure(store._index)["refine"]


def _top_ids(store: KLStore, queries: Gaussians, k: int = 5) -> list[list[str]]:
    return [[h.id for h in row] for row in store.search_batch(queries, k=k)]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER]


def _fp32_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in _warnings(caplog) if m.startswith("refine='fp16': the reduced vectors' norm bound")]


OLD_SETTINGS: dict[str, dict[str, Any]] = {
    "ivf-sq8": {"index_type": "ivf", "nlist": 8, "nprobe": 2, "compression": "sq8", "refine": "fp16"},
    "hnsw-pq4": {"index_type": "hnsw", "compression": "pq", "pq_m": 5, "pq_nbits": 4, "refine": "fp16"},
}


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("name", sorted(OLD_SETTINGS))
def test_an_old_folder_with_inf_copies_is_rebuilt_at_load(
    name: str, mmap: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 400
    docs = _small_variance_gaussians(n, seed=1)
    ids = [f"d{i}" for i in range(n)]
    with _old_release(monkeypatch):
        old = KLStore(rescore_pool=20, rescore_factor=2, **OLD_SETTINGS[name])
        old.add(gaussians=docs, ids=ids, texts=[f"text {i}" for i in range(n)], metadatas=[{"i": i} for i in range(n)])
        old.delete(ids[::7])
        assert old.norm_bound is not None and old.norm_bound > FP16_MAX
        assert not np.isfinite(_refine_copies(old)).all()  # what that release saved
        old.save(tmp_path / "old")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = KLStore.load(tmp_path / "old", mmap=mmap)
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    for part in ("inf", "earlier release", "65504", "rebuilt", "saving the store writes the fixed index"):
        assert part in warned[0], part
    assert loaded.is_built and _refine(loaded) == "fp32" and np.isfinite(_refine_copies(loaded)).all()
    live = [i for i in range(n) if i % 7]
    assert len(loaded) == len(live)
    assert loaded.get_by_ids(["d1"])[0].text == "text 1" and loaded.get_by_ids(["d1"])[0].metadata == {"i": 1}
    queries = docs[live[:4]]
    exact = KLStore()
    exact.add(gaussians=docs[live], ids=[ids[i] for i in live])
    got = _top_ids(loaded, queries)
    assert [row[0] for row in got] == [ids[i] for i in live[:4]]
    assert [row[0] for row in _top_ids(exact, queries)] == [row[0] for row in got]
    loaded.save(tmp_path / "fixed")  # the fixed index is written; it loads without a word
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = KLStore.load(tmp_path / "fixed", mmap=mmap)
    assert _warnings(caplog) == []
    assert _refine(again) == "fp32" and _top_ids(again, queries) == got


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_an_old_folder_with_finite_copies_above_the_range_loads_as_saved(
    mmap: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = _equal_norm_gaussians()
    with _old_release(monkeypatch):
        old = KLStore(index_type="ivf", nlist=4, nprobe=2, compression="sq8", refine="fp16")
        old.add(gaussians=docs, ids=[f"c{i}" for i in range(300)])
        assert old.norm_bound is not None and old.norm_bound > FP16_MAX
        assert np.isfinite(_refine_copies(old)).all()
        before = _top_ids(old, docs[:3])
        old.save(tmp_path / "old")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = KLStore.load(tmp_path / "old", mmap=mmap)
    assert _warnings(caplog) == []
    assert _refine(loaded) == "fp16" and _top_ids(loaded, docs[:3]) == before
    # a new document whose float16 copy would overflow (far from the others' norm): float32 copies from then on
    loaded.add(gaussians=Gaussians(np.full((1, 4), 0.1), np.full((1, 4), 2e-3)), ids=["far"])
    assert _refine(loaded) == "fp32" and np.isfinite(_refine_copies(loaded)).all()
    assert len(_fp32_warnings(caplog)) == 1
    assert _top_ids(loaded, docs[:3], k=1) == [[r[0]] for r in before]


def test_an_old_store_with_an_encoder_keeps_its_encoder_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The rebuild at load keeps what the folder recorded (docs/ann.md's old recipe lost the encoder record)."""
    enc = make_tiny_encoder()
    with _old_release(monkeypatch):
        old = KLStore(enc, index_type="ivf", nlist=8, nprobe=2, compression="sq8", refine="fp16")
        old.add(gaussians=_small_variance_gaussians(300, dim=8), texts=[f"sun moon {i}" for i in range(300)])
        old.save(tmp_path / "old")
    record = json.loads((tmp_path / "old" / "config.json").read_text())["encoder"]
    loaded = KLStore.load(tmp_path / "old", encoder=enc)
    assert _refine(loaded) == "fp32"
    hits = loaded.search("sun moon", k=2)
    assert len(hits) == 2 and all((h.text or "").startswith("sun moon") for h in hits)
    loaded.save(tmp_path / "fixed")
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["encoder"] == record


def test_an_old_hybrid_folder_loads_and_saves_a_fixed_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """hybrid.json records the KL half's SHA-256: the half is fixed by loading the hybrid store and saving it."""
    docs = _small_variance_gaussians(300)
    texts = [f"sun moon water {i}" for i in range(300)]
    with _old_release(monkeypatch):
        old = KLHybridStore(index_type="ivf", nlist=8, nprobe=2, compression="sq8", refine="fp16")
        old.add(texts, gaussians=docs, ids=[f"e{i}" for i in range(300)])
        old.save(tmp_path / "old")
    loaded = KLHybridStore.load(tmp_path / "old")
    assert _refine(loaded._kl) == "fp32"
    hits = loaded.search("sun moon", query_gaussians=docs[:1], k=2)
    assert len(hits) == 2
    loaded.save(tmp_path / "fixed")
    again = KLHybridStore.load(tmp_path / "fixed")
    assert _refine(again._kl) == "fp32"
    assert [h.id for h in again.search("sun moon", query_gaussians=docs[:1], k=2)] == [h.id for h in hits]


def test_an_old_langchain_folder_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    enc = make_tiny_encoder()
    with _old_release(monkeypatch):
        store = KLStore(enc, index_type="ivf", nlist=8, nprobe=2, compression="sq8", refine="fp16")
        store.add(gaussians=_small_variance_gaussians(300, dim=8), texts=[f"sun moon {i}" for i in range(300)])
        KLVectorStore(KLEmbeddings(enc), store=store).save_local(tmp_path / "old")
    vs = KLVectorStore.load_local(tmp_path / "old", KLEmbeddings(enc))
    found = vs.similarity_search("sun moon", k=2)
    assert len(found) == 2 and all(d.page_content.startswith("sun moon") for d in found)
    vs.save_local(tmp_path / "fixed")
    again = KLVectorStore.load_local(tmp_path / "fixed", KLEmbeddings(enc))
    assert [d.page_content for d in again.similarity_search("sun moon", k=2)] == [d.page_content for d in found]


def _edit_config(folder: Path, **fields: Any) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in fields.items():
        if key.startswith("p_"):
            cfg["index_params"][key[2:]] = value
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


def test_a_refine_mismatch_quotes_the_config_as_written(tmp_path: Path) -> None:
    """A large-M store whose config says 'fp16' was quoted as 'fp32'."""
    store = KLStore(index_type="ivf", nlist=8, nprobe=2, compression="sq8", refine="sq8")
    store.add(gaussians=_small_variance_gaussians(300))
    assert store.norm_bound is not None and store.norm_bound > FP16_MAX
    store.save(tmp_path / "s")
    _edit_config(tmp_path / "s", p_refine="fp16")
    with pytest.raises(StoreFormatError) as err:
        KLStore.load(tmp_path / "s")
    message = str(err.value)
    assert "field 'index_params.refine' is 'fp16', but index.faiss holds 'sq8'" in message
    assert "norm_bound" in message and "65504" in message and "'fp32'" in message


def test_float32_copies_with_an_edited_norm_bound_blame_the_norm_bound(tmp_path: Path) -> None:
    store = KLStore(index_type="ivf", nlist=8, nprobe=2, compression="sq8", refine="fp16")
    store.add(gaussians=_small_variance_gaussians(300))
    assert _refine(store) == "fp32"
    store.save(tmp_path / "s")
    _edit_config(tmp_path / "s", norm_bound=60000.0)
    with pytest.raises(StoreFormatError) as err:
        KLStore.load(tmp_path / "s")
    message = str(err.value)
    assert "field 'norm_bound' is 60000.0" in message and "float32 refine copies" in message and "65504" in message
    assert "index_params.refine" not in message


def _in_range_store() -> tuple[KLStore, Gaussians]:
    rng = np.random.default_rng(3)
    docs = Gaussians(rng.normal(size=(300, 4)), np.exp(rng.normal(0.0, 0.3, (300, 4))))
    store = KLStore(index_type="hnsw", compression="sq8", refine="fp16", rescore_pool=20, rescore_factor=2)
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(300)])
    assert store.norm_bound is not None and store.norm_bound < FP16_MAX and _refine(store) == "fp16"
    return store, docs


TINY = Gaussians(np.full((1, 4), 0.5), np.full((1, 4), 1e-5))  # its norm pushes M past 65504


def test_each_switch_to_float32_copies_warns_and_back_to_float16(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, docs = _in_range_store()
    exact = KLStore()
    exact.add(gaussians=docs, ids=[f"d{i}" for i in range(300)])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=TINY, ids=["tiny"])
        assert (store.norm_bound or 0.0) > FP16_MAX and _refine(store) == "fp32"
        assert len(_fp32_warnings(caplog)) == 1 and "65504" in _fp32_warnings(caplog)[0]
        store.rebuild()  # float32 again: no switch, no warning
        assert _refine(store) == "fp32" and len(_fp32_warnings(caplog)) == 1
        # float32 -> float16: deleting the outlier lets M fall back within range at the compaction
        store.delete(["tiny"])
        store.compact()
        assert (store.norm_bound or 0.0) < FP16_MAX and _refine(store) == "fp16"
        assert np.isfinite(_refine_copies(store)).all()
        assert _top_ids(store, docs[:3], k=10) == _top_ids(exact, docs[:3], k=10)
        store.save(tmp_path / "s")
        assert _refine(KLStore.load(tmp_path / "s", mmap=True)) == "fp16"
        store.add(gaussians=TINY, ids=["tiny2"])  # crossing again warns again
        assert _refine(store) == "fp32" and len(_fp32_warnings(caplog)) == 2


def test_a_failed_rebuild_does_not_warn_about_copies_it_never_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = _in_range_store()

    def fail(self: Any, index: Any, live: Any = None) -> float:
        raise RuntimeError("FAISS failed")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with monkeypatch.context() as patch:
            patch.setattr(_engines.ApproxEngine, "_add_all", fail)
            with pytest.raises(RuntimeError, match="FAISS failed"):
                store.add(gaussians=TINY, ids=["tiny"])
        assert _fp32_warnings(caplog) == [] and _refine(store) == "fp16"
        store.add(gaussians=TINY, ids=["tiny"])
    assert _refine(store) == "fp32" and len(_fp32_warnings(caplog)) == 1


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_hnsw_pq_fp16_above_the_range_keeps_float32_copies(mmap: bool, tmp_path: Path) -> None:
    docs = _small_variance_gaussians(400, seed=1)
    store = KLStore(index_type="hnsw", compression="pq", pq_m=5, pq_nbits=4, refine="fp16", rescore_pool=20)
    store.add(gaussians=docs, ids=[f"h{i}" for i in range(400)])
    assert store.norm_bound is not None and store.norm_bound > FP16_MAX
    assert _refine(store) == "fp32" and np.isfinite(_refine_copies(store)).all()
    before = _top_ids(store, docs[:4])
    assert [row[0] for row in before] == [f"h{i}" for i in range(4)]
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s", mmap=mmap)
    assert _refine(loaded) == "fp32" and _top_ids(loaded, docs[:4]) == before
