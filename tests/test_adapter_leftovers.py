"""Adapter and import leftovers.

* LlamaIndex ``MetadataFilters`` reached the store as a callable, so a repeated filter was called once per
  stored document on every query: the filters with an exact JSON form (``==``, ``!=``, orderings, ``in``,
  ``nin`` on JSON values other than ``None``, in any AND / OR / NOT nesting) now reach it in that form,
  whose allowed rows ``KLStore`` (and the hybrid store's KL half) caches. Every operator gives the verdicts
  of ``metadata_filters_to_predicate`` (the former path), on missing keys, ``None`` and mismatched types.
* LangChain's ``KLEmbeddings`` passed ``KLStore``'s encoder check but its ``encode_documents`` took no
  ``batch_size``: ``KLStore(KLEmbeddings(enc)).add(texts)`` raised ``TypeError``. It takes the store's
  ``batch_size`` / ``show_progress_bar`` (and tells the store whether the encoder is batch-invariant). A save
  of such a store recorded no model (no name, config or weights identity): it records its encoder's, as
  ``KLStore(enc)`` does, so the reloaded store loads that model to encode text.
* ``import kl_retrievers.training.trainer`` without torch raised the bare "No module named 'torch'"; it names
  the ``[train]`` extra, as ``kl_retrievers.training.trainer`` read as an attribute does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import count_compiled_filter_calls

pytest.importorskip("llama_index.core")

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians, kl_query_vectors
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import (
    SUPPORTED_FILTER_OPERATORS,
    KLHybridRetriever,
    KLVectorStore,
    _store_filter,
    metadata_filters_to_predicate,
)
from kl_retrievers.store import KLStore

DIM = 4
#: The operators with an exact JSON form (the others always reach the store as the predicate).
EXACT = ("==", "!=", ">", ">=", "<", "<=", "in", "nin")

# Field values as a store keeps them (JSON), and filter values of every kind an operator may meet
# (assigned after construction, as LlamaIndex's model validates only the constructor's value).
FIELD_VALUES: list[Any] = [None, "", "Alpha beta", "beta", 0, 3, 3.0, 3.5, -1, True, False, [], ["a", "b"], [3]]
FIELD_VALUES.append({"x": 1})
FILTER_VALUES: list[Any] = [
    "beta",
    "",
    3,
    3.0,
    2.5,
    True,
    0,
    ["a", 3],
    ["b"],
    [],
    ("a", 3),
    [None, 3],
    [["a", "b"]],
    {"x": 1},
    None,
    float("nan"),
]


def _metadatas() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}, {"g": 1}]  # the field missing
    out += [{"f": v} for v in FIELD_VALUES]
    out += [{"f": v, "g": w} for v, w in itertools.product(FIELD_VALUES[:7], FIELD_VALUES[4:9])]
    return out


def _leaf(key: str, op: str, value: Any) -> MetadataFilter:
    f = MetadataFilter(key=key, value="placeholder", operator=FilterOperator(op))
    f.value = value  # any value, as a caller may assign it
    return f


def _one(op: str, value: Any) -> MetadataFilters:
    return MetadataFilters(filters=[_leaf("f", op, value)])


def _verdicts_through_the_store_filter(spec: MetadataFilters, metas: Sequence[dict[str, Any]]) -> list[bool]:
    """What the store allows for ``spec``: the JSON form compiled as the store compiles it, else the predicate."""
    where = _store_filter(spec, metadata_filters_to_predicate(spec))
    predicate = compile_filter(where)  # type: ignore[arg-type]
    assert predicate is not None
    return [bool(predicate(m)) for m in metas]


# ------------------------------------------------------------------ verdicts: every operator, as before
@pytest.mark.parametrize("op", SUPPORTED_FILTER_OPERATORS)
def test_each_operator_allows_what_the_predicate_allows(op: str) -> None:
    metas = _metadatas()
    compared, as_json = 0, 0
    for value in FILTER_VALUES:
        spec = _one(op, value)
        expected = metadata_filters_to_predicate(spec)
        assert expected is not None
        assert _verdicts_through_the_store_filter(spec, metas) == [bool(expected(m)) for m in metas], (op, value)
        compared += 1
        as_json += isinstance(_store_filter(spec, expected), dict)
    assert compared == len(FILTER_VALUES)
    # the exact operators go as JSON for their plain values (not None, a None among in / nin values, a tuple
    # for the others: compared as the store keeps it); the others never
    assert (as_json > 0) is (op in EXACT), (op, as_json)


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("==", "beta", {"f": {"$eq": "beta"}}),
        ("!=", 3, {"f": {"$ne": 3}}),
        (">=", 2.5, {"f": {"$gte": 2.5}}),
        ("<", ["a", 3], {"f": {"$lt": ["a", 3]}}),
        ("in", "beta", {"f": {"$in": ["beta"]}}),
        ("in", ("a", 3), {"f": {"$in": ["a", 3]}}),
        ("nin", ["a", 3], {"f": {"$nin": ["a", 3]}}),
        ("==", None, None),  # a stored None satisfies LlamaIndex's != / nin and never its == / in
        ("nin", [None, 3], None),
        ("!=", ("a", 3), None),  # a tuple is compared as the list the store keeps in the JSON form
        ("contains", "a", None),
        ("any", ["a"], None),
        ("all", ["a"], None),
        ("text_match", "beta", None),
        ("text_match_insensitive", "beta", None),
        ("is_empty", None, None),
    ],
)
def test_the_json_form_of_one_filter(op: str, value: Any, expected: dict[str, Any] | None) -> None:
    spec = _one(op, value)
    predicate = metadata_filters_to_predicate(spec)
    where = _store_filter(spec, predicate)
    assert where == expected if expected is not None else where is predicate


@pytest.mark.parametrize("condition", ["and", "or", "not"])
@pytest.mark.parametrize("count", [0, 1, 2, 3])
@pytest.mark.parametrize("exact", [True, False])
def test_conditions_and_nesting_allow_what_the_predicate_allows(condition: str, count: int, exact: bool) -> None:
    inner = MetadataFilters(
        filters=[_leaf("f", "<", 3.5) if exact else _leaf("f", "is_empty", None), _leaf("g", "nin", [0, 3])],
        condition=FilterCondition.OR,
    )
    negated = MetadataFilters(
        filters=[_leaf("g", "==", 3), _leaf("f", "in", ["beta", 3])], condition=FilterCondition.NOT
    )
    leaves: list[MetadataFilter | MetadataFilters] = [_leaf("f", ">=", 0), inner, negated]
    spec = MetadataFilters(filters=leaves[:count], condition=FilterCondition(condition))
    predicate = metadata_filters_to_predicate(spec)
    assert predicate is not None
    metas = _metadatas()
    got = _verdicts_through_the_store_filter(spec, metas)
    assert got == [bool(predicate(m)) for m in metas]
    if count:
        assert set(got) == {True, False}  # the grid tells the conditions apart
    # JSON unless the is_empty leaf (no JSON form) is in it
    assert isinstance(_store_filter(spec, predicate), dict) is (exact or count < 2)


# ------------------------------------------------------------------ the store caches what an exact filter allows
@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of every predicate the stores compile (``calls[0]``)."""
    return count_compiled_filter_calls(monkeypatch)


def _vector_store(metas: list[dict[str, Any]]) -> tuple[KLVectorStore, list[float]]:
    rng = np.random.default_rng(3)
    n = len(metas)
    g = Gaussians(rng.normal(size=(n, DIM)), rng.uniform(0.5, 2.0, size=(n, DIM)))
    store = KLStore(dim=DIM)
    store.add([f"t{i}" for i in range(n)], gaussians=g, ids=[f"d{i}" for i in range(n)], metadatas=metas)
    q = list(kl_query_vectors(Gaussians(rng.normal(size=(1, DIM)), np.ones((1, DIM))))[0])
    return KLVectorStore(store), q


def test_a_repeated_exact_filter_is_not_called_again_per_document(calls: list[int]) -> None:
    metas = _metadatas()
    vs, q = _vector_store(metas)
    calls[0] = 0  # creation's one pass over the stored metadata (non-text nodes, reserved keys) is not the query's
    spec = MetadataFilters(
        filters=[
            _leaf("f", "!=", "beta"),
            MetadataFilters(filters=[_leaf("g", "in", [0, 3]), _leaf("f", "<", 3)], condition=FilterCondition.OR),
        ]
    )
    predicate = metadata_filters_to_predicate(spec)
    assert predicate is not None
    expected = {f"d{i}" for i, m in enumerate(metas) if predicate(m)}
    assert expected and len(expected) < len(metas)
    query = VectorStoreQuery(query_embedding=q, similarity_top_k=len(metas), filters=spec)
    assert set(vs.query(query).ids or []) == expected
    assert calls[0] == len(metas)  # once per document
    assert set(vs.query(query).ids or []) == expected
    assert calls[0] == len(metas)  # the rows the store cached: not called again


def test_a_filter_without_json_form_is_still_called_per_document(calls: list[int]) -> None:
    metas = _metadatas()
    vs, q = _vector_store(metas)
    calls[0] = 0  # creation's one pass over the stored metadata (non-text nodes, reserved keys) is not the query's
    spec = MetadataFilters(filters=[_leaf("f", ">=", 0), _leaf("f", "contains", "a")], condition=FilterCondition.OR)
    predicate = metadata_filters_to_predicate(spec)
    assert predicate is not None
    expected = {f"d{i}" for i, m in enumerate(metas) if predicate(m)}
    query = VectorStoreQuery(query_embedding=q, similarity_top_k=len(metas), filters=spec)
    for round_ in (1, 2):
        assert set(vs.query(query).ids or []) == expected
        assert calls[0] == round_ * len(metas)


class _Encoder:
    """A deterministic Gaussian encoder over letter counts (no model), recording each call."""

    name_or_path = "letter-counts"

    def __init__(self, batch_invariant: bool = True) -> None:
        self.batch_invariant = batch_invariant
        self.calls: list[tuple[str, int | None, bool | None]] = []

    def _gaussians(self, texts: Sequence[str]) -> Gaussians:
        mean = np.array([[t.count(c) for c in "aeiou"[:DIM]] for t in texts], dtype=np.float32).reshape(-1, DIM)
        return Gaussians(mean * 0.5, np.ones_like(mean))

    def encode_queries(
        self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> Gaussians:
        self.calls.append(("queries", batch_size, show_progress_bar))
        return self._gaussians(texts)

    def encode_documents(
        self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> Gaussians:
        self.calls.append(("documents", batch_size, show_progress_bar))
        return self._gaussians(texts)


def test_the_hybrid_retriever_passes_an_exact_filter_as_json(calls: list[int]) -> None:
    texts = ["the cat sat on the mat", "a dog in the sun", "green tea and bread", "the moon and the star"]
    metas: list[dict[str, Any]] = [{"year": 2020}, {"year": 2021}, {"year": None}, {}]
    store = KLHybridStore(_Encoder())
    store.add(texts, ids=["a", "b", "c", "d"], metadatas=metas)
    values: list[int | None] = [2021]
    spec = MetadataFilters(filters=[_leaf("year", "nin", values)])
    retriever = KLHybridRetriever(store, similarity_top_k=4, filters=spec)
    assert {n.node.node_id for n in retriever.retrieve("the cat")} == {"a", "c", "d"}
    first = calls[0]
    assert first == len(texts)
    assert {n.node.node_id for n in retriever.retrieve("the cat")} == {"a", "c", "d"}
    assert calls[0] == first  # cached
    # the filter's own list, changed afterwards, is read as the predicate reads it; with a None in it (no JSON
    # form: a stored None satisfies LlamaIndex's nin whatever its values) the predicate is passed
    values.append(2020)
    assert {n.node.node_id for n in retriever.retrieve("the cat")} == {"c", "d"}
    values.append(None)
    assert {n.node.node_id for n in retriever.retrieve("the cat")} == {"c", "d"}


# ------------------------------------------------------------------ LangChain: KLEmbeddings as a store's encoder
def test_a_store_encodes_with_klembeddings_as_with_its_encoder() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    texts = ["a cat", "an eel", "you and i", "oak"]
    own, wrapped = _Encoder(), _Encoder()
    plain = KLStore(own, batch_size=3)
    store = KLStore(KLEmbeddings(wrapped, batch_size=5), batch_size=3)
    assert plain.add(texts, ids=list("abcd")) == store.add(texts, ids=list("abcd"))
    hits = [(r.id, r.score) for r in store.search("a cat", k=4)]
    assert hits == [(r.id, r.score) for r in plain.search("a cat", k=4)]
    assert wrapped.calls == own.calls == [("documents", 3, False), ("queries", 3, False)]  # the store's batch size
    # the wrapper's own settings where none is given
    embeddings = KLEmbeddings(wrapped, batch_size=5, show_progress_bar=True)
    wrapped.calls.clear()
    embeddings.encode_documents(texts)
    embeddings.encode_queries(texts)
    embeddings.encode_documents(texts, batch_size=2, show_progress_bar=False)
    embeddings.encode_queries(texts, batch_size=2)
    own_settings, given = (
        [("documents", 5, True), ("queries", 5, False)],
        [("documents", 2, False), ("queries", 2, False)],
    )
    assert wrapped.calls == own_settings + given


def test_a_store_encodes_queries_one_at_a_time_through_klembeddings_of_a_batch_dependent_encoder() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings

    int8 = _Encoder(batch_invariant=False)
    embeddings = KLEmbeddings(int8)
    assert embeddings.batch_invariant is False
    store = KLStore(embeddings)
    store.add(["a cat", "an eel"], ids=["a", "b"])
    store.search_batch(["a cat", "eel"], k=1)
    assert int8.calls[-1] == ("queries", 1, False)  # as KLStore(int8) encodes them
    assert KLEmbeddings(_Encoder()).batch_invariant is True


def test_a_store_saved_through_klembeddings_records_its_model(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    import json

    from conftest import make_tiny_encoder
    from kl_retrievers import GaussianEncoder
    from kl_retrievers.langchain import KLEmbeddings

    make_tiny_encoder(seed=3).save_pretrained(tmp_path / "enc")
    encoder = GaussianEncoder.from_pretrained(tmp_path / "enc")
    records = {}
    for label, given in (("plain", encoder), ("wrapped", KLEmbeddings(encoder))):
        store = KLStore(encoder=given)
        store.add(["a b", "c d"], ids=["1", "2"])
        path = store.save(tmp_path / label)
        records[label] = json.loads((path / "config.json").read_text())["encoder"]
        loaded = KLStore.load(path)
        assert loaded.saved_encoder == str((tmp_path / "enc").resolve())
        assert [h.id for h in loaded.search("a b", k=1)] == ["1"]  # the reloaded store encodes text
    assert records["wrapped"] == records["plain"]
    assert records["wrapped"]["weights_sha256"] == encoder.weights_sha256


# ------------------------------------------------------------------ training.trainer without torch
def test_importing_the_trainer_without_torch_names_the_extra(tmp_path: Path) -> None:
    from test_dependency_floors import _run_training_without_torch

    out = _run_training_without_torch(
        tmp_path,
        """
        try:
            import kl_retrievers.training.trainer
        except ModuleNotFoundError as exc:
            print("name:", exc.name, "cause:", type(exc.__cause__).__name__, "message:", exc)
        """,
    ).splitlines()
    assert len(out) == 1, out
    assert out[0].startswith("name: torch cause: ModuleNotFoundError message:"), out
    assert "kl_retrievers.training.trainer needs torch" in out[0] and 'pip install "kl-retrievers[train]"' in out[0]


def test_loading_a_store_with_an_unloaded_klembeddings_loads_no_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KLStore.load(path, encoder=KLEmbeddings()) loads the default model only when a text needs encoding."""
    import kl_retrievers.langchain as lc
    from kl_retrievers.gaussian import Gaussians
    from kl_retrievers.store import KLStore

    rng = np.random.default_rng(0)
    store = KLStore()
    store.add(["a", "b", "c"], gaussians=Gaussians(rng.normal(size=(3, 4)), np.ones((3, 4))), ids=["a", "b", "c"])
    store.save(tmp_path / "st")

    def refuse(backend: object = None) -> None:
        raise ImportError("no model may be loaded here")

    monkeypatch.setattr(lc, "_load_default_encoder", refuse)
    loaded = KLStore.load(tmp_path / "st", encoder=lc.KLEmbeddings())
    hits = loaded.search(Gaussians(rng.normal(size=(1, 4)), np.ones((1, 4))), k=2)
    assert len(hits) == 2
