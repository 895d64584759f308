"""LlamaIndex leftovers: set values in MetadataFilters, tie order under node_ids, from_defaults keywords.

* A set as the value of ``==``, ``!=``, an ordering or ``contains`` (assigned after construction:
  LlamaIndex's constructor makes a list of it) matched nothing; it is refused naming the key, as
  :mod:`kl_retrievers.filters` refuses one. ``in`` / ``nin`` / ``any`` / ``all`` take its elements.
* A query restricted by ``node_ids`` ranked tied nodes in the ``node_ids`` order; ties follow the
  store's rule (the later added first, docs/ann.md "Tied scores") as plain and filtered queries do.
* ``from_defaults(embed_model=...)`` raised ``KLRetriever.__init__() got an unexpected keyword`` (or
  ``KLStore.__init__()`` for the hybrid retriever, also for ``doc_ids`` / ``node_ids``).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers.llama_index import (
    KLEmbedding,
    KLHybridRetriever,
    KLRetriever,
    KLVectorStore,
    metadata_filters_to_predicate,
)


@pytest.fixture(scope="module")
def embed() -> KLEmbedding:
    return KLEmbedding(make_tiny_encoder(seed=3))


def _filters(key: str, operator: str, value: Any) -> MetadataFilters:
    """One filter whose value is assigned after construction (pydantic does not validate the assignment)."""
    f = MetadataFilter(key=key, value=["placeholder"], operator=FilterOperator(operator))
    f.value = value
    return MetadataFilters(filters=[f])


# ------------------------------------------------------------------------------- sets
@pytest.mark.parametrize(
    ("operator", "value", "hint"),
    [
        ("==", {"de", "en", "fr"}, 'operator="in"'),
        ("==", frozenset({"en"}), 'operator="in"'),
        ("!=", {"de", "en"}, 'operator="nin"'),
        (">", {1, 2}, "> compares with a single value"),
        ("<=", {1}, "<= compares with a single value"),
        ("contains", {"en"}, "contains compares with a single value"),
        ("==", ["en", {"de"}], "write its elements in a list"),
    ],
)
def test_set_value_compared_as_one_value_is_refused(operator: str, value: Any, hint: str) -> None:
    with pytest.raises(ValueError, match="filter on 'tags'") as info:
        metadata_filters_to_predicate(_filters("tags", operator, value))
    message = str(info.value)
    assert "which has no order to compare as a value" in message
    assert hint in message
    assert "in / nin / any / all" in message


def test_set_value_is_refused_by_the_store_and_the_retriever(embed: KLEmbedding) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}", metadata={"tags": ["de", "en", "fr"]}) for i, t in enumerate(HYBRID_TEXTS)]
    vs = KLVectorStore(encoder=embed)
    vs.add(nodes)
    filters = _filters("tags", "==", {"de", "en", "fr"})
    query = VectorStoreQuery(query_embedding=embed.get_query_embedding("cat"), similarity_top_k=3, filters=filters)
    with pytest.raises(ValueError, match="filter on 'tags'.*is a set"):
        vs.query(query)
    with pytest.raises(ValueError, match="filter on 'tags'.*is a set"):
        KLRetriever(vs, filters=filters)
    with pytest.raises(ValueError, match="filter on 'tags'.*is a set"):
        vs.get_nodes(filters=filters)


@pytest.mark.parametrize(
    ("operator", "value", "metadata", "expected"),
    [
        ("in", {"en", "de"}, {"lang": "de"}, True),
        ("in", {"en", "de"}, {"lang": "fr"}, False),
        ("nin", {"en", "de"}, {"lang": "fr"}, True),
        ("nin", frozenset({"en", "de"}), {"lang": "en"}, False),
        ("any", {"en", "xx"}, {"lang": ["de", "en"]}, True),
        ("all", {"en", "de"}, {"lang": ["de", "en", "fr"]}, True),
        ("all", {"en", "xx"}, {"lang": ["de", "en"]}, False),
    ],
)
def test_set_values_of_one_of_operators_still_work(
    operator: str, value: Any, metadata: dict[str, Any], expected: bool
) -> None:
    predicate = metadata_filters_to_predicate(_filters("lang", operator, value))
    assert predicate is not None
    assert predicate(metadata) is expected


def test_list_value_of_equality_is_unchanged() -> None:
    predicate = metadata_filters_to_predicate(
        MetadataFilters(filters=[MetadataFilter(key="tags", value=["de", "en"], operator=FilterOperator.EQ)])
    )
    assert predicate is not None
    assert predicate({"tags": ["de", "en"]}) and not predicate({"tags": ["en", "de"]})


# ------------------------------------------------------------------------- node_ids ties
def _tied_store(embed: KLEmbedding, n: int = 10) -> KLVectorStore:
    """``n`` nodes n0..n{n-1} with one and the same Gaussian (every score ties), added in that order."""
    vector = embed.get_text_embedding("the cat sat")
    vs = KLVectorStore()
    vs.add([TextNode(text="the cat sat", id_=f"n{i}", metadata={"p": i % 2}, embedding=vector) for i in range(n)])
    return vs


def _ids(vs: KLVectorStore, embed: KLEmbedding, **kwargs: Any) -> list[str]:
    query = VectorStoreQuery(query_embedding=embed.get_query_embedding("cat"), similarity_top_k=5, **kwargs)
    return list(vs.query(query).ids or [])


def test_node_ids_ties_follow_the_store_rule(embed: KLEmbedding) -> None:
    vs = _tied_store(embed)
    plain = _ids(vs, embed)
    assert plain == ["n9", "n8", "n7", "n6", "n5"]  # the later added first (docs/ann.md "Tied scores")
    everyone = [f"n{i}" for i in range(10)]
    assert _ids(vs, embed, node_ids=everyone) == plain
    assert _ids(vs, embed, node_ids=everyone[::-1]) == plain
    assert _ids(vs, embed, node_ids=["n3", "n9", "n0", "n5"]) == ["n9", "n5", "n3", "n0"]
    odd = MetadataFilters(filters=[MetadataFilter(key="p", value=1)])
    assert _ids(vs, embed, node_ids=everyone, filters=odd) == _ids(vs, embed, filters=odd)


def test_node_ids_ties_follow_a_re_added_node(embed: KLEmbedding) -> None:
    vs = _tied_store(embed, n=4)
    vs.add([TextNode(text="the cat sat", id_="n0", embedding=embed.get_text_embedding("the cat sat"))])  # upsert
    assert _ids(vs, embed) == ["n0", "n3", "n2", "n1"]
    assert _ids(vs, embed, node_ids=["n1", "n2", "n3", "n0"]) == ["n0", "n3", "n2", "n1"]


def test_node_ids_without_ties_rank_by_score(embed: KLEmbedding) -> None:
    vs = KLVectorStore(encoder=embed)
    vs.add([TextNode(text=t, id_=f"n{i}") for i, t in enumerate(HYBRID_TEXTS)])
    everyone = [f"n{i}" for i in range(len(HYBRID_TEXTS))]
    expected = _ids(vs, embed)
    assert _ids(vs, embed, node_ids=everyone) == expected
    assert _ids(vs, embed, node_ids=everyone[::-1]) == expected


# ------------------------------------------------------------------------ from_defaults
def _nodes() -> list[TextNode]:
    return [TextNode(text=t, id_=f"n{i}", metadata={"n": i}) for i, t in enumerate(HYBRID_TEXTS)]


def _needs_bm25(cls: Any) -> None:
    if cls is KLHybridRetriever:
        pytest.importorskip("bm25s")  # the hybrid extra


def _hit_ids(retriever: Any, query: str = "the cat sat on the mat") -> list[str]:
    return [h.node.node_id for h in retriever.retrieve(query)]


@pytest.mark.parametrize("cls", [KLRetriever, KLHybridRetriever])
def test_from_defaults_takes_a_kl_embedding_as_embed_model(cls: Any, embed: KLEmbedding) -> None:
    _needs_bm25(cls)
    by_embed_model = cls.from_defaults(nodes=_nodes(), embed_model=embed, similarity_top_k=3)
    by_encoder = cls.from_defaults(nodes=_nodes(), encoder=embed, similarity_top_k=3)
    assert _hit_ids(by_embed_model) == _hit_ids(by_encoder)
    assert len(_hit_ids(by_embed_model)) == 3
    same = cls.from_defaults(nodes=_nodes(), encoder=embed.encoder, embed_model=embed, similarity_top_k=3)
    assert _hit_ids(same) == _hit_ids(by_encoder)


@pytest.mark.parametrize("cls", [KLRetriever, KLHybridRetriever])
def test_from_defaults_refuses_another_embed_model(cls: Any, embed: KLEmbedding) -> None:
    _needs_bm25(cls)
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.from_defaults: embed_model must be a KLEmbedding") as info:
        cls.from_defaults(nodes=_nodes(), embed_model=MockEmbedding(embed_dim=8))
    assert "MockEmbedding" in str(info.value) and "encoder=" in str(info.value)
    other = make_tiny_encoder(seed=4)
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.from_defaults: got both encoder= and embed_model="):
        cls.from_defaults(nodes=_nodes(), encoder=other, embed_model=embed)


@pytest.mark.parametrize("name", ["doc_ids", "node_ids"])
def test_hybrid_from_defaults_says_how_to_restrict(name: str, embed: KLEmbedding) -> None:
    _needs_bm25(KLHybridRetriever)
    with pytest.raises(ValueError, match=rf"KLHybridRetriever\.from_defaults: {name}= is not supported") as info:
        restriction: dict[str, Any] = {name: ["n0"]}
        KLHybridRetriever.from_defaults(nodes=_nodes(), encoder=embed, **restriction)
    assert "ref_doc_id" in str(info.value) and "KLStore.__init__" not in str(info.value)


def test_hybrid_ref_doc_id_filter_restricts_to_source_documents(embed: KLEmbedding) -> None:
    # the restriction the error message suggests instead of doc_ids=
    _needs_bm25(KLHybridRetriever)
    nodes = _nodes()
    for i, node in enumerate(nodes):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i % 2}")
    filters = MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value=["doc1"], operator=FilterOperator.IN)])
    retriever = KLHybridRetriever.from_defaults(nodes=nodes, encoder=embed, filters=filters, similarity_top_k=6)
    hits = retriever.retrieve("the cat sat on the mat")
    assert sorted(h.node.node_id for h in hits) == ["n1", "n3", "n5"]
    assert {h.node.ref_doc_id for h in hits} == {"doc1"}


# ----------------------------------------------------------------- review leftovers
def test_node_ids_ties_read_only_the_restricted_rows(embed: KLEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tie rule reads the restricted nodes' rows, not every live id (KLStore.ids: 102 ms a query at 500k)."""
    from kl_retrievers.index import KLStore

    vs = _tied_store(embed, n=6)

    def every_id(self: Any) -> list[str]:
        raise AssertionError("KLStore.ids read for a node_ids query")

    monkeypatch.setattr(KLStore, "ids", property(every_id))
    assert _ids(vs, embed, node_ids=["n1", "n4", "n2"]) == ["n4", "n2", "n1"]


@pytest.mark.parametrize("operator", ["text_match", "text_match_insensitive"])
@pytest.mark.parametrize("value", [{"cat"}, frozenset({"cat"}), {"cat": 1}.keys()])
def test_text_match_with_a_set_is_refused(operator: str, value: Any) -> None:
    """A set assigned after construction matched nothing (text_match takes a string)."""
    with pytest.raises(ValueError, match=rf"filter on 'tags': {operator} takes a string") as info:
        metadata_filters_to_predicate(_filters("tags", operator, value))
    assert type(value).__name__ in str(info.value)
    matches = metadata_filters_to_predicate(_filters("tags", operator, "Cat"))
    assert matches is not None and matches({"tags": "a Cat sat"})


def test_from_defaults_uses_a_kl_embedding_in_settings(embed: KLEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.embed_model = KLEmbedding(...) is the encoder when none is given (before the package's default)."""
    from llama_index.core import Settings

    import kl_retrievers.pretrained as pretrained

    def no_default(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the package's default model was loaded")

    monkeypatch.setattr(pretrained, "load_default_model", no_default)
    monkeypatch.setattr(Settings, "_embed_model", embed)
    retriever = KLRetriever.from_defaults(nodes=_nodes(), similarity_top_k=3)
    assert retriever._encoder is embed.encoder
    assert _hit_ids(retriever) == _hit_ids(KLRetriever.from_defaults(nodes=_nodes(), encoder=embed, similarity_top_k=3))
    pytest.importorskip("bm25s")  # the hybrid extra
    hybrid = KLHybridRetriever.from_defaults(nodes=_nodes(), similarity_top_k=3)
    assert hybrid._store.kl.encoder is embed.encoder
    # another global embedding is not used (nor is OpenAI resolved): the package's default model is
    monkeypatch.setattr(Settings, "_embed_model", MockEmbedding(embed_dim=8))
    with pytest.raises(AssertionError, match="the package's default model was loaded"):
        KLRetriever.from_defaults(nodes=_nodes())


@pytest.mark.parametrize(
    ("operator", "value", "hint"),
    [
        ("==", set(range(100_000)), 'operator="in"'),
        ("!=", set(range(100_000)), 'operator="nin"'),
        (">", set(range(100_000)), "> compares with a single value"),
        ("==", [*range(100_000), {1}], "write its elements in a list"),
        ("text_match", set(range(100_000)), "text_match takes a string"),
    ],
)
def test_set_value_error_message_is_shortened(operator: str, value: Any, hint: str) -> None:
    """A large set (or a long list holding one) is shortened in the message, as kl_retrievers.filters does."""
    with pytest.raises(ValueError, match="filter on 'tags'") as info:
        metadata_filters_to_predicate(_filters("tags", operator, value))
    message = str(info.value)
    assert hint in message
    assert len(message) < 1_000, len(message)
    assert "..." in message
