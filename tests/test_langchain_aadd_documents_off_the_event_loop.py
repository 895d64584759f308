"""LangChain's ``KLVectorStore.aadd_documents`` reads no document text or metadata on the event loop's thread.

It was ``VectorStore.aadd_documents`` (langchain_core), which builds the lists of every document's
``page_content`` and ``metadata`` on the caller's (event loop's) thread before handing them to ``aadd_texts``.
As ``KLHybridRetriever.aadd_documents`` does (980e8fe), the documents and ids are read, and the ids checked, on
the caller's thread (a bad id, or an item that is not a ``Document``, fails there, before any worker runs); the
texts and the metadata are read in the worker thread only.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
from langchain_core.documents import Document

import kl_retrievers.langchain as klc
from conftest import CountingEncoder, own_executor, within

READS: list[threading.Thread] = []  # the thread of each read of a WatchedDocument's page_content or metadata


class WatchedDocument(Document):
    """A ``Document`` recording the thread of each read of its ``page_content`` and ``metadata``."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("page_content", "metadata"):
            READS.append(threading.current_thread())
        return super().__getattribute__(name)


def docs(*names: str, ids: bool = False) -> list[Document]:
    return [
        WatchedDocument(page_content=f"text {n}", metadata={"name": n, "tags": [n]}, id=n if ids else None)
        for n in names
    ]


@pytest.fixture
def reads() -> list[threading.Thread]:
    READS.clear()
    return READS


@pytest.mark.asyncio
async def test_aadd_documents_reads_texts_and_metadata_in_the_worker_thread_only(
    reads: list[threading.Thread],
) -> None:
    store = klc.KLVectorStore(CountingEncoder())
    loop_thread = threading.current_thread()
    with own_executor(asyncio.get_running_loop()) as pool:
        reads.clear()
        assert await within(store.aadd_documents(docs("a", "b"), ids=["a", "b"])) == ["a", "b"]
        assert reads and loop_thread not in reads, reads  # read in the worker thread only
        assert await within(store.aadd_documents(d for d in docs("c", ids=True))) == ["c"]  # a generator, own ids
        new = await within(store.aadd_documents(docs("d"), batch_size=64))  # no id: a uuid4 hex
        assert reads and loop_thread not in reads, reads  # read in the worker thread only
        assert pool.submitted == 3
    assert len(new) == 1 and len(new[0]) == 32
    assert sorted(store.store.ids) == sorted(["a", "b", "c", *new])
    stored = store.get_by_ids(["a", "c", *new])
    assert [d.page_content for d in stored] == ["text a", "text c", "text d"]
    assert stored[0].metadata == {"name": "a", "tags": ["a"]}


@pytest.mark.asyncio
async def test_aadd_documents_still_refuses_on_the_callers_thread(reads: list[threading.Thread]) -> None:
    store = klc.KLVectorStore(CountingEncoder())
    with own_executor(asyncio.get_running_loop()) as pool:
        reads.clear()
        with pytest.raises(TypeError, match=r"ids\[1\] must be a str"):
            await within(store.aadd_documents(docs("a", "b"), ids=["a", 1]))
        with pytest.raises(ValueError, match="ids must be unique within one add call"):
            await within(store.aadd_documents(docs("a", "b"), ids=["a", "a"]))
        with pytest.raises(ValueError, match="ids must be unique within one add call"):
            await within(store.aadd_documents(docs("a", "a", ids=True)))  # the documents' own ids
        with pytest.raises(TypeError, match=r"documents\[1\] must be a langchain_core Document; got str"):
            await within(store.aadd_documents([*docs("a"), "b"]))  # type: ignore[list-item]
        assert pool.submitted == 0 and reads == []  # refused before any worker, reading no text
    assert store.store.ids == []


@pytest.mark.asyncio
async def test_aadd_documents_warns_about_an_ignored_keyword_naming_itself() -> None:
    store = klc.KLVectorStore(CountingEncoder())
    with own_executor(asyncio.get_running_loop()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert await within(store.aadd_documents(docs("a", ids=True), filtr=1)) == ["a"]
    messages = [str(w.message) for w in caught]
    assert any("KLVectorStore.aadd_documents ignores the keyword argument(s) ['filtr']" in m for m in messages)
    assert not any("add_texts ignores" in m for m in messages), messages
