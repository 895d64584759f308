"""KLHybridStore.search's own cost: no signals where the fusion mode reads none, one partition for the BM25 list.

A search fuses ~100 candidates from each half; what it computes beyond both halves' lists must not change a
result. The query signals (:data:`~kl_retrievers.hybrid.SIGNALS`) are read by the adaptive weight alone, so an
``"rrf"`` or ``"convex"`` search computes none (:meth:`KLHybridStore.candidates` still gives them all); the BM25
list is found with one partition (:meth:`_BM25Half.top_rows`), the same rows in the same order as
:func:`~kl_retrievers.runs.top_k` with the later added row first among ties; and the BM25-only candidates'
``-KL`` is read from the KL half in one call, without asking it about each id first (a missing one is still refused:
``tests/test_hybrid_fast_path.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kl_retrievers.hybrid as hybrid_module
from conftest import WORDS, random_gaussians
from kl_retrievers.hybrid import BM25_TOKEN_PATTERN, SIGNALS, AdaptiveParams, KLHybridStore, _BM25Half, _Tokenizer
from kl_retrievers.index import KLStore
from kl_retrievers.runs import top_k

K = 4
VOCAB = [w for w in WORDS if len(w) > 2]


def make_store(n: int = 60, seed: int = 0) -> KLHybridStore:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=int(rng.integers(1, 6)))) for _ in range(n)]
    params = AdaptiveParams(SIGNALS, (0.0,) * len(SIGNALS), (1.0,) * len(SIGNALS), (0.3,) * len(SIGNALS), 0.1)
    store = KLHybridStore(fusion="rrf", candidates=20, adaptive_params=params)
    metas = [{"i": i} for i in range(n)]
    store.add(texts, gaussians=random_gaussians(n, K, seed=seed), ids=[f"d{i}" for i in range(n)], metadatas=metas)
    return store


QUERIES = ["cat sun moon", "tea bread", "water rock sea train", "nothing matches"]


@pytest.mark.parametrize("mode", ["rrf", "convex", "adaptive"])
def test_signals_computed_only_for_the_adaptive_weight(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    qg = random_gaussians(len(QUERIES), K, seed=9)
    calls = []
    real = hybrid_module.query_signals

    def counting(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hybrid_module, "query_signals", counting)
    hits = store.search_batch(QUERIES, k=5, query_gaussians=qg, fusion=mode)  # type: ignore[arg-type]
    assert len(calls) == (len(QUERIES) if mode == "adaptive" else 0)
    # the same hits as fusing candidates that carry every signal
    config = store.fusion.for_call(mode)  # type: ignore[arg-type]
    cands = store.candidates(QUERIES, query_gaussians=qg, depth=config.candidates)
    assert all(set(c.signals) == set(SIGNALS) for c in cands)
    assert hits == [store.to_results(c, store.fuse_candidates(c, 5, config), mode) for c in cands]


def test_bm25_only_candidates_read_from_the_kl_half_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    asked = []
    real = KLStore.__contains__

    def counting(self: KLStore, doc_id: object) -> bool:
        asked.append(doc_id)
        return real(self, doc_id)

    monkeypatch.setattr(KLStore, "__contains__", counting)
    cands = store.candidates(["cat sun moon tea"], query_gaussians=random_gaussians(1, K, seed=3), depth=5)
    assert (cands[0].dense_rank == 0).any()  # BM25-only candidates were scored
    assert asked == []


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 4), min_size=0, max_size=40),
    depth=st.integers(1, 45),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_top_rows_equals_top_k_with_the_later_row_first(values: list[int], depth: int, masked: bool, seed: int) -> None:
    scores = np.asarray(values, dtype=np.float64) / 2.0  # many exact ties, zeros (no match) among them
    mask = np.random.default_rng(seed).random(scores.size) < 0.7 if masked else None
    half = _BM25Half(_Tokenizer(None, BM25_TOKEN_PATTERN), 0.9, 0.4)
    allowed = (scores > 0) & (mask if mask is not None else True)
    rows = np.flatnonzero(allowed)
    expected = rows[top_k(scores[None, rows], depth, -rows)[0][0]]
    got = half.top_rows(scores, mask, depth)
    assert got.tolist() == expected.tolist()
