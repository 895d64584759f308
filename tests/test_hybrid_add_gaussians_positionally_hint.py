"""``KLHybridStore.add(g)`` with a ``Gaussians`` where the texts go says to pass it as ``gaussians=``, as KLStore.

It said ``texts must be a sequence of strings ... got Gaussians``, without the keyword hint.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bm25s")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

HINT = r"add's first positional argument is texts .*got a Gaussians: pass it by keyword, gaussians=g"


def test_hybrid_add_says_to_pass_gaussians_by_keyword() -> None:
    store = KLHybridStore(fusion="rrf", stemmer=None)
    g = Gaussians(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(TypeError, match=HINT):
        store.add(g)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=HINT):
        store.upsert(g, ids=["a", "b"])  # type: ignore[arg-type]
    assert len(store) == 0
    assert store.add(["a b", "c d"], gaussians=g, ids=["a", "b"]) == ["a", "b"]  # what the hint says works
