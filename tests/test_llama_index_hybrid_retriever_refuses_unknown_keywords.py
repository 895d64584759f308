"""The LlamaIndex ``KLHybridRetriever`` constructor refuses an unknown keyword as ``KLRetriever`` does.

It answered ``encoder=`` / ``embed_model=`` (which ``from_defaults`` takes) or a typo with Python's bare
``KLHybridRetriever.__init__() got an unexpected keyword argument``; the refusal now names each unknown keyword,
its closest option, every option, and for ``encoder`` / ``embed_model`` what to do instead.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("bm25s")  # the hybrid extra

from conftest import CountingEncoder
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import KLEmbedding, KLHybridRetriever

OPTIONS = (
    "['store', 'similarity_top_k', 'fusion', 'weight', 'normalization', 'filters', 'calibrator', "
    "'callback_manager', 'verbose', 'object_map', 'objects']"
)


@pytest.mark.parametrize("keyword", ["encoder", "embed_model"])
def test_encoder_or_embed_model_says_the_store_encodes_the_queries(keyword: str) -> None:
    store = KLHybridStore(CountingEncoder(), fusion="rrf")
    wrong: dict[str, Any] = {keyword: KLEmbedding(CountingEncoder())}
    with pytest.raises(TypeError) as raised:
        KLHybridRetriever(store, **wrong)
    message = str(raised.value)
    assert message.startswith(f"KLHybridRetriever() got unexpected keyword argument(s) [{keyword!r}] ({keyword}: ")
    assert (
        "KLHybridStore(encoder)" in message and "KLHybridRetriever.from_defaults(store=store, embed_model=" in message
    )
    assert message.endswith(f"it takes {OPTIONS}")


def test_a_typo_names_the_closest_option_and_every_option() -> None:
    store = KLHybridStore(CountingEncoder(), fusion="rrf")
    with pytest.raises(
        TypeError,
        match=re.escape(
            "KLHybridRetriever() got unexpected keyword argument(s) ['bogus', 'fuson'] (fuson: did you mean "
            f"'fusion'?); it takes {OPTIONS}"
        ),
    ):
        KLHybridRetriever(store, fuson="rrf", bogus=1)


def test_the_keyword_is_refused_before_the_store_is_checked() -> None:
    # the misspelt keyword is the mistake named, whatever else is wrong
    with pytest.raises(TypeError, match=re.escape("(simlarity_top_k: did you mean 'similarity_top_k'?)")):
        KLHybridRetriever(None, simlarity_top_k=3)  # type: ignore[arg-type]


def test_a_subclass_is_named_with_its_own_options() -> None:
    class TaggedRetriever(KLHybridRetriever):
        def __init__(self, store: KLHybridStore, tag: str = "", **kwargs: object) -> None:
            self.tag = tag
            super().__init__(store, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(
        TypeError,
        match=r"^TaggedRetriever\(\) got unexpected keyword argument\(s\) \['tga'\] \(tga: did you mean 'tag'\?\)",
    ):
        TaggedRetriever(KLHybridStore(CountingEncoder(), fusion="rrf"), tga="x")
