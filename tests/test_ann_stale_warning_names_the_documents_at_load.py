"""The stale-index warning of a folder saved before ``index_growth`` names the documents it held at load.

Such a folder counts the documents its index was built over from its size at load, but at least the fewest a build
trains on (``nlist`` for IVF), so that a store left with fewer does not warn at its first add. The warning then named
that fewest as the documents the store was loaded with, and the ratio read as if it held them. It now names the
documents at load and the rows added since, and the fewest only as what the count uses instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore, StoreFormatError

pytest.importorskip("faiss")


def _batch(n: int, seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(
        rng.normal(size=(n, 8)).astype(np.float32), np.exp(rng.normal(0.0, 0.3, (n, 8))).astype(np.float32)
    )


def _stale(store: KLStore, batch: Gaussians, tag: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.add(gaussians=batch, ids=[f"{tag}{j}" for j in range(len(batch))])
    return [str(w.message) for w in caught if "index's k-means was trained " in str(w.message)]


def _old_folder(tmp_path: Path, keep: int) -> Path:
    """An IVF store (nlist=4) built over 32 documents, ``keep`` of them left, saved as before ``index_growth``."""
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=_batch(32, 0), ids=[f"a{i}" for i in range(32)])
    store.delete([f"a{i}" for i in range(keep, 32)])
    assert store.is_built and len(store) == keep
    store.save(tmp_path / "s")
    cfg = tmp_path / "s" / "config.json"
    config = json.loads(cfg.read_text())
    del config["index_growth"]
    cfg.write_text(json.dumps(config))
    return tmp_path / "s"


def test_a_load_below_what_a_build_trains_on_names_the_documents_at_load_and_the_fewest_as_the_reason(
    tmp_path: Path,
) -> None:
    loaded = KLStore.load(_old_folder(tmp_path, keep=2))  # counted as 4 (nlist): warns past 4 + 12 written
    built = _batch(32, 0)  # the documents it was built over: under its bound M
    assert _stale(loaded, built[:12], "b") == []
    (message,) = _stale(loaded, built[12:13], "c")
    assert (
        "trained before the store was loaded with 2 documents, and 13 have been added or upserted since: 4.2 times "
        "as many in all, more than 4, counting the 2 at the load as 4, the fewest documents a build of this ivf "
        "index trains on (it now holds 15)."
    ) in message
    assert "loaded with 4 documents" not in message


def test_a_load_at_or_above_what_a_build_trains_on_names_its_count_alone(tmp_path: Path) -> None:
    loaded = KLStore.load(_old_folder(tmp_path, keep=4))  # 4 = nlist: nothing counted instead
    built = _batch(32, 0)
    assert _stale(loaded, built[:12], "b") == []
    (message,) = _stale(loaded, built[12:13], "c")
    assert "loaded with 4 documents, and 13 have been added or upserted since: 4.2 times as many in all, more " in (
        message
    )
    assert "more than 4 (it now holds 17)." in message and "counting" not in message


def test_a_rebuild_counts_its_own_documents_again(tmp_path: Path) -> None:
    loaded = KLStore.load(_old_folder(tmp_path, keep=2))
    built = _batch(32, 0)
    assert _stale(loaded, built[:6], "b") == []
    loaded.rebuild()  # over the 8 live documents now
    assert _stale(loaded, built[6:30], "c") == []  # 8 + 24 = 4 x 8
    (message,) = _stale(loaded, built[30:31], "d")
    assert "when the store held 8 documents, and 25 have been added or upserted since" in message
    assert "counting" not in message


def test_a_save_keeps_the_documents_at_load_so_the_reloaded_store_warns_as_before(tmp_path: Path) -> None:
    built = _batch(32, 0)
    loaded = KLStore.load(_old_folder(tmp_path, keep=2))
    assert _stale(loaded, built[:12], "b") == []
    (expected,) = _stale(loaded, built[12:13], "c")  # the warning without a save between
    loaded = KLStore.load(_old_folder(tmp_path / "other", keep=2))
    loaded.save(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["index_growth"] == {"built_rows": 4, "written_rows": 0, "built_at_load": True, "rows_at_load": 2}
    again = KLStore.load(tmp_path / "again")
    assert _stale(again, built[:12], "b") == []
    (message,) = _stale(again, built[12:13], "c")
    assert message == expected
    assert "loaded with 2 documents" in message and "loaded with 4 documents" not in message


@pytest.mark.parametrize(
    ("rows_at_load", "built_at_load"),
    [(-1, True), (4, True), (2.0, True), (True, True), ("2", True), (2, False)],
)
def test_a_damaged_rows_at_load_is_refused_naming_the_field(
    tmp_path: Path, rows_at_load: object, built_at_load: bool
) -> None:
    KLStore.load(_old_folder(tmp_path, keep=2)).save(tmp_path / "again")
    cfg = tmp_path / "again" / "config.json"
    config = json.loads(cfg.read_text())
    config["index_growth"].update(rows_at_load=rows_at_load, built_at_load=built_at_load)
    cfg.write_text(json.dumps(config))
    with pytest.raises(StoreFormatError, match=r"field 'index_growth\.rows_at_load' must be null, or with") as err:
        KLStore.load(tmp_path / "again")
    assert repr(rows_at_load) in str(err.value)


def test_a_null_rows_at_load_reads_as_none_named(tmp_path: Path) -> None:
    KLStore.load(_old_folder(tmp_path, keep=2)).save(tmp_path / "again")
    cfg = tmp_path / "again" / "config.json"
    config = json.loads(cfg.read_text())
    config["index_growth"]["rows_at_load"] = None
    cfg.write_text(json.dumps(config))
    again = KLStore.load(tmp_path / "again")  # counted as 4, as saved; no count at load named
    built = _batch(32, 0)
    assert _stale(again, built[:12], "b") == []
    (message,) = _stale(again, built[12:13], "c")
    assert "loaded with 4 documents" in message and "counting" not in message
