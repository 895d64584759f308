"""LangChain ``KLVectorStore(bogus=1)`` raised ``TypeError: KLStore.__init__() got an unexpected keyword argument``:
the error now names ``KLVectorStore``, the closest option and every option it takes or passes to ``KLStore``."""

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
    assert message.startswith(f"KLVectorStore() got an unexpected keyword argument {keyword!r}")
    assert "KLStore.__init__" not in message and "'hnsw_m'" in message and "'relevance'" in message
    assert (f"did you mean {closest!r}" in message) == (closest is not None)


def test_known_store_options_still_reach_the_store() -> None:
    assert KLVectorStore(index_type="hnsw", hnsw_m=8).store.hnsw_m == 8
