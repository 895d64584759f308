"""The hybrid store's order of exactly tied hits: fused score, then ``-KL``, then the later added first.

KLStore ranks exactly tied ``-KL`` scores the later added first (``FaissEngine.tie_rank``); the hybrid's
fused order breaks a tie on both the fused score and ``-KL`` the same way, whichever list (dense or BM25)
brought the tied documents in. Before, such ties kept the candidates' order, and the BM25 list ordered its
ties the earlier added first: two duplicate documents that only BM25 found came back earlier first (the BM25
list now ranks its ties the later added first too: tests/test_hybrid_list_tie_order.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore, _order

pytest.importorskip("bm25s")


def _g(*means: float) -> Gaussians:
    m = np.array([[x, 0.0] for x in means])
    return Gaussians(m, np.ones_like(m))


def _store(**kw: object) -> KLHybridStore:
    """Z1 and Z2 near the query (no query word); X and Y: one text, one Gaussian, far from it; X added first."""
    store = KLHybridStore(**kw)  # type: ignore[arg-type]
    store.add(
        ["plum fig", "pear fig", "kiwi grape", "kiwi grape", "apple"],
        gaussians=_g(0.0, 0.1, 5.0, 5.0, 9.0),
        ids=["z1", "z2", "x", "y", "w"],
    )
    return store


@pytest.mark.parametrize("normalization", ["minmax", "zscore"])
def test_duplicates_only_bm25_found_rank_the_later_added_first(normalization: str) -> None:
    """X and Y tie on every score; only the BM25 list holds them (the dense list is 2 deep): Y, the later, first."""
    store = _store(fusion="convex", weight=0.2, normalization=normalization, candidates=2)
    hits = store.search("kiwi", k=2, query_gaussians=_g(0.0))
    cands = store.candidates(["kiwi"], query_gaussians=_g(0.0), depth=2)[0]
    assert cands.ids == ["z1", "z2", "y", "x"]  # the BM25 list's order: ties the later added first, as the dense list
    assert {h.id for h in hits} == {"x", "y"}
    assert hits[0].score == hits[1].score and hits[0].neg_kl == hits[1].neg_kl and hits[0].bm25 == hits[1].bm25
    assert [h.id for h in hits] == ["y", "x"]
    assert [h.id for h in store.kl.search(_g(5.0), k=2)] == ["y", "x"]  # as KLStore ranks them


@pytest.mark.parametrize("normalization", ["minmax", "zscore"])
def test_the_fused_order_reranks_duplicates_the_candidates_bring_earlier_first(
    normalization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, with the candidates in x, y order (the BM25 list's ties as before 2026-12-07, earlier added
    first): the fused tie-break alone puts Y, the later added, first (the case above now gets y, x candidates)."""
    from kl_retrievers import hybrid, runs

    def earlier_first(scores: np.ndarray, k: int, tie_rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return runs.top_k(scores, k, None if tie_rank is None else -tie_rank)

    monkeypatch.setattr(hybrid, "top_k", earlier_first)  # the BM25 list's only top_k
    store = _store(fusion="convex", weight=0.2, normalization=normalization, candidates=2)
    assert store.candidates(["kiwi"], query_gaussians=_g(0.0), depth=2)[0].ids == ["z1", "z2", "x", "y"]
    hits = store.search("kiwi", k=2, query_gaussians=_g(0.0))
    assert hits[0].score == hits[1].score and hits[0].neg_kl == hits[1].neg_kl and hits[0].bm25 == hits[1].bm25
    assert [h.id for h in hits] == ["y", "x"]


@pytest.mark.parametrize("fusion", ["rrf", "convex", "adaptive"])
def test_duplicates_in_both_lists_rank_the_later_added_first(fusion: str) -> None:
    """Duplicates found by both lists: the later added first in every fusion mode, as in the KL half."""
    store = KLHybridStore(fusion=fusion)  # type: ignore[arg-type]
    store.add(["kiwi grape", "kiwi grape", "apple"], gaussians=_g(1.0, 1.0, 3.0), ids=["x", "y", "w"])
    hits = store.search("kiwi", k=3, query_gaussians=_g(0.0))
    assert [h.id for h in hits][:2] == ["y", "x"]
    assert [h.id for h in store.kl.search(_g(0.0), k=2)] == ["y", "x"]


def test_the_order_reads_rows_only_for_candidates_tied_on_both_scores() -> None:
    """Fused score first, then -KL; rows decide only what both leave tied, an id without a row going last."""
    scores, neg = np.array([1.0, 1.0, 1.0, 2.0]), np.array([-1.0, -1.0, -0.5, -3.0])
    row = {"a": 0, "b": 1, "c": 2, "d": 3}
    assert _order(scores, neg, ["a", "b", "c", "d"], row).tolist() == [3, 2, 1, 0]
    assert _order(scores, neg).tolist() == [3, 2, 0, 1]  # without rows: the candidates' order
    assert _order(scores, neg, ["a", "gone", "c", "d"], row).tolist() == [3, 2, 0, 1]
    untied = np.array([4.0, 3.0, 2.0, 1.0])
    assert _order(untied, neg, ["a", "b", "c", "d"], {}).tolist() == [0, 1, 2, 3]
