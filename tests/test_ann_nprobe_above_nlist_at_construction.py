"""``nprobe`` above an IVF store's ``nlist`` acts as ``nlist`` (FAISS clamps it). Giving one to the constructor warns
as assigning one does (tests/test_approx_store_tuning_messages.py), at the user's line; it used to be silent. The
default ``nprobe`` (32) exceeds a small ``nlist`` and does not warn, nor does a loaded store that has it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import KLStore

pytest.importorskip("faiss")


def _nprobe_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "exceeds this store's nlist" in str(w.message)]


def test_an_explicit_nprobe_above_nlist_warns_at_construction_as_an_assignment_does() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = KLStore(index_type="ivf", nlist=16, nprobe=5000)  # the user's line
        at_construction = list(caught)
        caught.clear()
        other = KLStore(index_type="ivf", nlist=16)
        other.nprobe = 5000
    (message,) = _nprobe_warnings(at_construction)
    assert at_construction[0].filename == __file__ and at_construction[0].category is UserWarning
    assert _nprobe_warnings(caught) == [message]  # the same words as the assignment's
    assert message.startswith("nprobe=5000 exceeds this store's nlist=16: ") and "acts as nprobe=16" in message
    assert store.nprobe == 5000  # accepted, as FAISS takes it


@pytest.mark.parametrize(
    "kwargs",
    [
        {"index_type": "ivf", "nlist": 16},  # the default nprobe, above nlist
        {"index_type": "ivf", "nlist": 16, "nprobe": 16},  # every list, said as such
        {"index_type": "hnsw", "nlist": 16, "nprobe": 5000},  # not read by HNSW
    ],
)
def test_no_warning_at_construction_otherwise(kwargs: dict[str, object]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KLStore(**kwargs)  # type: ignore[arg-type]
    assert not _nprobe_warnings(caught)


def test_a_loaded_store_with_the_default_nprobe_above_nlist_does_not_warn(tmp_path: Path) -> None:
    store = KLStore(index_type="ivf", nlist=4)
    assert store.nprobe > store.nlist  # the default nprobe
    rng = np.random.default_rng(0)
    store.add(gaussians=Gaussians(rng.normal(size=(40, 8)), np.ones((40, 8))), ids=[f"d{i}" for i in range(40)])
    store.save(tmp_path / "s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        KLStore.load(tmp_path / "s")
    assert not _nprobe_warnings(caught)
