"""Filter values normalised alike on KLStore and MilvusKLStore (audit of filter values, 2026-12-04).

Each case is checked against a brute-force predicate on the stored metadata (its JSON form):
sets and dicts of dates in a filter value, ``np.datetime64`` values, numpy arrays in ``$in`` /
``$nin`` and as a bare condition, and a tuple written as a filter value (equality, as in
langchain-community's FAISS, not "one of").
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians
from kl_retrievers.filters import compile_filter, stored_form
from kl_retrievers.index import KLStore

K = 4
D1, D2, D3 = datetime.date(2024, 1, 1), datetime.date(2024, 6, 1), datetime.date(2025, 1, 1)
TEN_AM = datetime.datetime(2024, 1, 1, 10, 0)
METAS: list[dict[str, Any]] = [
    {"day": D1, "pos": (1, 2), "v": 1, "nested": {"d": D1}, "x": True},
    {"day": D2, "pos": (3, 4), "v": 2, "nested": {"d": D2}, "x": 1},
    {"day": D3, "pos": 1, "v": 3, "x": 1.0},
    {"day": np.datetime64("2024-01-01"), "pos": 2, "v": 1.0, "x": False},
    {"v": 4},
    # a datetime on a day no date filter below names: KLStore matches a date filter value with any time that
    # day, Milvus compares the ISO strings as text (see kl_retrievers.filters), so here both agree
    {"day": datetime.datetime(2024, 3, 1, 10, 0), "v": 2, "x": 0},
]
IDS = [f"d{i}" for i in range(len(METAS))]
STORED = [json.loads(json.dumps(m, default=stored_form)) for m in METAS]  # what the stores keep
Pred = Callable[[Mapping[str, Any]], bool]


def _want(pred: Pred) -> set[str]:
    """Brute force: the ids whose stored metadata satisfies ``pred``."""
    return {doc_id for doc_id, m in zip(IDS, STORED, strict=True) if pred(m)}


# (filter, brute-force predicate on the stored metadata): both backends must give exactly these ids
BOTH: list[tuple[dict[str, Any], Pred]] = [
    # 1. set / frozenset values of $in / $nin: dates converted element by element
    ({"day": {"$in": {D1, D2}}}, lambda m: m.get("day") in ("2024-01-01", "2024-06-01")),
    ({"day": {"$in": frozenset({D1})}}, lambda m: m.get("day") == "2024-01-01"),
    ({"day": {"$nin": {D1}}}, lambda m: m.get("day") != "2024-01-01"),
    ({"day": {"$nin": frozenset({D1, D2})}}, lambda m: m.get("day") not in ("2024-01-01", "2024-06-01")),
    ({"day": {"$in": {np.datetime64("2024-01-01"), D2}}}, lambda m: m.get("day") in ("2024-01-01", "2024-06-01")),
    # 2. np.datetime64 compares as the ISO string the store keeps
    ({"day": np.datetime64("2024-01-01")}, lambda m: m.get("day") == "2024-01-01"),
    ({"day": {"$gte": np.datetime64("2024-06-01")}}, lambda m: "day" in m and m["day"] >= "2024-06-01"),
    ({"day": {"$ne": np.datetime64("2024-01-01")}}, lambda m: m.get("day") != "2024-01-01"),
    ({"day": np.datetime64("2024-03-01T10:00:00")}, lambda m: m.get("day") == "2024-03-01T10:00:00"),
    (
        {"day": {"$in": np.array(["2024-01-01", "2024-06-01"], dtype="datetime64[D]")}},
        lambda m: m.get("day") in ("2024-01-01", "2024-06-01"),
    ),
    # 3. numpy arrays: $in / $nin take them; a bare 1-D array means "one of", like a list; 0-d is a value
    ({"v": {"$in": np.array([1, 2])}}, lambda m: m.get("v") in (1, 2)),
    ({"v": {"$nin": np.array([1, 2])}}, lambda m: m.get("v") not in (1, 2)),
    ({"v": {"$in": np.array([], dtype=np.int64)}}, lambda m: False),
    ({"v": {"$nin": np.array([], dtype=np.int64)}}, lambda m: True),
    ({"v": np.array([1, 2])}, lambda m: m.get("v") in (1, 2)),
    ({"v": np.array([3])}, lambda m: m.get("v") == 3),
    ({"v": np.array(3)}, lambda m: m.get("v") == 3),
    ({"v": [1, 2]}, lambda m: m.get("v") in (1, 2)),
    ({"pos": [1, 2]}, lambda m: m.get("pos") in (1, 2)),
    # 5. True == 1 == 1.0 and False == 0, as in Python, on every backend
    ({"x": True}, lambda m: "x" in m and m["x"] == 1),
    ({"x": 1}, lambda m: "x" in m and m["x"] == 1),
    ({"x": 1.0}, lambda m: "x" in m and m["x"] == 1),
    ({"x": {"$in": [0]}}, lambda m: "x" in m and m["x"] == 0),
    ({"v": 1}, lambda m: m.get("v") == 1),
]

# values the Milvus backend cannot compare (lists, dicts): KLStore matches them, Milvus raises ValueError
KLSTORE_ONLY: list[tuple[dict[str, Any], Pred]] = [
    # 4. a tuple written as the value means equality (the stored tuple is a list), not "one of"
    ({"pos": (1, 2)}, lambda m: m.get("pos") == [1, 2]),
    ({"v": (1, 2)}, lambda m: m.get("v") == [1, 2]),
    ({"pos": {"$eq": (1, 2)}}, lambda m: m.get("pos") == [1, 2]),
    # 1. a set of tuples, and dict values holding dates
    ({"pos": {"$in": {(1, 2)}}}, lambda m: m.get("pos") == [1, 2]),
    ({"pos": {"$nin": {(1, 2), (3, 4)}}}, lambda m: m.get("pos") not in ([1, 2], [3, 4])),
    ({"nested": {"$eq": {"d": D1}}}, lambda m: m.get("nested") == {"d": "2024-01-01"}),
    ({"nested": {"d": D2}}, lambda m: m.get("nested") == {"d": "2024-06-01"}),
    ({"nested": {"$in": [{"d": D1}, {"d": D2}]}}, lambda m: "nested" in m),
]


def _name(case: tuple[dict[str, Any], Pred]) -> str:
    return repr(case[0])


@pytest.fixture(scope="module")
def klstore() -> KLStore:
    store = KLStore()
    store.add(gaussians=random_gaussians(len(IDS), K, seed=1), ids=IDS, metadatas=METAS)
    return store


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path_factory.mktemp("stop37") / "kl.db"), index_type="flat")
    store.add(gaussians=random_gaussians(len(IDS), K, seed=1), ids=IDS, metadatas=METAS)
    yield store
    store.close()


def _hits(store: Any, flt: Any) -> set[str]:
    return {h.id for h in store.search(random_gaussians(1, K, seed=2), k=len(IDS), filter=flt)}


def test_the_stores_keep_the_expected_metadata(klstore: KLStore) -> None:
    assert [d.metadata for d in klstore.get_by_ids(IDS)] == STORED
    assert STORED[3]["day"] == "2024-01-01" and STORED[0]["pos"] == [1, 2]


@pytest.mark.parametrize("case", BOTH + KLSTORE_ONLY, ids=_name)
def test_klstore_filter_values_match_brute_force(klstore: KLStore, case: tuple[dict[str, Any], Pred]) -> None:
    flt, pred = case
    assert _hits(klstore, flt) == _want(pred)
    predicate = compile_filter(flt)
    assert predicate is not None
    assert {i for i, m in zip(IDS, STORED, strict=True) if predicate(m)} == _want(pred)


@pytest.mark.parametrize("case", BOTH, ids=_name)
def test_milvus_filter_values_match_brute_force(milvus: Any, case: tuple[dict[str, Any], Pred]) -> None:
    flt, pred = case
    assert _hits(milvus, flt) == _want(pred)


@pytest.mark.parametrize("case", KLSTORE_ONLY, ids=_name)
def test_milvus_refuses_list_and_dict_values_instead_of_matching_differently(
    milvus: Any, case: tuple[dict[str, Any], Pred]
) -> None:
    with pytest.raises(ValueError, match="str, int, float or bool"):
        _hits(milvus, case[0])


def test_stored_form_converts_sets_dicts_and_datetime64() -> None:
    assert sorted(stored_form({D1, D2})) == ["2024-01-01", "2024-06-01"]
    assert stored_form(frozenset({D1})) == ["2024-01-01"]
    assert stored_form({"d": D1, "inner": {"t": (1, TEN_AM)}}) == {
        "d": "2024-01-01",
        "inner": {"t": [1, "2024-01-01T10:00:00"]},
    }
    assert stored_form(np.datetime64("2024-01-01")) == "2024-01-01"
    assert stored_form(np.datetime64("2024-01-01T10:00:00")) == "2024-01-01T10:00:00"
    assert stored_form(np.array(["2024-01-01"], dtype="datetime64[D]")) == ["2024-01-01"]
    assert stored_form(np.array(3)) == 3 and type(stored_form(np.array(3))) is int
    assert stored_form(np.array([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]


def test_milvus_expression_for_arrays_and_tuples() -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.milvus import to_milvus_expr

    assert to_milvus_expr({"v": np.array([1, 2])}) == to_milvus_expr({"v": [1, 2]})
    assert to_milvus_expr({"v": {"$in": np.array([1, 2])}}) == to_milvus_expr({"v": {"$in": [1, 2]}})
    assert to_milvus_expr({"v": {"$nin": np.array(["a"])}}) == to_milvus_expr({"v": {"$nin": ["a"]}})
    assert to_milvus_expr({"v": np.array(3)}) == to_milvus_expr({"v": 3})
    assert to_milvus_expr({"v": {"$in": (1, 2)}}) == to_milvus_expr({"v": {"$in": [1, 2]}})  # an operand list
    with pytest.raises(ValueError, match="got list"):  # a tuple value is equality with a list
        to_milvus_expr({"v": (1, 2)})


def test_langchain_filters_agree_with_faiss_on_tuples_and_sets() -> None:
    pytest.importorskip("langchain_core")
    faiss_mod = pytest.importorskip("langchain_community.vectorstores.faiss")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    metas: list[dict[str, Any]] = [{"pos": (1, 2), "day": D1}, {"pos": 1, "day": D2}, {"pos": (3, 4), "day": D3}]
    vs = KLVectorStore.from_texts(
        ["cat sat", "dog sun", "tea bread"], KLEmbeddings(make_tiny_encoder()), metadatas=metas, ids=["a", "b", "c"]
    )
    filters: list[dict[str, Any]] = [
        {"pos": (1, 2)},
        {"pos": [1, 2]},
        {"pos": {"$eq": (1, 2)}},
        {"day": {"$in": {D1, D2}}},
        {"day": {"$nin": {D1}}},
        {"day": {"$in": frozenset({D3})}},
    ]
    for flt in filters:
        faiss_match = faiss_mod.FAISS._create_filter_func(flt)
        want = sorted(i for i, m in zip("abc", metas, strict=True) if faiss_match(m))
        got = sorted(str(d.id) for d in vs.similarity_search("cat", k=3, filter=flt))
        assert got == want, flt


# A date filter value on a stored datetime: KLStore compares the stored value's calendar date, Milvus the ISO
# strings as text (docs/milvus.md, "Where MilvusKLStore still differs"). Pinned on both, so that a change to
# either is noticed (and docs/milvus.md updated with it).
DAY_METAS: list[dict[str, Any]] = [{"day": TEN_AM}, {"day": D1}]  # stored "2024-01-01T10:00:00", "2024-01-01"
DAY_IDS = ["ten_am", "day"]
DATE_VS_DATETIME: list[tuple[dict[str, Any], set[str], set[str]]] = [  # (filter, KLStore's ids, Milvus's ids)
    ({"day": D1}, {"ten_am", "day"}, {"day"}),
    ({"day": {"$lte": D1}}, {"ten_am", "day"}, {"day"}),
    ({"day": {"$gt": D1}}, set(), {"ten_am"}),  # "2024-01-01T10:00:00" > "2024-01-01" as text
    ({"$not": {"day": {"$gt": D1}}}, {"ten_am", "day"}, {"day"}),  # Milvus Lite's Python path: text, too
    ({"day": {"$in": [D1, D2]}}, {"ten_am", "day"}, {"day"}),
]


def test_a_date_filter_on_a_stored_datetime_differs_between_klstore_and_milvus(tmp_path: Any) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    kl = KLStore()
    mv = MilvusKLStore(uri=str(tmp_path / "days.db"), index_type="flat")
    try:
        for store in (kl, mv):
            store.add(gaussians=random_gaussians(2, K, seed=1), ids=DAY_IDS, metadatas=DAY_METAS)
        assert [d.metadata["day"] for d in mv.get_by_ids(DAY_IDS)] == ["2024-01-01T10:00:00", "2024-01-01"]
        got = [(flt, _day_hits(kl, flt), _day_hits(mv, flt)) for flt, _, _ in DATE_VS_DATETIME]
    finally:
        mv.close()
    assert got == DATE_VS_DATETIME


def _day_hits(store: Any, flt: Any) -> set[str]:
    return {h.id for h in store.search(random_gaussians(1, K, seed=2), k=len(DAY_IDS), filter=flt)}
