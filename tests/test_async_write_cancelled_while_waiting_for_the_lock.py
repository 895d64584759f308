"""A cancelled async write that was already waiting for the store's write lock writes nothing.

The worker thread of an async write checks the caller's cancellation after encoding, before the store's write
lock; a write past that check, waiting for the lock (behind a long search or another write), used to land once
the lock was free, after the cancelled caller had returned. The check is now made again once the lock is held
(``kl_retrievers._adapters.store_write_unless_cancelled``), for every async write of both adapters: the
LangChain vector store's and hybrid retriever's adds and deletes, LlamaIndex's ``async_add``, ``adelete_nodes``,
``aclear`` and the hybrid retriever's ``async_add_nodes`` / ``adelete_ref_doc``.

Here the test holds the store's lock for reading (a search in progress) while the write waits for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from conftest import ASYNC_LIMIT, CountingEncoder, drain, own_executor, within
from kl_retrievers.langchain import KLHybridRetriever, KLVectorStore
from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

pytestmark = pytest.mark.asyncio


@dataclass
class Case:
    lock: Any  # the store's reader-writer lock
    write: Callable[[], Awaitable[Any]]  # the async write to cancel
    ids: Callable[[], list[str]]  # the store's ids


def _source(node: TextNode, ref: str) -> TextNode:
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
    return node


def _langchain_store() -> KLVectorStore:
    vs = KLVectorStore(CountingEncoder())
    vs.add_documents([Document(page_content="old a", id="a"), Document(page_content="old b", id="b")])
    return vs


def _langchain_hybrid() -> KLHybridRetriever:
    return KLHybridRetriever.from_texts(["cat sat", "dog ran"], CountingEncoder(), ids=["a", "b"])


def _llama_store() -> LIVectorStore:
    store = LIVectorStore(encoder=CountingEncoder())
    store.add([_source(TextNode(text="old a", id_="a"), "r1"), _source(TextNode(text="old b", id_="b"), "r2")])
    return store


def _llama_hybrid() -> LIHybridRetriever:
    nodes = [_source(TextNode(text="cat sat", id_="a"), "r1"), _source(TextNode(text="dog ran", id_="b"), "r2")]
    return LIHybridRetriever.from_defaults(nodes=nodes, encoder=CountingEncoder())


def _case(name: str) -> Case:
    if name.startswith("langchain-store"):
        vs = _langchain_store()
        new = [Document(page_content="new a", id="a"), Document(page_content="c", id="c")]
        writes: dict[str, Callable[[], Awaitable[Any]]] = {
            "langchain-store-aadd_documents": lambda: vs.aadd_documents(new),
            "langchain-store-aadd_texts": lambda: vs.aadd_texts(["new a", "c"], ids=["a", "c"]),
            "langchain-store-aupsert": lambda: vs.aupsert(new),
            "langchain-store-adelete": lambda: vs.adelete(["a"]),
            "langchain-store-adelete-all": lambda: vs.adelete(delete_all=True),
        }
        return Case(cast(Any, vs.store)._lock, writes[name], lambda: vs.store.ids)
    if name.startswith("langchain-hybrid"):
        hybrid = _langchain_hybrid()
        writes = {
            "langchain-hybrid-aadd_documents": lambda: hybrid.aadd_documents([Document(page_content="c", id="c")]),
            "langchain-hybrid-adelete": lambda: hybrid.adelete(["a"]),
        }
        return Case(hybrid.store._lock, writes[name], lambda: hybrid.store.ids)
    if name.startswith("llama-store"):
        store = _llama_store()
        writes = {
            "llama-store-async_add": lambda: store.async_add([TextNode(text="c", id_="c")]),
            "llama-store-adelete_nodes": lambda: store.adelete_nodes(["a"]),
            "llama-store-adelete": lambda: store.adelete("r1"),
            "llama-store-aclear": lambda: store.aclear(),
        }
        return Case(cast(Any, store.kl_store)._lock, writes[name], lambda: store.kl_store.ids)
    retriever = _llama_hybrid()
    writes = {
        "llama-hybrid-async_add_nodes": lambda: retriever.async_add_nodes([TextNode(text="c", id_="c")]),
        "llama-hybrid-adelete_ref_doc": lambda: retriever.adelete_ref_doc("r1"),
    }
    return Case(retriever.store._lock, writes[name], lambda: retriever.store.ids)


CASES = [
    "langchain-store-aadd_documents",
    "langchain-store-aadd_texts",
    "langchain-store-aupsert",
    "langchain-store-adelete",
    "langchain-store-adelete-all",
    "langchain-hybrid-aadd_documents",
    "langchain-hybrid-adelete",
    "llama-store-async_add",
    "llama-store-adelete_nodes",
    "llama-store-adelete",
    "llama-store-aclear",
    "llama-hybrid-async_add_nodes",
    "llama-hybrid-adelete_ref_doc",
]


async def _until_a_writer_waits(lock: Any) -> None:
    while not lock._waiting_writers:
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("name", CASES)
async def test_a_write_cancelled_while_it_waits_for_the_lock_writes_nothing(name: str) -> None:
    case = _case(name)
    before = case.ids()
    loop = asyncio.get_running_loop()
    with own_executor(loop):
        with case.lock.read():  # a search in progress: the write waits for the lock
            task = asyncio.ensure_future(case.write())
            await within(_until_a_writer_waits(case.lock))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await within(drain(loop))  # the worker thread got the lock, and ended
        assert case.ids() == before, "a cancelled write landed after the lock was released"
        fresh = _case(name)  # the same write, not cancelled, on a fresh store: done at once, and it lands
        untouched = fresh.ids()
        await within(fresh.write())
        assert fresh.ids() != untouched, "a write that was not cancelled did not land"


async def test_a_write_not_cancelled_while_it_waits_for_the_lock_lands() -> None:
    vs = _langchain_store()
    loop = asyncio.get_running_loop()
    with own_executor(loop):
        lock = cast(Any, vs.store)._lock
        with lock.read():
            task = asyncio.ensure_future(vs.aadd_documents([Document(page_content="c", id="c")]))
            await within(_until_a_writer_waits(lock))
        assert await within(task) == ["c"]
    assert vs.store.ids == ["a", "b", "c"]


class _WatchedLock:
    """A ``MilvusKLStore``'s re-entrant lock, which says when a thread waits for it (``waiting``)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.waiting = threading.Event()

    def __enter__(self) -> bool:
        if not self._lock.acquire(blocking=False):
            self.waiting.set()
            self._lock.acquire()
        return True

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()


async def test_a_write_cancelled_while_it_waits_for_a_milvus_stores_lock_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    ms = MilvusKLStore(uri=str(tmp_path / "kl.db"), encoder=CountingEncoder())
    try:
        vs = KLVectorStore(CountingEncoder(), store=ms)
        vs.add_texts(["a", "b"], ids=["a", "b"])
        watched = _WatchedLock(ms._lock)
        ms._lock = watched  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        with own_executor(loop):
            held, release = threading.Event(), threading.Event()

            def hold() -> None:  # another thread's write or search holding the store's lock
                with watched:
                    held.set()
                    release.wait(ASYNC_LIMIT)

            holder = threading.Thread(target=hold)
            holder.start()
            held.wait(ASYNC_LIMIT)
            try:
                task = asyncio.ensure_future(vs.aadd_texts(["c"], ids=["c"]))
                await within(asyncio.to_thread(watched.waiting.wait, ASYNC_LIMIT))
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                release.set()
                holder.join()
            await within(drain(loop))
            assert sorted(ms.ids) == ["a", "b"], "a cancelled write landed after the lock was released"
            # not cancelled: it lands (the store's own write takes the re-entrant lock again), and a delete too
            assert await within(vs.aadd_texts(["d"], ids=["d"])) == ["d"]
            assert await within(vs.adelete(["d"])) is True
            assert sorted(ms.ids) == ["a", "b"]
    finally:
        ms.close()
