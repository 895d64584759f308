"""Tests for the metadata filter language."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kl_retrievers.filters import ALLOWED_OPERATORS, compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore

DOCS: list[dict[str, Any]] = [
    {"lang": "en", "year": 2019, "tags": "a"},
    {"lang": "de", "year": 2021},
    {"lang": "en", "year": 2023},
    {"year": 2020},
    {"lang": "fr", "year": "unknown"},
]


def _match(spec: Any) -> list[int]:
    pred = compile_filter(spec)
    assert pred is not None
    return [i for i, m in enumerate(DOCS) if pred(m)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"lang": "en"}, [0, 2]),
        ({"lang": ["de", "fr"]}, [1, 4]),
        ({"lang": {"$eq": "de"}}, [1]),
        ({"lang": {"$ne": "en"}}, [1, 3, 4]),
        ({"lang": {"$in": ["en", "fr"]}}, [0, 2, 4]),
        ({"lang": {"$nin": ["en", "fr"]}}, [1, 3]),
        ({"year": {"$gt": 2020}}, [1, 2]),
        ({"year": {"$gte": 2020}}, [1, 2, 3]),
        ({"year": {"$lt": 2020}}, [0]),
        ({"year": {"$lte": 2020}}, [0, 3]),
        ({"year": {"$gte": 2020, "$lt": 2023}}, [1, 3]),
        ({"lang": "en", "year": 2023}, [2]),
        ({"$and": [{"lang": "en"}, {"year": {"$gt": 2020}}]}, [2]),
        ({"$or": [{"lang": "de"}, {"year": {"$lt": 2020}}]}, [0, 1]),
        ({"$not": {"lang": "en"}}, [1, 3, 4]),
        ({"year": {"$not": {"$gt": 2020}}}, [0, 3, 4]),
        ({"$or": [{"$and": [{"lang": "en"}, {"year": 2019}]}, {"$not": {"year": {"$lte": 2022}}}]}, [0, 2, 4]),
        ({}, [0, 1, 2, 3, 4]),
    ],
)
def test_operators(spec: object, expected: list[int]) -> None:
    assert _match(spec) == expected


def test_callable_filter() -> None:
    assert _match(lambda m: m.get("tags") == "a") == [0]


def test_none_is_no_filter() -> None:
    assert compile_filter(None) is None


@pytest.mark.parametrize("spec", [{"year": {"$regex": "x"}}, {"$nor": [{"a": 1}]}, {"$or": [{"a": {"$foo": 1}}]}])
def test_unknown_operator_names_allowed(spec: object) -> None:
    with pytest.raises(ValueError, match="allowed operators") as info:
        compile_filter(spec)  # type: ignore[arg-type]
    for op in ALLOWED_OPERATORS:
        assert op in str(info.value)


def test_malformed_filters() -> None:
    with pytest.raises(ValueError):
        compile_filter({"a": {"$in": 3}})
    with pytest.raises(ValueError):
        compile_filter({"$and": {"a": 1}})
    with pytest.raises(ValueError):
        compile_filter(42)  # type: ignore[arg-type]


def _store(index_type: str, n: int = 3000, k: int = 16, **kw: object) -> tuple[KLStore, Gaussians]:
    rng = np.random.default_rng(1)
    g = Gaussians(rng.normal(size=(n, k)).astype(np.float32), np.exp(rng.normal(0, 0.5, (n, k))).astype(np.float32))
    store = KLStore(index_type=index_type, **kw)  # type: ignore[arg-type]
    metas = [{"g": i % 100, "even": i % 2 == 0} for i in range(n)]
    store.add(gaussians=g, ids=[str(i) for i in range(n)], metadatas=metas)
    return store, g


@pytest.mark.parametrize(
    ("index_type", "kw"),
    [("flat", {}), ("hnsw", {"hnsw_m": 8, "ef_construction": 20}), ("ivf", {"nlist": 16, "nprobe": 1})],
)
@pytest.mark.parametrize("selective", [True, False])
def test_filtered_search_returns_k_matching(index_type: str, kw: dict[str, object], selective: bool) -> None:
    store, g = _store(index_type, exact_threshold=0 if not selective else 20000, **kw)  # type: ignore[arg-type]
    spec = {"g": {"$in": [3, 7]}} if selective else {"even": True}
    pred = compile_filter(spec)
    assert pred is not None
    queries = g[:5]
    for res in store.search_batch(queries, k=20, filter=spec):
        assert len(res) == 20
        assert all(pred(r.metadata) for r in res)
        assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)


def test_filter_fewer_matches_than_k() -> None:
    store, g = _store("flat", n=200)
    res = store.search(g[0], k=50, filter={"g": 5})
    assert [r.id for r in res] == ["5", "105"] or sorted(r.id for r in res) == ["105", "5"]


def test_filtered_flat_is_exact() -> None:
    from kl_retrievers.gaussian import neg_kl_matrix

    store, g = _store("flat", n=1000)
    q = g[10:13]
    scores = neg_kl_matrix(q.astype(np.float64), g.astype(np.float64))
    allowed = np.array([i % 2 == 0 for i in range(1000)])
    for i, res in enumerate(store.search_batch(q, k=10, filter={"even": True})):
        s = np.where(allowed, scores[i], -np.inf)
        assert [r.id for r in res] == [str(j) for j in np.argsort(-s)[:10]]


def test_search_unknown_operator_raises() -> None:
    store, g = _store("flat", n=50)
    with pytest.raises(ValueError, match=r"\$gt"):
        store.search(g[0], k=3, filter={"g": {"$greater": 3}})


def test_a_callable_filter_cannot_rewrite_the_stored_metadata() -> None:
    """A predicate gets a read-only view: assigning to it fails instead of changing the store (both halves)."""
    from conftest import make_tiny_encoder
    from kl_retrievers.hybrid import KLHybridStore

    rng = np.random.default_rng(0)
    g = Gaussians(rng.normal(size=(3, 4)), np.exp(rng.normal(size=(3, 4))))
    store = KLStore(dim=4)
    store.add(gaussians=g, ids=["a", "b", "c"], metadatas=[{"g": "x"}, {"g": "y"}, {"g": "x"}])

    def rewrite(m: Any) -> bool:
        m["g"] = "Z"
        return True

    with pytest.raises(TypeError):
        store.search(g[0], k=2, filter=rewrite)
    assert [d.metadata for d in store.get_by_ids(["a", "b", "c"])] == [{"g": "x"}, {"g": "y"}, {"g": "x"}]
    assert {h.id for h in store.search(g[0], k=3, filter={"g": "x"})} == {"a", "c"}
    hybrid = KLHybridStore(make_tiny_encoder(seed=1))
    hybrid.add(["apple pie", "pear tart", "apple cake"], ids=["a", "b", "c"], metadatas=[{"g": "x"}] * 3)
    with pytest.raises(TypeError):
        hybrid.search("apple", k=2, filter=rewrite)
    assert {h.id for h in hybrid.search("apple", k=3, filter={"g": "x"})} == {"a", "b", "c"}
    assert all(h.metadata == {"g": "x"} for h in hybrid.search("apple", k=3))


def test_milvus_accepts_neq_like_the_other_stores() -> None:
    from kl_retrievers.store.milvus import to_milvus_expr

    assert to_milvus_expr({"lang": {"$neq": "en"}}) == to_milvus_expr({"lang": {"$ne": "en"}})
