"""Adapter speed-ups that must not change results (benchmarks/adapter_latency.py times them).

* LlamaIndex ``MetadataFilters`` are compiled to per-operator tests once per filter instead of
  dispatching on the operator for every stored document: the verdicts must be those of the former
  general form (kept below as the reference) for every operator, value type and condition.
* LangChain's ``KLRetriever`` builds each returned ``Document`` once from the store's hits: the
  documents must be those of ``similarity_search_with_score`` plus the three score keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("langchain_core")

from llama_index.core.vector_stores import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.llama_index import SUPPORTED_FILTER_OPERATORS, metadata_filters_to_predicate

Predicate = Callable[[Mapping[str, Any]], bool]


# ------------------------------------------------------------------ the former compiler, as the reference
def _reference_one(key: str, op: str, ref: Any) -> Predicate:
    def as_values(value: Any) -> list[Any]:
        return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]

    def safe(fn: Callable[[], Any]) -> bool:
        try:
            return bool(fn())
        except TypeError:
            return False

    def test(v: Any) -> bool:
        if op == "is_empty":
            return v is None or v == "" or (isinstance(v, (list, tuple)) and len(v) == 0)
        if v is None:
            return op in ("!=", "nin")
        if op == "==":
            return bool(v == ref)
        if op == "!=":
            return bool(v != ref)
        if op == ">":
            return safe(lambda: v > ref)
        if op == ">=":
            return safe(lambda: v >= ref)
        if op == "<":
            return safe(lambda: v < ref)
        if op == "<=":
            return safe(lambda: v <= ref)
        if op == "in":
            return any(v == x for x in as_values(ref))
        if op == "nin":
            return all(v != x for x in as_values(ref))
        if op == "contains":
            return safe(lambda: ref in v)
        if op in ("text_match", "text_match_insensitive"):
            if not (isinstance(v, str) and isinstance(ref, str)):
                return False
            return ref in v if op == "text_match" else ref.lower() in v.lower()
        have, wanted = as_values(v), as_values(ref)
        if op == "any":
            return any(w in have for w in wanted)
        return all(w in have for w in wanted)

    return lambda m: test(m.get(key))


def _reference(filters: MetadataFilters) -> Predicate:
    parts = [
        _reference(f) if isinstance(f, MetadataFilters) else _reference_one(f.key, str(f.operator.value), f.value)
        for f in filters.filters
    ]
    condition = str((filters.condition or FilterCondition.AND).value)
    if condition == "and":
        return lambda m: all(p(m) for p in parts)
    if condition == "or":
        return lambda m: any(p(m) for p in parts) if parts else True
    return lambda m: not any(p(m) for p in parts)


# Field values as a store keeps them (JSON types), and filter values of every kind an operator meets.
_FIELD_VALUES: list[Any] = [None, "", "Alpha beta", "beta", 0, 3, 3.5, -1, True, False, [], ["a", "b"], [3], {"x": 1}]
_FILTER_VALUES: list[Any] = ["beta", "BETA", "", 3, 3.0, 2.5, True, ["a", 3], ["b"], [], ("a",), None, 0]


def _metadatas() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}, {"f": 1, "g": 0}]  # the field missing; a row no leaf below allows
    out += [{"f": v} for v in _FIELD_VALUES]
    out += [{"f": v, "g": w} for v, w in itertools.product(_FIELD_VALUES[:6], _FIELD_VALUES[4:9])]
    return out


@pytest.mark.parametrize("op", SUPPORTED_FILTER_OPERATORS)
def test_each_operator_gives_the_former_verdicts(op: str) -> None:
    metas = _metadatas()
    compared = 0
    for ref in _FILTER_VALUES:
        try:
            spec = MetadataFilters(filters=[MetadataFilter(key="f", value=ref, operator=FilterOperator(op))])
        except ValueError:  # a value LlamaIndex's own model refuses for this operator
            continue
        new, old = metadata_filters_to_predicate(spec), _reference(spec)
        assert new is not None
        for m in metas:
            assert new(m) is old(m), (op, ref, m)
            compared += 1
    assert compared > 0


@pytest.mark.parametrize("condition", ["and", "or", "not"])
@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_conditions_and_nesting_give_the_former_verdicts(condition: str, count: int) -> None:
    leaves: list[MetadataFilter | MetadataFilters] = [
        MetadataFilter(key="f", value=3, operator=FilterOperator(">=")),
        MetadataFilter(key="g", value=[3], operator=FilterOperator("in")),
        MetadataFilters(
            filters=[
                MetadataFilter(key="f", value="", operator=FilterOperator("is_empty")),
                MetadataFilter(key="g", value=0, operator=FilterOperator("!=")),
            ],
            condition=FilterCondition.OR,
        ),
    ]
    spec = MetadataFilters(filters=leaves[:count], condition=FilterCondition(condition))
    new, old = metadata_filters_to_predicate(spec), _reference(spec)
    assert new is not None
    verdicts = [(new(m), old(m)) for m in _metadatas()]
    assert all(bool(a) is bool(b) for a, b in verdicts), verdicts
    if count:
        assert {bool(a) for a, _ in verdicts} == {True, False}  # the grid tells the conditions apart


def test_an_in_filter_reads_its_list_at_each_call_as_before() -> None:
    values = ["a"]
    spec = MetadataFilters(filters=[MetadataFilter(key="f", value=values, operator=FilterOperator("in"))])
    pred = metadata_filters_to_predicate(spec)
    assert pred is not None and pred({"f": "a"}) and not pred({"f": "b"})
    held = spec.filters[0]
    assert isinstance(held, MetadataFilter) and isinstance(held.value, list)
    cast(list[Any], held.value).append("b")  # the filter's own list, changed after compiling
    assert pred({"f": "b"}) is _reference(spec)({"f": "b"}) is True


def test_filtered_queries_return_what_the_reference_filter_returns() -> None:
    from llama_index.core.vector_stores import VectorStoreQuery

    from kl_retrievers.gaussian import kl_query_vectors
    from kl_retrievers.llama_index import KLVectorStore
    from kl_retrievers.store import KLStore

    rng = np.random.default_rng(3)
    n, dim = 60, 8
    g = Gaussians(rng.normal(size=(n, dim)), rng.uniform(0.5, 2.0, size=(n, dim)))
    store = KLStore(dim=dim)
    metas = [{"year": 2000 + i % 7, "tags": ["a", "b"][: i % 3], "name": f"Doc {i}"} for i in range(n)]
    store.add([f"t{i}" for i in range(n)], gaussians=g, ids=[f"d{i}" for i in range(n)], metadatas=metas)
    vs = KLVectorStore(store)
    spec = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2003, operator=FilterOperator(">")),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="tags", value=["b"], operator=FilterOperator("any")),
                    MetadataFilter(key="name", value="doc 1", operator=FilterOperator("text_match_insensitive")),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    q = list(kl_query_vectors(Gaussians(rng.normal(size=(1, dim)), np.ones((1, dim))))[0])
    got = vs.query(VectorStoreQuery(query_embedding=q, similarity_top_k=n, filters=spec))
    ref = _reference(spec)
    expected = {f"d{i}" for i, m in enumerate(metas) if ref(m)}
    assert expected and len(expected) < n
    assert set(got.ids or []) == expected


# ------------------------------------------------------------------ LangChain: one Document per hit
def test_langchain_retriever_documents_are_the_store_hits_with_scores() -> None:
    from langchain_core.documents import Document

    from kl_retrievers.calibration import ConfidenceCalibrator
    from kl_retrievers.langchain import KLRetriever, KLVectorStore
    from kl_retrievers.store import KLStore

    rng = np.random.default_rng(5)
    n, dim = 30, 6
    g = Gaussians(rng.normal(size=(n, dim)), rng.uniform(0.5, 2.0, size=(n, dim)))
    store = KLStore(dim=dim)
    metas = [{"i": i, "nested": {"tags": ["x", i]}} for i in range(n)]
    store.add([f"text {i}" for i in range(n)], gaussians=g, ids=[f"d{i}" for i in range(n)], metadatas=metas)

    class Encoder:
        name_or_path = "fixed-query"

        def encode_queries(self, texts: list[str], **_: Any) -> Gaussians:
            return Gaussians(np.full((len(texts), dim), 0.3), np.ones((len(texts), dim)))

        def encode_documents(self, texts: list[str], **_: Any) -> Gaussians:  # pragma: no cover - not called
            raise AssertionError

    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
    vs = KLVectorStore(Encoder(), store=store)
    retriever = KLRetriever(vectorstore=vs, k=4, calibrator=cal)
    docs = retriever.invoke("q")
    pairs = vs.similarity_search_with_score("q", k=4)
    scores = [s for _, s in vs.similarity_search_with_score("q", k=10)]
    uncertainty = float(np.asarray(Encoder().encode_queries(["q"]).uncertainty())[0])
    confidence = cal.confidence(scores[:2], uncertainty)
    assert docs == [
        Document(
            id=d.id,
            page_content=d.page_content,
            metadata={**d.metadata, "neg_kl": s, "query_uncertainty": uncertainty, "confidence": confidence},
        )
        for d, s in pairs
    ]
    docs[0].metadata["nested"]["tags"].append("changed")  # the caller's copy, not the store's
    first = str(docs[0].id)
    assert store.get_by_ids([first])[0].metadata["nested"]["tags"] == ["x", int(first[1:])]
