"""``index_growth.built_rows`` in a saved approximate store's ``config.json``: its bounds at load.

The stale-index warning compares the rows written since the index's last build with the live documents it was built
over (``built_rows``). A hand-edited 0 (or a folder saved before the field, counted from its size at load, with
fewer live documents than the index was trained on) made it fire at the first add. A build trains on at least the
fewest rows FAISS can train it on (``nlist`` for IVF, ``2^pq_nbits`` for PQ), so a recorded count below that is
refused at load, naming the field, and the count at load of an older folder is at least that. A count above the
store's documents is valid (documents deleted since the build): it is kept.
"""

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


def _batch(n: int, seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        rng.normal(size=(n, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (n, 8))).astype(np.float32)
    )


def _stale_warnings(store: KLStore, batch: Gaussians, tag: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.add(gaussians=batch, ids=[f"{tag}{j}" for j in range(len(batch))])
    return [str(w.message) for w in caught if "index's k-means was trained " in str(w.message)]


def _saved(tmp_path: Path, keep: int = 32) -> Path:
    """An IVF store (nlist=4) built over 32 documents, ``keep`` of them left, saved."""
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=_batch(32, 0), ids=[f"a{i}" for i in range(32)])
    assert store.is_built
    store.delete([f"a{i}" for i in range(keep, 32)])
    assert store.is_built and len(store) == keep
    store.save(tmp_path / "s")
    return tmp_path / "s"


def _edit_growth(folder: Path, growth: object) -> None:
    cfg = folder / "config.json"
    config = json.loads(cfg.read_text())
    if growth is None:
        del config["index_growth"]  # as saved before the field
    else:
        config["index_growth"] = growth
    cfg.write_text(json.dumps(config))


@pytest.mark.parametrize("built", [0, 3])  # below nlist=4: no build trains the lists on fewer
def test_built_rows_below_what_a_build_trains_on_is_refused_naming_the_field(tmp_path: Path, built: int) -> None:
    folder = _saved(tmp_path)
    _edit_growth(folder, {"built_rows": built, "written_rows": 0, "built_at_load": False})
    with pytest.raises(StoreFormatError, match=rf"field 'index_growth\.built_rows' is {built}, but a built ivf index"):
        KLStore.load(folder)


def test_built_rows_above_the_stores_documents_is_kept(tmp_path: Path) -> None:
    folder = _saved(tmp_path, keep=8)  # built over 32, 8 left
    config = json.loads((folder / "config.json").read_text())
    assert config["index_growth"] == {"built_rows": 32, "written_rows": 0, "built_at_load": False}
    loaded, built = KLStore.load(folder), _batch(32, 0)  # the documents it was built over: under its bound M
    for i in range(3):
        assert _stale_warnings(loaded, built, f"b{i}-") == []  # up to 32 + 96 = 4 x 32
    (message,) = _stale_warnings(loaded, built[:1], "c")
    assert "when the store held 32 documents, and 97 have been added or upserted since" in message


def test_a_folder_saved_before_the_field_counts_at_least_what_a_build_trains_on(tmp_path: Path) -> None:
    folder = _saved(tmp_path, keep=2)  # 2 live documents: counted as 2, the first add of 7 warned
    _edit_growth(folder, None)
    loaded = KLStore.load(folder)
    engine = loaded._engine
    assert isinstance(engine, ApproxEngine) and engine._built_rows == 4 and engine._built_at_load
    built = _batch(32, 0)  # the documents it was built over: under its bound M
    assert _stale_warnings(loaded, built[:7], "b") == []  # 4 + 7 <= 4 x 4
    assert len(_stale_warnings(loaded, built[7:13], "c")) == 1  # 4 + 13 > 16
