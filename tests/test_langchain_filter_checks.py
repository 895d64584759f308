"""LangChain filter checks: a malformed filter raises on an empty ``KLVectorStore`` as on a filled one (a
callable over Milvus included), and ``as_retriever(filter=...)``, which LangChain drops, is warned about."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder

pytest.importorskip("langchain_core")

from kl_retrievers.langchain import KLEmbeddings, KLRetriever, KLVectorStore

BAD = {"year": {"$gte_typo": 2020}}


def _store() -> KLVectorStore:
    return KLVectorStore(KLEmbeddings(make_tiny_encoder()))


@pytest.mark.parametrize("filled", [False, True])
def test_unknown_operator_raises_on_an_empty_store_too(filled: bool) -> None:
    vs = _store()
    if filled:
        vs.add_texts(["the cat"], [{"year": 2021}])
    calls = {
        "similarity_search": lambda: vs.similarity_search("cat", k=3, filter=BAD),
        "relevance": lambda: vs.similarity_search_with_relevance_scores("cat", k=3, filter=BAD),
        "mmr": lambda: vs.max_marginal_relevance_search("cat", k=3, filter=BAD),
        "retriever": lambda: KLRetriever.from_store(vs, filter=BAD).invoke("cat"),
        "as_retriever": lambda: vs.as_retriever(search_kwargs={"filter": BAD}).invoke("cat"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"unknown filter operator '\$gte_typo'"):
            call()
            pytest.fail(name)


def test_a_good_filter_on_an_empty_store_still_finds_nothing() -> None:
    vs = _store()
    assert vs.similarity_search("cat", k=3, filter={"year": {"$gte": 2020}}) == []
    assert vs.similarity_search("cat", k=3, filter=lambda m: True) == []
    assert KLRetriever.from_store(vs, filter={"year": 2021}).invoke("cat") == []


def test_callable_filter_over_an_empty_milvus_store_raises_as_over_a_filled_one(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    vs = KLVectorStore(
        KLEmbeddings(make_tiny_encoder()),
        store=MilvusKLStore(uri=str(tmp_path / "m.db"), collection_name="c", index_type="flat"),
    )
    with pytest.raises(ValueError, match="a callable cannot run inside Milvus") as empty:
        vs.similarity_search("cat", k=3, filter=lambda m: True)
    with pytest.raises(ValueError, match=r"unknown filter operator '\$gte_typo'"):
        vs.similarity_search("cat", k=3, filter=BAD)
    vs.add_texts(["the cat"], [{"year": 2021}])
    with pytest.raises(ValueError, match="a callable cannot run inside Milvus") as filled:
        vs.similarity_search("cat", k=3, filter=lambda m: True)
    assert str(empty.value) == str(filled.value)


def _warned(call: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("kwargs", [{"filter": {"tenant": "a"}}, {"k": 1}, {"filters": {"tenant": "a"}}])
def test_as_retriever_warns_about_a_search_option_outside_search_kwargs(kwargs: dict[str, Any]) -> None:
    vs = KLVectorStore.from_texts(
        ["the cat", "a dog"], KLEmbeddings(make_tiny_encoder()), [{"tenant": "a"}, {"tenant": "b"}]
    )
    retriever, messages = _warned(lambda: vs.as_retriever(**kwargs))
    (name,) = kwargs
    assert any(
        f"as_retriever ignores the keyword argument(s) [{name!r}]" in m and 'search_kwargs={"filter"' in m
        for m in messages
    ), messages
    # LangChain's behaviour is unchanged: the option is dropped and the search is not filtered
    assert retriever.search_kwargs == {}
    assert sorted(d.metadata["tenant"] for d in retriever.invoke("cat")) == ["a", "b"]


def test_as_retriever_with_its_own_fields_does_not_warn() -> None:
    vs = KLVectorStore.from_texts(
        ["the cat", "a dog"], KLEmbeddings(make_tiny_encoder()), [{"tenant": "a"}, {"tenant": "b"}]
    )
    retriever, messages = _warned(
        lambda: vs.as_retriever(
            search_type="similarity", search_kwargs={"filter": {"tenant": "a"}}, tags=["t"], metadata={}, name="r"
        )
    )
    assert not [m for m in messages if "as_retriever" in m], messages
    assert [d.metadata["tenant"] for d in retriever.invoke("cat")] == ["a"]
    assert "t" in (retriever.tags or []) and retriever.name == "r"
