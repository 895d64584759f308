"""A dict filter nested deeper than ``MAX_FILTER_DEPTH`` levels is a ValueError naming the limit, not a RecursionError.

A service that passes users' JSON filters on to ``search`` got ``RecursionError`` (not the ``ValueError`` every other
malformed filter raises) for ``$and`` / ``$or`` nested some 330 levels deep, a field's ``$not`` chain of 400, or an
``$eq`` / ``$in`` value nested 900 levels deep: compiling and running a filter recurses once or more per level. The
nesting is now measured first, without recursion, and refused past :data:`kl_retrievers.filters.MAX_FILTER_DEPTH`
(dicts and lists alike); filters at the limit still compile and match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import random_gaussians
from kl_retrievers import filters
from kl_retrievers.filters import compile_filter
from kl_retrievers.store import KLStore

LIMIT = getattr(filters, "MAX_FILTER_DEPTH", 128)


def _and(levels: int, op: str = "$and") -> dict[str, Any]:
    spec: dict[str, Any] = {"i": 1}
    for _ in range(levels):
        spec = {op: [spec]}
    return spec


def _field_not(levels: int) -> dict[str, Any]:
    cond: Any = {"$gt": 0}
    for _ in range(levels):
        cond = {"$not": cond}
    return {"i": cond}


def _logical_not(levels: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"i": 1}
    for _ in range(levels):
        spec = {"$not": spec}
    return spec


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.fixture(scope="module")
def store() -> KLStore:
    s = KLStore()
    s.add(gaussians=random_gaussians(3, 4, seed=0), ids=["a", "b", "c"], metadatas=[{"i": 1}, {"i": 2}, {"i": 3}])
    return s


TOO_DEEP = {
    "$and x330": _and(330),
    "$or x400": _and(400, "$or"),
    "field $not x400": _field_not(400),
    "$not x900": _logical_not(900),
    "$eq value 900 deep": {"i": {"$eq": _nested(900)}},
    "$in value 900 deep": {"i": {"$in": [_nested(900)]}},
    "just past the limit": _and((LIMIT - 1) // 2 + 1),
}


@pytest.mark.parametrize("name", list(TOO_DEEP))
def test_a_filter_nested_past_the_limit_is_a_value_error(store: KLStore, name: str) -> None:
    spec = TOO_DEEP[name]
    query = random_gaussians(1, 4, seed=1)
    match = f"nests dicts and lists more than {LIMIT} levels deep"
    with pytest.raises(ValueError, match=match):
        store.search(query, k=3, filter=spec)
    with pytest.raises(ValueError, match=match):
        compile_filter(spec)


def test_filters_at_the_limit_compile_and_match(store: KLStore) -> None:
    query = random_gaussians(1, 4, seed=1)
    levels = (LIMIT - 1) // 2  # {"$and": [...]} is two levels (a dict, a list) around the innermost dict
    deepest = json.loads(json.dumps(_and(levels)))  # as a service would parse it
    assert [h.id for h in store.search(query, k=3, filter=deepest)] == ["a"]
    assert [h.id for h in store.search(query, k=3, filter=_and(levels, "$or"))] == ["a"]
    assert sorted(h.id for h in store.search(query, k=3, filter=_field_not(LIMIT - 2))) == ["a", "b", "c"]
    assert sorted(h.id for h in store.search(query, k=3, filter=_logical_not(LIMIT - 1))) == ["b", "c"]  # odd: NOT


def test_a_deep_value_within_the_limit_matches_stored_metadata_as_deep() -> None:
    s = KLStore()
    value = _nested(LIMIT - 2)  # {"v": {"$eq": value}}: two dicts around it
    s.add(gaussians=random_gaussians(2, 4, seed=0), ids=["deep", "flat"], metadatas=[{"v": value}, {"v": 1}])
    hits = s.search(random_gaussians(1, 4, seed=1), k=2, filter={"v": {"$eq": value}})
    assert [h.id for h in hits] == ["deep"]


def test_a_filter_that_holds_itself_is_a_value_error() -> None:
    looped: dict[str, Any] = {"i": 1}
    looped["$and"] = [looped]
    with pytest.raises(ValueError, match=f"more than {LIMIT} levels deep"):
        compile_filter(looped)


def test_long_flat_filters_are_not_limited() -> None:
    keys = {f"k{i}": i for i in range(1000)}
    wide = {"i": {"$in": [*range(100_000), [1, 2]]}, **keys}
    predicate = compile_filter(wide)
    assert predicate is not None and not predicate({"i": 5}) and predicate({"i": 5, **keys})


def test_the_milvus_store_refuses_a_filter_past_the_limit_as_klstore_does(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import to_milvus_expr
    from kl_retrievers.store import MilvusKLStore

    s = MilvusKLStore(uri=str(tmp_path / "depth.db"), collection_name="c", index_type="flat")
    s.add(gaussians=random_gaussians(3, 4, seed=0), ids=["a", "b", "c"], metadatas=[{"i": 1}, {"i": 2}, {"i": 3}])
    query = random_gaussians(1, 4, seed=1)
    match = f"nests dicts and lists more than {LIMIT} levels deep"
    for name in ("$and x330", "$or x400", "field $not x400", "$not x900", "just past the limit"):
        with pytest.raises(ValueError, match=match):
            s.search(query, k=3, filter=TOO_DEEP[name])
        with pytest.raises(ValueError, match=match):
            to_milvus_expr(TOO_DEEP[name])
    deepest = _and((LIMIT - 1) // 2)
    assert [h.id for h in s.search(query, k=3, filter=deepest)] == ["a"]
