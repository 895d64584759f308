"""LangChain ``KLVectorStore(bogus=1)`` raised ``TypeError: KLStore.__init__() got an unexpected keyword argument``:
the error now names ``KLVectorStore`` (a subclass by its own name), every unknown keyword with its closest option,
and every option it takes (read from ``__init__``) or passes to ``KLStore``."""

from __future__ import annotations

from typing import Any

import pytest

from kl_retrievers.langchain import KLVectorStore


@pytest.mark.parametrize(
    ("keyword", "closest"), [("bogus", None), ("index_typ", "index_type"), ("batchsize", "batch_size")]
)
def test_an_unknown_keyword_names_the_class_and_the_options(keyword: str, closest: str | None) -> None:
    with pytest.raises(TypeError) as info:
        options: dict[str, Any] = {keyword: 1}
        KLVectorStore(**options)
    message = str(info.value)
    assert message.startswith(f"KLVectorStore() got unexpected keyword argument(s) [{keyword!r}]")
    assert "KLStore.__init__" not in message and "'hnsw_m'" in message and "'relevance'" in message
    assert (f"{keyword}: did you mean {closest!r}" in message) == (closest is not None)


def test_every_unknown_keyword_is_named_and_a_subclass_by_its_name() -> None:
    class TaggedStore(KLVectorStore):
        def __init__(self, embedding: Any = None, *, tag: str = "", **kwargs: Any) -> None:
            super().__init__(embedding, **kwargs)

    options: dict[str, Any] = {"index_typ": "hnsw", "bogus": 1, "tga": "x"}
    with pytest.raises(TypeError) as info:
        TaggedStore(**options)
    message = str(info.value)
    assert message.startswith("TaggedStore() got unexpected keyword argument(s) ['bogus', 'index_typ', 'tga']")
    assert "index_typ: did you mean 'index_type'?" in message and "tga: did you mean 'tag'?" in message


def test_known_store_options_still_reach_the_store() -> None:
    assert KLVectorStore(index_type="hnsw", hnsw_m=8).store.hnsw_m == 8
