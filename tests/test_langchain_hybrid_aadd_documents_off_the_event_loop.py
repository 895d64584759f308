"""LangChain's ``KLHybridRetriever.aadd_documents`` reads no document text or metadata on the event loop's thread.

It built every document's ``page_content`` list and a copy of each ``metadata`` dict on the caller's (event loop's)
thread, before handing the write to a worker thread that built them again. The documents and ids are still read,
and the ids checked, on the caller's thread (a bad id, or an item that is not a ``Document``, fails there, before
any worker runs: 74ecb01); the texts and the metadata copies are made in the worker thread only, as
``KLVectorStore.aadd_texts`` leaves its text checks to it.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from langchain_core.documents import Document

# the document that records its readers' threads, shared with the plain store's test
from test_langchain_aadd_documents_off_the_event_loop import READS, docs

import kl_retrievers.langchain as klc
from conftest import CountingEncoder, own_executor, within
from kl_retrievers.hybrid import KLHybridStore


@pytest.fixture
def reads() -> list[threading.Thread]:
    READS.clear()
    return READS


@pytest.mark.asyncio
async def test_hybrid_aadd_documents_reads_texts_and_metadata_in_the_worker_thread_only(
    reads: list[threading.Thread],
) -> None:
    retriever = klc.KLHybridRetriever(store=KLHybridStore(CountingEncoder()))
    loop_thread = threading.current_thread()
    with own_executor(asyncio.get_running_loop()) as pool:
        reads.clear()
        assert await within(retriever.aadd_documents(docs("a", "b"), ids=["a", "b"])) == ["a", "b"]
        assert await within(retriever.aadd_documents(d for d in docs("c", ids=True))) == ["c"]  # a generator, ids
        new = await within(retriever.aadd_documents(docs("d")))  # no id: a uuid4 hex, made in the worker
        assert reads and loop_thread not in reads, reads  # read in the worker thread only
        assert pool.submitted == 3
    assert sorted(retriever.store.ids) == sorted(["a", "b", "c", *new])
    stored = {d.id: d for d in retriever.store.get_by_ids(["a", "c", *new])}
    assert [stored[i].text for i in ["a", "c", *new]] == ["text a", "text c", "text d"]
    assert stored["a"].metadata == {"name": "a", "tags": ["a"]}


@pytest.mark.asyncio
async def test_hybrid_aadd_documents_still_refuses_on_the_callers_thread(reads: list[threading.Thread]) -> None:
    retriever = klc.KLHybridRetriever(store=KLHybridStore(CountingEncoder()))
    with own_executor(asyncio.get_running_loop()) as pool:
        reads.clear()
        with pytest.raises(TypeError, match=r"ids\[1\] must be a str"):
            await within(retriever.aadd_documents(docs("a", "b"), ids=["a", 1]))  # type: ignore[list-item]
        with pytest.raises(ValueError, match="ids must be unique within one add call"):
            await within(retriever.aadd_documents(docs("a", "b"), ids=["a", "a"]))
        with pytest.raises(TypeError, match=r"documents\[1\] must be a langchain_core Document; got str"):
            await within(retriever.aadd_documents([*docs("a"), "b"]))  # type: ignore[list-item]
        with pytest.raises(TypeError, match="documents must be an iterable of langchain_core Document objects"):
            await within(retriever.aadd_documents(docs("a")[0]))  # type: ignore[arg-type]
        assert pool.submitted == 0 and reads == []  # refused before any worker, reading no text
    assert retriever.store.ids == []


@pytest.mark.asyncio
async def test_hybrid_aadd_documents_strips_a_returned_documents_scores_as_add_documents_does() -> None:
    retriever = klc.KLHybridRetriever.from_texts(["cat sat", "dog ran"], CountingEncoder(), ids=["x", "y"], k=2)
    (hit, *_) = retriever.invoke("cat")
    assert hit.id is not None and "neg_kl" in hit.metadata  # a returned document: its scores in its metadata
    with own_executor(asyncio.get_running_loop()):
        assert await within(
            retriever.aadd_documents([Document(page_content="cat sat", id="z", metadata=hit.metadata)])
        ) == ["z"]
    assert retriever.store.get_by_ids(["z"])[0].metadata == retriever.store.get_by_ids([hit.id])[0].metadata
