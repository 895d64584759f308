"""The async adapter calls that encode documents in a worker thread warn about blank documents at the user's line.

The sync calls (``add_texts``, ``embed_documents``, ``get_text_embedding_batch``...) point the blank-document
warning at the caller's line; the async ones encode in a worker thread, whose stack holds no frame of the
user's, so the warning pointed at ``kl_retrievers/_encoding.py`` (probe). Each async path warns once, at the
line of this file that awaited it (``asyncio.run(...)`` or an ``await`` in a user's coroutine), before the
encoding: an ``error`` filter stops the write as it stops the sync call.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers.langchain import KLEmbeddings
from kl_retrievers.langchain import KLVectorStore as LCStore
from kl_retrievers.llama_index import KLEmbedding
from kl_retrievers.llama_index import KLVectorStore as LIStore

TEXTS = [HYBRID_TEXTS[0], " \n", HYBRID_TEXTS[1]]  # LlamaIndex skips a node whose text is ""
BLANK = "1 of the 3 documents is blank"
HERE = Path(__file__).resolve()


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=5)


def _blank_warning(call: Callable[[], Any], expected: str = BLANK) -> warnings.WarningMessage:
    """The one blank-document warning that ``call`` gives (every warning recorded), starting with ``expected``."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    found = [w for w in seen if " blank (empty, or only whitespace" in str(w.message)]
    assert len(found) == 1, [(str(w.message), w.filename) for w in found]
    assert str(found[0].message).startswith(expected), str(found[0].message)
    return found[0]


def _at_this_file(w: warnings.WarningMessage) -> None:
    assert Path(w.filename).resolve() == HERE, f"{w.filename}:{w.lineno}"


def _async_calls(encoder: Any) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    """Each async path that encodes documents in a worker thread, as a coroutine factory."""
    emb = KLEmbeddings(encoder)
    li_emb = KLEmbedding(encoder)
    return {
        "lc_aadd_texts": lambda: LCStore(emb).aadd_texts(TEXTS),
        "lc_aadd_documents": lambda: LCStore(emb).aadd_documents([Document(page_content=t) for t in TEXTS]),
        "lc_aupsert": lambda: LCStore(emb).aupsert([Document(page_content=t, id=str(i)) for i, t in enumerate(TEXTS)]),
        "lc_afrom_texts": lambda: LCStore.afrom_texts(TEXTS, emb),
        "lc_afrom_documents": lambda: LCStore.afrom_documents([Document(page_content=t) for t in TEXTS], emb),
        "lc_aembed_documents": lambda: emb.aembed_documents(TEXTS),
        "li_aget_text_embedding_batch": lambda: li_emb.aget_text_embedding_batch(TEXTS),
        "li_aget_text_embedding": lambda: li_emb.aget_text_embedding(""),
    }


PATHS = list(_async_calls(None))


@pytest.mark.parametrize("path", PATHS)
def test_async_call_warns_once_at_the_asyncio_run_line(encoder: Any, path: str) -> None:
    make = _async_calls(encoder)[path]
    expected = BLANK if path != "li_aget_text_embedding" else "1 of the 1 documents is blank"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(make())
    found = [w for w in seen if " blank (empty, or only whitespace" in str(w.message)]
    assert len(found) == 1, [(str(w.message), w.filename) for w in found]
    assert str(found[0].message).startswith(expected)
    _at_this_file(found[0])


@pytest.mark.parametrize("path", ["lc_aadd_texts", "lc_aembed_documents", "li_aget_text_embedding_batch"])
def test_async_call_in_a_user_coroutine_warns_at_the_await_line(encoder: Any, path: str) -> None:
    make = _async_calls(encoder)[path]
    lines: list[int] = []

    async def user_code() -> None:
        import inspect

        frame = inspect.currentframe()
        assert frame is not None
        lines.append(frame.f_lineno + 1)
        await make()

    w = _blank_warning(lambda: asyncio.run(user_code()))
    _at_this_file(w)
    assert w.lineno == lines[0]


def test_llama_index_vector_store_index_use_async_warns_once(encoder: Any) -> None:
    nodes = [TextNode(text=t) for t in TEXTS]
    w = _blank_warning(  # LlamaIndex embeds the nodes in batches: the one with the blank text warns
        lambda: VectorStoreIndex(
            nodes,
            embed_model=KLEmbedding(encoder),
            use_async=True,
            storage_context=StorageContext.from_defaults(vector_store=LIStore()),
        ),
        "1 of the ",
    )
    _at_this_file(w)


def test_an_error_filter_stops_the_async_write_before_it_writes(encoder: Any) -> None:
    store = LCStore(KLEmbeddings(encoder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=BLANK):
            asyncio.run(store.aadd_texts(TEXTS))
    assert len(store) == 0


def test_sync_calls_are_unchanged(encoder: Any) -> None:
    _at_this_file(_blank_warning(lambda: LCStore(KLEmbeddings(encoder)).add_texts(TEXTS)))
    _at_this_file(_blank_warning(lambda: KLEmbedding(encoder).get_text_embedding_batch(TEXTS)))


def test_at_callers_line_outside_a_worker_points_at_the_caller() -> None:
    from kl_retrievers._encoding import warn_blank_documents
    from kl_retrievers._warn import at_callers_line

    def call() -> None:
        with at_callers_line():
            warn_blank_documents(TEXTS)

    w = _blank_warning(call)
    _at_this_file(w)


def test_any_package_warning_given_in_the_worker_points_at_the_caller() -> None:
    """The caller's line is kept for every warning of the package (:func:`kl_retrievers._warn.warn`), not the
    blank-document one alone: a worker thread's stack holds no user's frame."""
    from kl_retrievers._warn import at_callers_line, warn

    async def main() -> None:
        with at_callers_line():
            await asyncio.to_thread(warn, "said in the worker")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(main())
    assert [str(w.message) for w in seen] == ["said in the worker"]
    assert seen[0].filename == __file__
