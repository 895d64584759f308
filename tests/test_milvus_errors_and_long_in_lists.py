"""MilvusKLStore against KLStore (audit 2026-12-04): error messages as KLStore's, k above Milvus' top-k limit,
long ``$in`` / ``$nin`` lists resolved to ids on Milvus Lite (same results as the ``==`` chain, far faster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store.milvus as milvus_module
from conftest import random_gaussians
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusKLStore

K = 4


def _pair(tmp_path: Path, n: int, metadatas: list[dict[str, Any]] | None = None, **kw: Any) -> tuple[Any, KLStore]:
    docs = random_gaussians(n, K, seed=3)
    ids = [f"d{i:03d}" for i in range(n)]
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type=kw.pop("index_type", "flat"), **kw)
    ref = KLStore()
    for s in (store, ref):
        s.add(gaussians=docs, ids=ids, metadatas=metadatas)
    return store, ref


# ------------------------------------------------------------------ 1. messages as KLStore's
def test_errors_read_as_klstore_s(tmp_path: Path) -> None:
    store, ref = _pair(tmp_path, 5)
    q = random_gaussians(1, K, seed=9)
    for bad in ({"n": {"$foo": 1}}, {"$foo": [{"n": 1}]}):
        with pytest.raises(ValueError) as want:
            ref.search(q, filter=bad)
        with pytest.raises(ValueError) as got:
            store.search(q, filter=bad)
        assert str(got.value) == str(want.value) and "$neq is accepted as an alias of $ne" in str(got.value)
    with pytest.raises(KeyError) as want_key:
        ref.get_gaussians(["d001", "nope"])
    with pytest.raises(KeyError) as got_key:
        store.get_gaussians(["d001", "nope"])
    assert str(got_key.value) == str(want_key.value) == "\"1 unknown id(s): ['nope']\""
    wrong = random_gaussians(1, K + 1, seed=1)
    with pytest.raises(ValueError) as want_dim:
        ref.add(gaussians=wrong, ids=["w"])
    with pytest.raises(ValueError) as got_dim:
        store.add(gaussians=wrong, ids=["w"])
    assert str(got_dim.value) == str(want_dim.value)


# ------------------------------------------------------------------ 2. k above Milvus' limit
def test_k_above_the_milvus_limit_returns_every_document_as_klstore(tmp_path: Path) -> None:
    store, ref = _pair(tmp_path, 12, [{"i": i} for i in range(12)])
    q = random_gaussians(2, K, seed=4)
    for k in (10**6, milvus_module.MAX_TOPK + 1):
        got = [[(h.id, h.score) for h in row] for row in store.search_batch(q, k=k)]
        want = [[(h.id, h.score) for h in row] for row in ref.search_batch(q, k=k)]
        assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
        assert len(got[0]) == 12
        np.testing.assert_allclose([s for _, s in got[0]], [s for _, s in want[0]], rtol=1e-5)


def test_k_above_the_limit_is_refused_only_when_more_documents_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ref = _pair(tmp_path, 12, [{"i": i} for i in range(12)], index_type="hnsw")
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 5)  # 12 rows stand for a collection above the limit
    q = random_gaussians(1, K, seed=5)
    flt = {"i": {"$lt": 4}}  # 4 rows match: fewer than the limit
    assert [h.id for h in store.search(q, k=50, filter=flt)] == [h.id for h in ref.search(q, k=50, filter=flt)]
    assert len(store.search(q, k=5)) == 5
    with pytest.raises(ValueError, match=r"k must be at most 5 with Milvus when more documents .*\(12 do\); got 6"):
        store.search(q, k=6)


# ------------------------------------------------------------------ 3. long $in lists on Milvus Lite
MIXED = [1, 1.0, True, False, 0, 2, 2.5, "1", "a", "ä", 'q"\\', "new\nline", None, [1, 2], {"a": 1}, -3, 10**15, ""]


def _mixed_metadata(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        meta: dict[str, Any] = {}
        if i % 7:
            meta["n"] = MIXED[i % len(MIXED)]
        if i % 3 == 0:
            meta["s"] = f"x{i}"
        out.append(meta)
    return out


LONG = (
    [1, "a", 'q"\\', "new\nline", 2.5, "ä", 10**15, ""]
    + [f"x{i}" for i in range(0, 90, 3)]
    + [f"zz{i}" for i in range(40)]
    + [f"y{i}" for i in range(60)]  # more than _IN_LOCAL_MIN (128) in all
)
assert len(LONG) > 128
LONG_FILTERS: list[dict[str, Any]] = [
    {"n": {"$in": LONG}},
    {"n": {"$nin": LONG}},
    {"n": LONG},  # a list value: one of
    {"s": {"$in": tuple(LONG)}, "n": {"$ne": 1}},
    {"$or": [{"s": {"$nin": LONG}}, {"n": 2}]},
    {"n": {"$not": {"$in": LONG}}},
    {"$not": {"s": {"$in": set(LONG[8:])}}},
    {"n": {"$in": np.array([f"zz{i}" for i in range(140)])}},  # matches nothing
    {"n": {"$in": [False, 0, *[f"zz{i}" for i in range(140)]]}},  # 0 == False, as in Python
]


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_a_long_in_list_is_sent_as_ids_with_the_same_results(
    tmp_path: Path, index_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 120
    store, ref = _pair(tmp_path, n, _mixed_metadata(n), index_type=index_type)
    sent: list[str] = []
    search = store.client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs.get("filter") or "")
        return search(*args, **kwargs)

    monkeypatch.setattr(store.client, "search", spy)
    q = random_gaussians(3, K, seed=6)
    for flt in LONG_FILTERS:
        sent.clear()
        fast = [[(h.id, h.score, h.metadata) for h in row] for row in store.search_batch(q, k=n, filter=flt)]
        assert sent and all("id in [" in f or f == "(1 == 0)" or "(not (1 == 0))" in f for f in sent), (flt, sent)
        assert all(f.count("==") < 20 for f in sent)  # no chain of a comparison per value
        store._lite = False  # the == chain Milvus evaluates itself
        slow = [[(h.id, h.score, h.metadata) for h in row] for row in store.search_batch(q, k=n, filter=flt)]
        store._lite = True
        assert fast == slow, flt
        want = [[h.id for h in row] for row in ref.search_batch(q, k=n, filter=flt)]
        assert [[i for i, _, _ in row] for row in fast] == want, flt
    assert any(len(row) for row in fast)


def test_short_in_lists_and_servers_keep_the_milvus_expression(tmp_path: Path) -> None:
    store, _ = _pair(tmp_path, 5)
    short = {"n": {"$in": list(range(milvus_module._IN_LOCAL_MIN))}}
    assert store._prepare_filter(short) == milvus_module.to_milvus_expr(short)
    long = {"n": {"$in": list(range(milvus_module._IN_LOCAL_MIN + 1))}}
    assert isinstance(store._prepare_filter(long), milvus_module._LiteFilter)
    server = MilvusKLStore(client=store.client, collection_name="kl_retrievers")
    server._lite = False  # a server's client (a Lite client given as client= is detected as Lite since stop 43)
    assert server._prepare_filter(long) == milvus_module.to_milvus_expr(long)
    with pytest.raises(ValueError, match="finite numbers"):  # a long list is checked before any search, too
        store._prepare_filter({"n": {"$in": [*range(40), float("nan")]}})


# ------------------------------------------------------------------ 4. len reads the latest writes
def test_len_counts_with_strong_consistency_as_ids_and_get_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server a collection defaults to bounded staleness: a count without ``Strong`` can miss rows
    another client (or this one) has just written, while ``ids`` and ``get_by_ids`` see them."""
    store, _ = _pair(tmp_path, 6)
    levels: list[Any] = []
    query = store.client.query

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("output_fields") == ["count(*)"]:
            levels.append(kwargs.get("consistency_level"))
        return query(*args, **kwargs)

    monkeypatch.setattr(store.client, "query", spy)
    assert len(store) == 6
    assert levels == ["Strong"]
