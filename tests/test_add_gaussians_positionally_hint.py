"""``store.add(g)`` with a ``Gaussians`` where the texts go says to pass it as ``gaussians=`` (a keyword).

It said ``texts[0] must be a str (or None with gaussians); got Gaussians``, which did not say what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import Gaussians, KLStore

HINT = r"add's first positional argument is texts .*got a Gaussians: pass it by keyword, gaussians=g"


def _two() -> Gaussians:
    return Gaussians(np.zeros((2, 3)), np.ones((2, 3)))


def test_klstore_add_says_to_pass_gaussians_by_keyword() -> None:
    store = KLStore()
    with pytest.raises(TypeError, match=HINT):
        store.add(_two())  # type: ignore[arg-type]
    assert len(store) == 0
    assert len(store.add(gaussians=_two())) == 2  # what the hint says works


def test_milvus_store_says_the_same(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "g.db"), collection_name="c", index_type="flat")
    try:
        with pytest.raises(TypeError, match=HINT):
            store.add(_two())  # type: ignore[arg-type]
        assert len(store) == 0
    finally:
        store.close()
