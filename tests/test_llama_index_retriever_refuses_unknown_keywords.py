"""The LlamaIndex ``KLRetriever`` constructor refuses an unknown keyword as ``KLVectorStore`` does.

It answered ``embed_model=`` (which ``from_defaults`` takes) or a typo with Python's bare
``KLRetriever.__init__() got an unexpected keyword argument``; the refusal now names each unknown keyword,
its closest option, every option, and for ``embed_model`` what to pass instead.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("llama_index.core")

from conftest import CountingEncoder
from kl_retrievers.llama_index import KLEmbedding, KLRetriever, KLVectorStore

OPTIONS = (
    "['vector_store', 'encoder', 'similarity_top_k', 'filters', 'node_ids', 'doc_ids', 'callback_manager', "
    "'verbose', 'object_map', 'objects']"
)


def test_embed_model_says_to_pass_encoder_or_use_from_defaults() -> None:
    embedding = KLEmbedding(CountingEncoder())
    with pytest.raises(TypeError) as raised:
        KLRetriever(KLVectorStore(), embed_model=embedding)
    message = str(raised.value)
    assert message.startswith("KLRetriever() got unexpected keyword argument(s) ['embed_model'] (embed_model: ")
    assert "encoder=" in message and "KLRetriever.from_defaults(embed_model=...)" in message
    assert message.endswith(f"it takes {OPTIONS}")
    # what the message says to do works
    assert KLRetriever(KLVectorStore(), encoder=embedding)._encoder is embedding.encoder


def test_a_typo_names_the_closest_option_and_every_option() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "KLRetriever() got unexpected keyword argument(s) ['bogus', 'fliters'] (fliters: did you mean "
            f"'filters'?); it takes {OPTIONS}"
        ),
    ):
        KLRetriever(KLVectorStore(), fliters=None, bogus=1)


def test_from_defaults_passes_the_refusal_on() -> None:
    with pytest.raises(TypeError, match=re.escape("(simlarity_top_k: did you mean 'similarity_top_k'?)")):
        KLRetriever.from_defaults(vector_store=KLVectorStore(), encoder=CountingEncoder(), simlarity_top_k=3)


def test_a_subclass_is_named_with_its_own_options() -> None:
    class TaggedRetriever(KLRetriever):
        def __init__(self, vector_store: KLVectorStore, tag: str = "", **kwargs: object) -> None:
            self.tag = tag
            super().__init__(vector_store, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(
        TypeError,
        match=r"^TaggedRetriever\(\) got unexpected keyword argument\(s\) \['tga'\] "
        r"\(tga: did you mean 'tag'\?\)",
    ):
        TaggedRetriever(KLVectorStore(), tga="x")
