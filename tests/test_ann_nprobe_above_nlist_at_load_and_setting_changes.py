"""An ``nprobe`` above an IVF store's ``nlist`` (other than the default) warns once where it comes in: at
:meth:`KLStore.load` of a store saved with it (never at the searches after), and where ``nlist`` or
``index_type`` is assigned under it (those used to be silent). The constructor and ``nprobe`` assignments:
tests/test_ann_nprobe_above_nlist_at_construction.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

pytest.importorskip("faiss")


def _nprobe_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if "exceeds this store's nlist" in str(w.message)]


def test_a_loaded_store_warns_once_at_load_and_not_at_its_searches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = Gaussians(rng.normal(size=(40, 8)), np.ones((40, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = KLStore(index_type="ivf", nlist=4, nprobe=5000)
    store.add(gaussians=docs, ids=[f"d{i}" for i in range(40)])
    store.save(tmp_path / "s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = KLStore.load(tmp_path / "s")  # the user's line
        at_load = _nprobe_warnings(caught)
        caught.clear()
        for _ in range(3):
            loaded.search_batch(docs[:2], k=3)
            loaded.search(docs[:1], k=3)
    (warned,) = at_load
    assert str(warned.message).startswith("nprobe=5000 exceeds this store's nlist=4: ")
    assert warned.filename == __file__
    assert not _nprobe_warnings(caught)


@pytest.mark.parametrize(
    ("kwargs", "name", "value", "nlist"),
    [
        ({"index_type": "ivf", "nprobe": 64}, "nlist", 16, 16),
        ({"index_type": "hnsw", "nlist": 16, "nprobe": 5000}, "index_type", "ivf", 16),
    ],
)
def test_assigning_nlist_or_index_type_checks_the_nprobe_on_hand(
    kwargs: dict[str, object], name: str, value: object, nlist: int
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = KLStore(**kwargs)  # type: ignore[arg-type]
        assert not _nprobe_warnings(caught)
        setattr(store, name, value)  # the user's line
    (warned,) = _nprobe_warnings(caught)
    assert str(warned.message).startswith(f"nprobe={store.nprobe} exceeds this store's nlist={nlist}: ")
    assert warned.filename == __file__


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [
        ({"index_type": "ivf"}, "nlist", 16),  # the default nprobe, as at construction
        ({"index_type": "ivf", "nprobe": 64}, "nlist", 64),  # every list
        ({"index_type": "ivf", "nlist": 16, "nprobe": 5000}, "index_type", "hnsw"),  # not read by HNSW
        ({"index_type": "ivf", "nlist": 16, "nprobe": 5000}, "nlist", 16),  # unchanged: said at construction
    ],
)
def test_no_warning_where_the_nprobe_fits_or_is_not_read(kwargs: dict[str, object], name: str, value: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = KLStore(**kwargs)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setattr(store, name, value)
    assert not _nprobe_warnings(caught)
