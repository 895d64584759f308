"""Both hybrid lists rank exactly tied scores the same way: the later added (higher row) first.

The dense list (``KLStore``, ``FaissEngine.tie_rank``) ranks tied ``-KL`` scores the later added first.
The BM25 list used to rank tied BM25 scores the earlier added first, so two duplicate documents got
opposite ranks in the two lists, and RRF, which fuses ranks, put whichever the better-ranked list
preferred first: identical texts came back in an order that depended on the query.
"""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore

pytest.importorskip("bm25s")


def _g(*means: float) -> Gaussians:
    m = np.array([[x, 0.0] for x in means])
    return Gaussians(m, np.ones_like(m))


def _store() -> KLHybridStore:
    """X and Y: one text, one Gaussian (X added first); A and B nearer the query, without its word."""
    store = KLHybridStore(fusion="rrf")
    store.add(
        ["plum fig", "pear fig", "kiwi grape", "kiwi grape", "apple"],
        gaussians=_g(0.0, 0.1, 2.0, 2.0, 9.0),
        ids=["a", "b", "x", "y", "w"],
    )
    return store


def test_duplicates_get_one_order_in_both_lists() -> None:
    """Y (the later added) before X in the dense list and in the BM25 list alike."""
    cands = _store().candidates(["kiwi"], query_gaussians=_g(0.0))[0]
    rank = {doc_id: (int(d), int(b)) for doc_id, d, b in zip(cands.ids, cands.dense_rank, cands.bm25_rank, strict=True)}
    assert rank["y"][0] < rank["x"][0]  # the dense list: the later added first
    assert rank["y"][1] < rank["x"][1]  # the BM25 list: the same (before: the earlier added first)


def test_rrf_ranks_duplicates_the_later_added_first_when_bm25_ranks_them_higher() -> None:
    """Duplicates at BM25 ranks 1-2 and dense ranks 3-4: RRF keeps the later added first, as the dense list does.

    Before, the BM25 list's opposite order won (it ranks them higher, and RRF's terms shrink with the rank):
    X came first in the fused list but second in the dense one.
    """
    store = _store()
    hits = store.search("kiwi", k=5, query_gaussians=_g(0.0))
    ids = [h.id for h in hits]
    assert ids.index("y") < ids.index("x")
    by_id = {h.id: h for h in hits}
    assert (by_id["y"].dense_rank, by_id["y"].bm25_rank) == (3, 1)
    assert (by_id["x"].dense_rank, by_id["x"].bm25_rank) == (4, 2)
    assert [h.id for h in store.kl.search(_g(0.0), k=4)][2:] == ["y", "x"]  # as KLStore ranks them
