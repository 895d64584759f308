"""Blank documents (empty, or only whitespace and invisible characters) are encoded with one warning per call.

Every blank document encodes as the empty text, so all of them get one Gaussian, which can rank high for
queries it does not answer (probe P1: 4 empty documents of NFCorpus were in the top 10 of about a fifth of
its queries). ``encode_documents`` (torch and ONNX: the shared :class:`~kl_retrievers._encoding.EncoderMixin`)
warns once per call, whatever its batches, naming how many and their first positions; so do the adds that
encode texts: ``KLStore.add``, ``KLHybridStore.add``, LangChain's ``from_texts`` / ``add_texts`` /
``aadd_texts`` and LlamaIndex's ``KLVectorStore.add`` and ``VectorStoreIndex`` over ``KLEmbedding``. The
warning points at the user's line. Queries are not warned about here (a blank query is another matter:
the CLI refuses it, the adapters give it confidence 0).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.index import KLStore
from kl_retrievers.langchain import KLEmbeddings
from kl_retrievers.langchain import KLVectorStore as LCStore
from kl_retrievers.llama_index import KLEmbedding
from kl_retrievers.llama_index import KLVectorStore as LIStore

#: Blank at positions 1 (empty), 3 (spaces and a newline) and 5 (a zero-width space and a BOM).
TEXTS = [HYBRID_TEXTS[0], "", HYBRID_TEXTS[1], "  \n", HYBRID_TEXTS[2], "\u200b\ufeff", HYBRID_TEXTS[3]]
BLANK = "3 of the 7 documents are blank (empty, or only whitespace and invisible characters), at positions 1, 3, 5"


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=3)


def _blank_warnings(call: Callable[[], Any]) -> list[warnings.WarningMessage]:
    """The blank-document warnings that ``call`` raises (every warning recorded, none filtered out)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [w for w in seen if " blank (empty, or only whitespace" in str(w.message)]


def _one(call: Callable[[], Any], expected: str = BLANK) -> warnings.WarningMessage:
    found = _blank_warnings(call)
    assert len(found) == 1, [str(w.message) for w in found]
    assert str(found[0].message).startswith(expected), str(found[0].message)
    assert found[0].category is UserWarning
    return found[0]


# ------------------------------------------------------------------ the encoders
def test_encode_documents_warns_once_naming_the_count_and_positions(encoder: Any) -> None:
    w = _one(lambda: encoder.encode_documents(TEXTS))
    message = str(w.message)
    assert "(counted from 0)" in message and "same Gaussian" in message and "drop them" in message
    assert Path(w.filename).resolve() == Path(__file__).resolve()  # the user's line, not the package's


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_encode_documents_warns_once_per_call_whatever_the_batches(encoder: Any, batch_size: int) -> None:
    _one(lambda: encoder.encode_documents(TEXTS, batch_size=batch_size))


def test_one_blank_document_and_many(encoder: Any) -> None:
    _one(lambda: encoder.encode_documents(["", "a passage"]), "1 of the 2 documents is blank")
    many = ["a passage"] + [" "] * 8
    w = _one(lambda: encoder.encode_documents(many), "8 of the 9 documents are blank")
    assert "at positions 1, 2, 3, 4, 5, ... (counted from 0)" in str(w.message)


def test_blank_documents_are_still_encoded(encoder: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = encoder.encode_documents(TEXTS)
    assert len(g) == len(TEXTS)


def test_no_warning_without_blank_documents_nor_for_queries(encoder: Any) -> None:
    assert _blank_warnings(lambda: encoder.encode_documents(HYBRID_TEXTS)) == []
    assert _blank_warnings(lambda: encoder.encode_documents([])) == []
    assert _blank_warnings(lambda: encoder.encode_queries(TEXTS)) == []
    from kl_retrievers._encoding import warn_blank_documents

    assert _blank_warnings(lambda: warn_blank_documents(["a", "\u20dd"])) == []  # an enclosing mark is kept


def test_a_refused_call_does_not_warn(encoder: Any) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="batch_size"):
            encoder.encode_documents(TEXTS, batch_size=0)
    assert not [w for w in seen if "blank" in str(w.message)]


def test_blank_text_rule_is_the_blank_query_rule() -> None:
    from kl_retrievers._confidence import is_blank_query
    from kl_retrievers._encoding import is_blank_text

    for text in ["", " \n\t", "\u200b", "\ufeff \x00", "\ufffd", "\u0301\ufe0f", "a", "e\u0301", "\u20dd", "a\u200d"]:
        assert is_blank_text(text) == is_blank_query(text), repr(text)


def test_onnx_encoder_warns_once(encoder: Any, tmp_path: Path) -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    folder = export_onnx(encoder, tmp_path / "m", quantize=None, verify=False)
    onnx_encoder = OnnxGaussianEncoder(folder)
    _one(lambda: onnx_encoder.encode_documents(TEXTS, batch_size=2))


# ------------------------------------------------------------------ the adds that encode texts
def test_klstore_add_warns_once(encoder: Any) -> None:
    store = KLStore(encoder=encoder, batch_size=2)
    w = _one(lambda: store.add(TEXTS))
    assert Path(w.filename).resolve() == Path(__file__).resolve()
    assert len(store) == len(TEXTS)  # added all the same


def test_klstore_add_with_gaussians_does_not_encode_nor_warn(encoder: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = encoder.encode_documents(TEXTS)
    assert _blank_warnings(lambda: KLStore(encoder=encoder).add(TEXTS, gaussians=g)) == []


def test_hybrid_store_add_warns_once(encoder: Any) -> None:
    store = KLHybridStore(encoder, fusion="rrf")
    store.kl.batch_size = 2
    _one(lambda: store.add(TEXTS))


def test_langchain_adds_warn_once(encoder: Any) -> None:
    embeddings = KLEmbeddings(encoder)
    _one(lambda: LCStore.from_texts(TEXTS, embeddings))
    store = LCStore.from_texts(HYBRID_TEXTS, embeddings)
    _one(lambda: store.add_texts(TEXTS))
    _one(lambda: asyncio.run(store.aadd_texts(TEXTS)))
    _one(lambda: embeddings.embed_documents(TEXTS))


def test_llama_index_adds_warn_once(encoder: Any) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    _one(lambda: LIStore(encoder=encoder).add(nodes))
    embed = KLEmbedding(encoder, embed_batch_size=2)
    storage = StorageContext.from_defaults(vector_store=LIStore())
    fresh = [TextNode(text=t, id_=f"m{i}") for i, t in enumerate(TEXTS)]
    # VectorStoreIndex skips a node whose embed text is "" itself (printing "Some nodes are missing content"): the
    # encoder gets the 6 others, among them 2 blank ones, at positions 2 and 4 of what it encodes
    expected = "2 of the 6 documents are blank (empty, or only whitespace and invisible characters), at positions 2, 4"
    _one(lambda: VectorStoreIndex(fresh, embed_model=embed, storage_context=storage), expected)
