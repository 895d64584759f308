"""``from_defaults(documents=[..., None])`` refuses the ``None`` with the module's ``TypeError``, as a string.

The check looked for the first wrong item with ``None`` as its "nothing wrong" marker, so a ``None`` item passed it
and LlamaIndex's splitter failed on it with an ``AttributeError``.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import Document

import kl_retrievers.llama_index as li
from kl_retrievers.encoder import GaussianEncoder


@pytest.mark.parametrize("cls", [li.KLRetriever, li.KLHybridRetriever])
@pytest.mark.parametrize(("documents", "named"), [([None], "NoneType ('None')"), (["a text"], "str ('a text')")])
def test_a_none_document_is_refused_like_a_string(
    tiny_encoder: GaussianEncoder, cls: Any, documents: list[Any], named: str
) -> None:
    with pytest.raises(TypeError) as info:
        cls.from_defaults(documents=[Document(text="the cat sat"), *documents], encoder=tiny_encoder)
    assert str(info.value) == (
        "documents must be llama_index Document objects (e.g. Document(text=...)); got a "
        f"{named}: wrap each text as Document(text=text)"
    )
