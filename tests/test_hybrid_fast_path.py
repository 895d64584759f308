"""KLHybridStore's fast candidate path: the same results as the full path, and one metadata scan per search.

The dense half used to build a full :class:`~kl_retrievers.store.SearchResult` (text, copied metadata)
for each of its ~100 candidates per query, when fusion reads only ids and scores; and with a filter
each half scanned the metadata on its own (the filter ran twice per document). Now the dense half
returns ids and scores (:meth:`KLStore._top_ids`), only the fused top ``k`` read their documents, and
the BM25 half reuses what the filter allowed in the KL half.

:func:`full_path` is the previous ``KLHybridStore.candidates``: the KL half's ``search_batch`` (full
results) and the BM25 half's own scan of the metadata. The fast path must give the same candidates
and the same hits, bit for bit, in every fusion mode, with and without filters, after upserts and
deletes (tombstones), and when the KL half was changed directly (with one difference there: the
BM25 half filters on the KL half's metadata, not on its own copy, when the two disagree).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kl_retrievers.filters as filters_module
import kl_retrievers.store.faiss as faiss_module
from conftest import HYBRID_TEXTS, WORDS, make_tiny_encoder, random_gaussians
from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import (
    FUSION_MODES,
    SIGNALS,
    AdaptiveParams,
    Candidates,
    FusionMode,
    HybridResult,
    KLHybridStore,
)

K = 4
LANGS = ("en", "de", "fr")
VOCAB = [w for w in WORDS if len(w) > 2]


def adaptive_params() -> AdaptiveParams:
    n = len(SIGNALS)
    return AdaptiveParams(SIGNALS, (0.0,) * n, (1.0,) * n, (0.3,) * n, 0.1, "minmax", model="test")


def make_store(seed: int, n: int, churn: bool, candidates: int = 100) -> KLHybridStore:
    """``n`` random documents; with ``churn``, some upserted (moved to the end) and some deleted (tombstones)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(VOCAB, size=int(rng.integers(1, 6)))) for _ in range(n)]
    metas: list[dict[str, Any]] = [
        {"lang": LANGS[int(rng.integers(3))], "i": i, "tags": [str(t) for t in rng.choice(VOCAB, size=2)]}
        for i in range(n)
    ]
    store = KLHybridStore(fusion="rrf", candidates=candidates, adaptive_params=adaptive_params())
    store.add(texts, gaussians=random_gaussians(n, K, seed=seed), ids=[f"d{i}" for i in range(n)], metadatas=metas)
    if churn and n > 2:
        moved = [f"d{i}" for i in range(0, n, 3)]
        store.upsert(
            [texts[int(d[1:])] + " sun" for d in moved],
            ids=moved,
            gaussians=random_gaussians(len(moved), K, seed=seed + 1),
            metadatas=[{**metas[int(d[1:])], "lang": "en"} for d in moved],
        )
        store.delete([f"d{i}" for i in range(1, n, 4)])
    return store


def full_path(store: KLHybridStore, texts: list[str], qg: Gaussians, flt: Any, depth: int) -> list[Candidates]:
    """The previous ``candidates``: full dense results and the BM25 half's own scan of the metadata."""
    predicate = compile_filter(flt)
    with store.consistent():
        store._ensure_index()
        half = store._bm25
        dense = store.kl.search_batch(qg, k=depth, filter=flt) if len(store.kl) else [[] for _ in texts]
        mask = half.mask(predicate)
        uncertainty = np.log(qg.var).mean(axis=1)
        return [
            store._one_candidates(
                qg[i],
                text,
                [r.id for r in dense[i]],
                np.asarray([r.score for r in dense[i]], dtype=np.float64),
                half,
                mask,
                depth,
                float(uncertainty[i]),
            )
            for i, text in enumerate(texts)
        ]


def full_results(
    store: KLHybridStore, texts: list[str], qg: Gaussians, flt: Any, k: int, mode: FusionMode
) -> list[list[HybridResult]]:
    config = store.fusion.for_call(mode)
    with store.consistent():
        cands = full_path(store, texts, qg, flt, max(k, config.candidates))
        return [store.to_results(c, store.fuse_candidates(c, k, config), mode) for c in cands]


def assert_same_candidates(fast: Candidates, full: Candidates) -> None:
    assert fast.ids == full.ids
    for name in ("neg_kl", "bm25", "dense_rank", "bm25_rank"):
        a, b = getattr(fast, name), getattr(full, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert fast.uncertainty == full.uncertainty and fast.signals == full.signals


FILTERS: dict[str, Any] = {
    "none": None,
    "dict": {"lang": "en"},
    "nested": {"$or": [{"lang": "de"}, {"i": {"$lt": 5}}]},
    "callable": lambda m: m["i"] % 2 == 0,
    "nothing": {"lang": "xx"},
    "everything": lambda m: True,
}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 40),
    churn=st.booleans(),
    flt=st.sampled_from(sorted(FILTERS)),
    mode=st.sampled_from(FUSION_MODES),
    k=st.integers(1, 12),
    candidates=st.integers(1, 30),
    n_queries=st.integers(1, 3),
)
def test_fast_path_equals_full_path(
    seed: int, n: int, churn: bool, flt: str, mode: FusionMode, k: int, candidates: int, n_queries: int
) -> None:
    store = make_store(seed, n, churn, candidates)
    rng = np.random.default_rng(seed + 7)
    texts = [" ".join(rng.choice(VOCAB, size=3)) for _ in range(n_queries)]
    qg = random_gaussians(n_queries, K, seed=seed + 3)
    spec = FILTERS[flt]
    depth = max(k, candidates)
    fast = store.candidates(texts, query_gaussians=qg, filter=spec, depth=depth)
    full = full_path(store, texts, qg, spec, depth)
    for a, b in zip(fast, full, strict=True):
        assert_same_candidates(a, b)
    hits = store.search_batch(texts, k=k, filter=spec, query_gaussians=qg, fusion=mode)
    assert hits == full_results(store, texts, qg, spec, k, mode)
    assert store.search(texts[0], k=k, filter=spec, query_gaussians=qg[0:1], fusion=mode) == hits[0]
    run = store.search_run(
        [f"q{i}" for i in range(n_queries)], texts, k=k, filter=spec, query_gaussians=qg, fusion=mode
    )
    assert [list(r) for r in run.values()] == [[h.id for h in q] for q in hits]


@pytest.mark.parametrize("flt", ["none", "dict", "callable"])
def test_a_document_added_to_the_kl_half_directly_ranks_as_before(flt: str) -> None:
    """The halves disagree (an id only in the KL half): the BM25 mask is built id by id, as before."""
    store = make_store(5, 30, churn=True)
    with store.kl._owner_writes():  # past the KL half's guard, which refuses such a write
        store.kl.add(
            ["sun moon"], gaussians=random_gaussians(1, K, seed=77), ids=["extra"], metadatas=[{"lang": "en", "i": 0}]
        )
    qg = random_gaussians(2, K, seed=78)
    texts, spec = ["sun moon", "black rock"], FILTERS[flt]
    for a, b in zip(
        store.candidates(texts, query_gaussians=qg, filter=spec), full_path(store, texts, qg, spec, 100), strict=True
    ):
        assert_same_candidates(a, b)
    for mode in FUSION_MODES:
        assert store.search_batch(texts, k=8, filter=spec, query_gaussians=qg, fusion=mode) == full_results(
            store, texts, qg, spec, 8, mode
        )


@pytest.mark.parametrize("flt", ["none", "dict", "callable"])
def test_a_document_deleted_from_the_kl_half_directly_is_still_named(flt: str) -> None:
    """An id only in the BM25 half is still asked to the filter, and still found out when it is a candidate."""
    store = KLHybridStore(fusion="rrf")
    store.add(
        ["quokka sun", "tea bread", "moon star"],
        gaussians=random_gaussians(3, K),
        ids=["a", "b", "c"],
        metadatas=[{"lang": "en", "i": 0}, {"lang": "de", "i": 1}, {"lang": "en", "i": 2}],
    )
    store.search("tea", query_gaussians=random_gaussians(1, K))  # the BM25 index is built
    with store.kl._owner_writes():  # changed directly (past the guard): "a" is in the BM25 half only
        store.kl.delete(["a"])
    with pytest.raises(RuntimeError, match=r"disagree on ids.*\['a'\].*changed directly"):
        store.search("quokka", query_gaussians=random_gaussians(1, K), filter=FILTERS[flt])
    if flt != "none":  # a filter that refuses "a" keeps it out of the candidates, as before
        hits = store.search("quokka", query_gaussians=random_gaussians(1, K), filter={"lang": "de"})
        assert [h.id for h in hits] == ["b"]


# ------------------------------------------------------------------ one metadata scan per search
class Counting:
    """A callable filter that counts its calls."""

    def __init__(self, keep: Callable[[Mapping[str, Any]], bool] = lambda m: m.get("lang") == "en") -> None:
        self.keep = keep
        self.calls = 0

    def __call__(self, meta: Mapping[str, Any]) -> bool:
        self.calls += 1
        return bool(self.keep(meta))


@pytest.fixture
def condition_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count every evaluation of a dict filter's field conditions (``{"lang": "en"}``: one per document)."""
    calls = [0]
    field_op = filters_module._field_op

    def counted(op: str, ref: Any) -> Callable[[Any], bool]:
        check = field_op(op, ref)

        def count(value: Any) -> bool:
            calls[0] += 1
            return check(value)

        return count

    monkeypatch.setattr(filters_module, "_field_op", counted)
    # each search scans afresh: a repeated dict filter is otherwise answered from the table's cached rows
    monkeypatch.setattr(faiss_module, "_filter_key", lambda spec: None)
    yield calls


@pytest.fixture
def predicate_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count every call of a compiled filter, however the caller spelled it (dict, callable, framework filters)."""
    calls = [0]

    def counted(spec: Any) -> Any:
        predicate = compile_filter(spec)
        if predicate is None:
            return None

        def count(meta: Mapping[str, Any]) -> bool:
            calls[0] += 1
            return predicate(meta)

        return count

    monkeypatch.setattr(faiss_module, "compile_filter", counted)  # the hybrid store compiles through its KL half
    # each search scans afresh: a repeated dict filter is otherwise answered from the table's cached rows
    monkeypatch.setattr(faiss_module, "_filter_key", lambda spec: None)
    yield calls


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_a_callable_filter_is_called_once_per_document_per_search(mode: FusionMode) -> None:
    store = make_store(3, 40, churn=True)
    n = len(store)
    qg = random_gaussians(3, K, seed=4)
    flt = Counting()
    store.search("sun tea", k=5, filter=flt, query_gaussians=qg[0:1], fusion=mode)
    assert flt.calls == n
    flt.calls = 0
    store.search_batch(["sun tea", "moon", "rock"], k=5, filter=flt, query_gaussians=qg, fusion=mode)
    assert flt.calls == n  # one scan for the whole batch
    flt.calls = 0
    store.search_run(["a", "b"], ["sun", "moon"], k=5, filter=flt, query_gaussians=qg[:2], fusion=mode)
    assert flt.calls == n
    flt.calls = 0
    store.candidates(["sun"], query_gaussians=qg[0:1], filter=flt)
    assert flt.calls == n


def test_dict_filter_conditions_are_evaluated_once_per_document(condition_calls: list[int]) -> None:
    store = make_store(11, 30, churn=False)
    qg = random_gaussians(2, K, seed=12)
    for mode in FUSION_MODES:
        condition_calls[0] = 0
        hits = store.search("sun", k=5, filter={"lang": "en"}, query_gaussians=qg[0:1], fusion=mode)
        assert condition_calls[0] == len(store) and all(h.metadata["lang"] == "en" for h in hits)
        condition_calls[0] = 0
        store.search_batch(["sun", "tea"], k=5, filter={"lang": "en"}, query_gaussians=qg, fusion=mode)
        assert condition_calls[0] == len(store)


def test_hybrid_search_with_confidence_scans_once(predicate_calls: list[int]) -> None:
    from conftest import max_score_calibrator
    from kl_retrievers._confidence import ConfidenceScorer, hybrid_search

    store = KLHybridStore(make_tiny_encoder(seed=1), fusion="rrf")
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(len(HYBRID_TEXTS))], metadatas=[{"n": i} for i in range(6)])
    hits, confidence, _ = hybrid_search(
        store, "black rock", 3, filter={"n": {"$lt": 5}}, scorer=ConfidenceScorer(max_score_calibrator())
    )
    assert predicate_calls[0] == len(store) and confidence is not None and hits[0].id == "d4"


def test_langchain_hybrid_retriever_scans_once_sync_and_async(predicate_calls: list[int]) -> None:
    from kl_retrievers.langchain import KLHybridRetriever

    store = KLHybridStore(make_tiny_encoder(seed=1), fusion="rrf", adaptive_params=adaptive_params())
    store.add(HYBRID_TEXTS, ids=[f"d{i}" for i in range(6)], metadatas=[{"n": i, "even": i % 2 == 0} for i in range(6)])
    for mode in FUSION_MODES:
        retriever = KLHybridRetriever(store=store, k=3, fusion=mode)
        predicate_calls[0] = 0
        sync = retriever.invoke("black rock", filter={"even": True})
        assert predicate_calls[0] == len(store)
        predicate_calls[0] = 0
        docs = asyncio.run(retriever.ainvoke("black rock", filter={"even": True}))
        assert predicate_calls[0] == len(store)
        assert [d.id for d in docs] == [d.id for d in sync] and all(d.metadata["even"] for d in docs)
        expected = store.search("black rock", k=3, filter={"even": True}, fusion=mode)
        assert [d.id for d in sync] == [h.id for h in expected]
        assert [d.metadata["fused_score"] for d in sync] == [h.score for h in expected]


@pytest.mark.usefixtures("mock_llm_settings")
def test_llama_index_hybrid_retriever_scans_once_sync_and_async(predicate_calls: list[int]) -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    from kl_retrievers.llama_index import KLHybridRetriever

    nodes = [TextNode(text=t, id_=f"n{i}", metadata={"n": i}) for i, t in enumerate(HYBRID_TEXTS)]
    only_even = MetadataFilters(filters=[MetadataFilter(key="n", value=[0, 2, 4], operator=FilterOperator.IN)])
    retriever = KLHybridRetriever.from_defaults(
        nodes=nodes, encoder=make_tiny_encoder(seed=1), similarity_top_k=3, fusion="convex", filters=only_even
    )
    predicate_calls[0] = 0
    hits = retriever.retrieve("black rock")
    assert predicate_calls[0] == len(retriever.store)
    predicate_calls[0] = 0
    again = asyncio.run(retriever.aretrieve("black rock"))
    assert predicate_calls[0] == len(retriever.store)
    assert [h.node.node_id for h in hits] == [h.node.node_id for h in again] and len(hits) == 3
    assert {h.node.metadata["n"] for h in hits} <= {0, 2, 4}


def test_dense_candidates_build_no_full_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the fused top k read their stored documents: the dense half's candidates are ids and scores."""
    from kl_retrievers.store import _table

    store = make_store(2, 40, churn=False)
    copies = [0]
    copy = _table._copy_metadata

    def counted(meta: dict[str, Any], nested: bool | None = None) -> dict[str, Any]:
        copies[0] += 1
        return copy(meta, nested)

    monkeypatch.setattr(_table, "_copy_metadata", counted)
    qg = random_gaussians(1, K, seed=9)
    hits = store.search("sun", k=3, query_gaussians=qg, fusion="convex")
    assert len(hits) == 3 and copies[0] == 3  # the 3 hits, not the 40 dense candidates
