"""MilvusKLStore against KLStore (stop 42): filters that negate a comparison of incompatible types, and ties.

Milvus Lite calls ``"abc" > 2020`` unknown (Kleene logic) and so also its negation, where KLStore calls the
comparison false and its negation true: the store evaluates such filters itself on Milvus Lite. Documents
with identical ``-KL`` come back in one deterministic order (greatest id first), KLStore's order (later
added first) when ids grow with insertion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from conftest import random_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusKLStore, to_milvus_expr

K = 4
# a number, a string, a missing key, JSON null, a bool, a list and a dict under one key
METAS: list[dict[str, Any]] = [
    {"year": 2020, "kind": "a"},
    {"year": 2021, "kind": "b"},
    {"year": "abc", "kind": "a"},
    {"year": "zzz", "kind": "b"},
    {"kind": "a"},
    {"year": None, "kind": "b"},
    {"year": True, "kind": "a"},
    {"year": [1, 2], "kind": "b"},
    {"year": 2.5, "kind": "a"},
    {"year": {"y": 1}, "kind": "b"},
]
FILTERS: list[dict[str, Any]] = [
    {"$not": {"year": {"$gt": "abc"}}},
    {"$not": {"year": {"$gt": 2020}}},
    {"$not": {"year": {"$lt": "b"}}},
    {"year": {"$not": {"$lt": 2021}}},
    {"year": {"$not": {"$gte": "b", "$lt": "zzzz"}}},
    {"$not": {"$and": [{"kind": "a"}, {"year": {"$lte": 2020}}]}},
    {"$or": [{"$not": {"year": {"$gte": 2021}}}, {"kind": "b"}]},
    {"kind": "a", "$not": {"year": {"$gt": "abc"}}},
    {"$not": {"$not": {"year": {"$gt": 2020}}}},
    # mixed types in $in (== never unknown): the Milvus expression as it was
    {"year": {"$in": [2020, "abc"]}},
    {"$not": {"year": {"$in": [2020, "abc"]}}},
    {"year": {"$nin": [2021, "zzz"]}},
]


def _pair(tmp_path: Path, metadatas: list[dict[str, Any]], index_type: str = "flat") -> tuple[MilvusKLStore, KLStore]:
    docs = random_gaussians(len(metadatas), K, seed=3)
    ids = [f"d{i:03d}" for i in range(len(metadatas))]
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type=index_type)  # type: ignore[arg-type]
    ref = KLStore()
    for s in (store, ref):
        s.add(gaussians=docs, ids=ids, metadatas=metadatas)
    return store, ref


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_a_negated_comparison_of_incompatible_types_matches_klstore(tmp_path: Path, flt: dict[str, Any]) -> None:
    store, ref = _pair(tmp_path, METAS)
    q = random_gaussians(2, K, seed=9)
    want = [[(h.id, h.metadata) for h in row] for row in ref.search_batch(q, k=len(METAS), filter=flt)]
    got = [[(h.id, h.metadata) for h in row] for row in store.search_batch(q, k=len(METAS), filter=flt)]
    assert got == want
    assert want[0], "each filter matches something"


def test_the_headline_case_keeps_numbers_and_other_types(tmp_path: Path) -> None:
    store, _ = _pair(tmp_path, METAS)
    q = random_gaussians(1, K, seed=1)
    hits = {h.id for h in store.search(q, k=20, filter={"$not": {"year": {"$gt": "abc"}}})}
    # only "zzz" is a string above "abc"; every number, the bool, list, dict, null and missing key pass
    assert hits == {f"d{i:03d}" for i in range(len(METAS))} - {"d003"}


def test_a_filter_negating_an_order_is_judged_on_the_metadata_at_search_time(tmp_path: Path) -> None:
    store, ref = _pair(tmp_path, METAS)
    q = random_gaussians(1, K, seed=2)
    flt = {"$not": {"year": {"$gt": 2020}}}
    for s in (store, ref):
        s.add(gaussians=random_gaussians(1, K, seed=3), ids=["d000"], metadatas=[{"year": 3000}])  # replaces it
        s.delete(["d008"])
    assert [h.id for h in store.search(q, k=20, filter=flt)] == [h.id for h in ref.search(q, k=20, filter=flt)]
    assert "d000" not in {h.id for h in store.search(q, k=20, filter=flt)}


def test_the_expression_for_a_server_is_unchanged() -> None:
    # a Milvus server evaluates the expression itself (comparisons of mismatched JSON types are false there)
    assert to_milvus_expr({"$not": {"year": {"$gt": 2020}}}) == (
        '(not (exists metadata["year"] and metadata["year"] > 2020))'
    )


# ------------------------------------------------------------------ ties
def _duplicates(n_distinct: int, copies: int) -> Gaussians:
    g = random_gaussians(n_distinct, K, seed=5).numpy()
    return Gaussians(np.repeat(g.mean, copies, axis=0), np.repeat(g.var, copies, axis=0))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_tied_documents_come_back_in_klstore_s_order_when_ids_grow_with_insertion(
    tmp_path: Path, index_type: str
) -> None:
    docs = _duplicates(3, 4)  # 12 documents, each Gaussian four times: exact ties in -KL
    ids = [f"d{i:03d}" for i in range(len(docs))]
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type=index_type)  # type: ignore[arg-type]
    ref = KLStore()
    for s in (store, ref):
        s.add(gaussians=docs, ids=ids, metadatas=[{"i": i} for i in range(len(docs))])
    q = random_gaussians(3, K, seed=6)
    want = [[(h.id, h.score) for h in row] for row in ref.search_batch(q, k=len(docs))]
    got = [[(h.id, h.score) for h in row] for row in store.search_batch(q, k=len(docs))]
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g_row, w_row in zip(got, want, strict=True):
        np.testing.assert_allclose([s for _, s in g_row], [s for _, s in w_row], rtol=1e-6)
        scores = [s for _, s in g_row]
        assert len(set(scores)) == 3  # four-way exact ties, so the order above is the tie order
    # deterministic, and a shallower search is a prefix of a deeper one
    again = [[h.id for h in row] for row in store.search_batch(q, k=len(docs))]
    assert again == [[i for i, _ in row] for row in got]
    for k in (1, 3, 5):
        assert [[h.id for h in row] for row in store.search_batch(q, k=k)] == [[i for i, _ in row][:k] for row in got]


def test_tied_documents_come_back_later_added_first_whatever_the_ids(tmp_path: Path) -> None:
    docs = _duplicates(1, 5)
    ids = ["c", "e", "a", "d", "b"]  # inserted out of id order: KLStore ranks the later-added first
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat")
    ref = KLStore()
    for s in (store, ref):
        s.add(gaussians=docs, ids=ids)
    q = random_gaussians(1, K, seed=7)
    assert [h.id for h in ref.search(q, k=5)] == ["b", "d", "a", "e", "c"]
    assert [h.id for h in store.search(q, k=5)] == ["b", "d", "a", "e", "c"]  # stop 43: the same as KLStore
