"""A KLVectorStore call given a wide ``Embeddings`` wrapper warns once that the search for a KLEmbeddings stopped.

``KLVectorStore(embedding)`` looked for a KLEmbeddings inside ``embedding`` twice (for its batch size, then for its
encoder), and ``load_local`` twice more (for the encoder, then for the object to keep): a wrapper too wide to be
searched whole (over 1,024 ``Embeddings`` objects) gave the same warning twice per call. The wrappers are now
searched once per call, so each call warns once, at the user's line.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

import kl_retrievers.langchain as lc
from conftest import CountingEncoder


class _Plain(Embeddings):
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[0.0, 1.0, 0.5]] * len(texts)

    def embed_query(self, text: str) -> list[float]:
        return [0.0, 1.0, 0.5]


class _Wrap(_Plain):
    def __init__(self, inner: Any) -> None:
        self.inner = inner


class _Router(_Plain):
    """More plain models than the search looks into, then a KLEmbeddings in a wrapper (not reached)."""

    def __init__(self, kl: lc.KLEmbeddings) -> None:
        for i in range(lc._MAX_WRAPPERS_SEARCHED + 100):
            setattr(self, f"m{i}", _Plain())
        self.default = _Wrap(kl)


@pytest.fixture
def router() -> _Router:
    return _Router(lc.KLEmbeddings(encoder=CountingEncoder()))


def _one_warning_here(call: Callable[[], Any]) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    cut = [w for w in seen if "looked for a KLEmbeddings inside _Router" in str(w.message)]
    assert len(cut) == 1, [str(w.message)[:80] for w in cut]
    assert cut[0].filename == __file__


def test_the_constructor_and_from_texts_warn_once(router: _Router) -> None:
    _one_warning_here(lambda: lc.KLVectorStore(router))
    _one_warning_here(lambda: lc.KLVectorStore.from_texts(["a cat", "tea"], router))
    _one_warning_here(lambda: lc.KLVectorStore.from_documents([Document("a cat")], router))


def test_afrom_texts_warns_once(router: _Router) -> None:
    _one_warning_here(lambda: asyncio.run(lc.KLVectorStore.afrom_texts(["a cat", "tea"], router)))


def test_load_local_and_deserialize_warn_once(router: _Router, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = lc.KLVectorStore.from_texts(["a cat", "tea"], router)
    store.save_local(tmp_path)
    _one_warning_here(lambda: lc.KLVectorStore.load_local(tmp_path, router))
    data = store.serialize_to_bytes()
    _one_warning_here(lambda: lc.KLVectorStore.deserialize_from_bytes(data, router))


def test_adding_and_searching_do_not_search_the_wrapper_again(router: _Router) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = lc.KLVectorStore.from_texts(["a cat", "tea"], router)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.add_texts(["a dog"])
        assert len(store.similarity_search("cat", k=1)) == 1


def test_a_wrapped_klembeddings_is_still_the_store_s_embeddings(tmp_path: Path) -> None:
    kl = lc.KLEmbeddings(encoder=CountingEncoder(), batch_size=7)
    wrapper = _Wrap(kl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the wrapper is bypassed, with a warning of its own
        store = lc.KLVectorStore.from_texts(["a cat", "tea"], wrapper)
        assert store.embeddings is kl and store.batch_size == 7
        store.save_local(tmp_path)
        loaded = lc.KLVectorStore.load_local(tmp_path, wrapper)
    assert loaded.embeddings is kl
