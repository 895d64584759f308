"""The stale-index warning's counts (the live documents at the index's last build and the rows written since) are
saved in ``config.json`` (``index_growth``), so a saved and loaded store warns at the same write as the store would
have without the save. They were not saved: a load counted from its size, and forgot the writes before it (and the
build size the warning compares with). A folder saved without them loads as before (counted from its size at load:
tests/test_approx_store_tuning_messages.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, StoreFormatError
from kl_retrievers.store._engines import ApproxEngine

pytest.importorskip("faiss")


def _batch(seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        rng.normal(size=(32, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (32, 8))).astype(np.float32)
    )


def _stale_at(store: KLStore, batch: Gaussians, adds: int, tag: str) -> list[str]:
    """Add ``batch`` (norms under the index's bound: no rebuild) ``adds`` times; each add's stale warning ("": none)."""
    out = []
    for i in range(adds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store.add(gaussians=batch, ids=[f"{tag}{i}-{j}" for j in range(len(batch))])
        out.append(" ".join(str(w.message) for w in caught if "index's k-means was trained " in str(w.message)))
    return out


def _built(tmp_path: Path, grown: int) -> tuple[KLStore, KLStore, Gaussians]:
    """An IVF store built over 32 documents and grown by ``grown`` adds of 32, and its saved and loaded copy."""
    batch = _batch(0)
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=batch, ids=[f"a{i}" for i in range(32)])  # built over these 32
    assert store.is_built
    _stale_at(store, batch, grown, "b")
    store.save(tmp_path / "s")
    return store, KLStore.load(tmp_path / "s"), batch


@pytest.mark.parametrize("grown", [2, 5])  # before the warning; past it (warned once already)
def test_a_loaded_store_warns_at_the_same_write_as_without_the_save(tmp_path: Path, grown: int) -> None:
    store, loaded, batch = _built(tmp_path, grown)
    want = _stale_at(store, batch, 4, "c")
    got = _stale_at(loaded, batch, 4, "c")
    assert got == want
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["index_growth"] == {"built_rows": 32, "written_rows": 32 * grown, "built_at_load": False}
    if grown == 2:  # 32 + 64 + 32 x 2 = 160 > 4 x 32: the second add warns, naming the build's 32 documents
        assert [bool(w) for w in got] == [False, True, False, False]
        assert "when the store held 32 documents, and 128 have been added or upserted since" in got[1]
    else:
        assert got == [""] * 4


def test_a_rebuild_after_the_load_counts_from_the_new_build(tmp_path: Path) -> None:
    _, loaded, batch = _built(tmp_path, 5)
    engine = loaded._engine
    assert isinstance(engine, ApproxEngine) and engine._warned_stale  # warned before the save: not again
    loaded.rebuild()  # over 192 documents: the warning armed again
    assert not any(_stale_at(loaded, batch, 18, "c"))  # 192 + 576 = 4 x 192
    assert all(_stale_at(loaded, batch, 1, "d"))
    loaded.save(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["index_growth"] == {"built_rows": 192, "written_rows": 608, "built_at_load": False}


def test_an_unbuilt_or_flat_store_saves_no_counts(tmp_path: Path) -> None:
    batch = _batch(1)
    for name, store in (("flat", KLStore()), ("unbuilt", KLStore(index_type="ivf", nlist=64))):
        store.add(gaussians=batch, ids=[f"a{i}" for i in range(32)])
        store.save(tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text()).get("index_growth") is None
        KLStore.load(tmp_path / name)


@pytest.mark.parametrize(
    "growth",
    [
        {"built_rows": -1, "written_rows": 0, "built_at_load": False},
        {"built_rows": 32, "written_rows": 1.5, "built_at_load": False},
        {"built_rows": 32, "written_rows": 0, "built_at_load": "no"},
        {"built_rows": 32, "written_rows": 0},
        [32, 0, False],
    ],
)
def test_a_damaged_index_growth_is_refused_naming_the_field(tmp_path: Path, growth: object) -> None:
    _built(tmp_path, 1)
    cfg = tmp_path / "s" / "config.json"
    config = json.loads(cfg.read_text())
    config["index_growth"] = growth
    cfg.write_text(json.dumps(config))
    with pytest.raises(
        StoreFormatError, match="field 'index_growth' must be null or an object of non-negative integers"
    ):
        KLStore.load(tmp_path / "s")
