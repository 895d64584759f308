"""Async adapters: abstention events on the caller's event loop, and cancelled async writes that write nothing.

1. Under ``ainvoke`` the LangChain retrievers search in a worker thread; the abstention event
   (:data:`~kl_retrievers.langchain.ABSTENTION_EVENT`) used to be sent from that thread through the sync run
   manager, so LangChain ran an async handler's coroutine in a new event loop there: a handler awaiting a queue of
   the caller's loop lost the event (or hung). It is now sent on the caller's loop, with the sync path's payload.
2. A cancelled (or timed-out) async write went on in its worker thread and landed later, over a newer write of the
   same ids. The worker now checks a cancellation flag after encoding, before the store's write lock.
3. LlamaIndex's ``KLHybridRetriever`` has ``async_add_nodes`` / ``adelete_ref_doc``.

Every test runs under ``asyncio.wait_for``; the worker threads are a small executor of the test's own, drained
before the assertions (no sleep waits for a thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from conftest import (
    ASYNC_LIMIT,
    HYBRID_TEXTS,
    CountingEncoder,
    drain,
    make_tiny_encoder,
    max_score_calibrator,
    own_executor,
    within,
)
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore
from kl_retrievers.langchain import ABSTENTION_EVENT, KLEmbeddings, KLHybridRetriever, KLRetriever, KLVectorStore
from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore

pytestmark = pytest.mark.asyncio


async def until(event: threading.Event) -> None:
    """Wait (on the loop, without a worker thread) until ``event`` is set."""
    while not event.is_set():
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- 1. abstention events
class AsyncRecorder(AsyncCallbackHandler):
    """An async handler: where (loop, thread) and what it got."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, asyncio.AbstractEventLoop, int]] = []

    async def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.events.append((name, data, asyncio.get_running_loop(), threading.get_ident()))


class SyncRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


@pytest.fixture(scope="module")
def retrievers() -> dict[str, Any]:
    embeddings = KLEmbeddings(encoder=make_tiny_encoder())
    cal = max_score_calibrator()
    dense = KLRetriever.from_store(KLVectorStore.from_texts(HYBRID_TEXTS, embeddings), k=2, calibrator=cal)
    hybrid = KLHybridRetriever.from_texts(HYBRID_TEXTS, embeddings, k=2, calibrator=cal)
    return {"dense": dense, "hybrid": hybrid}


CASES = [("dense", "zzz unknown"), ("dense", "   "), ("hybrid", "zzz unknown"), ("hybrid", "   ")]


@pytest.mark.parametrize(("kind", "query"), CASES, ids=["dense-low", "dense-blank", "hybrid-low", "hybrid-blank"])
async def test_async_abstention_event_runs_on_the_callers_loop_with_the_sync_payload(
    retrievers: dict[str, Any], kind: str, query: str
) -> None:
    retriever = retrievers[kind]
    sync = SyncRecorder()
    assert retriever.invoke(query, min_confidence=0.5, config={"callbacks": [sync]}) == []
    handler = AsyncRecorder()
    docs = await within(retriever.ainvoke(query, min_confidence=0.5, config={"callbacks": [handler]}))
    assert docs == []
    assert [(name, data) for name, data, _, _ in handler.events] == sync.events
    assert [name for name, _ in sync.events] == [ABSTENTION_EVENT]
    (_, _, loop, thread) = handler.events[0]
    assert loop is asyncio.get_running_loop() and thread == threading.get_ident()


@pytest.mark.parametrize("kind", ["dense", "hybrid"])
async def test_streaming_handler_awaiting_the_callers_bounded_queue_gets_the_abstention(
    retrievers: dict[str, Any], kind: str
) -> None:
    """A handler that streams into the request's bounded ``asyncio.Queue`` (it waits while the client is behind)."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
    await queue.put("earlier event")  # the client is one event behind: the handler's put waits

    class Streamer(AsyncCallbackHandler):
        async def on_custom_event(self, name: str, data: Any, *, run_id: Any, **kwargs: Any) -> None:
            await asyncio.wait_for(queue.put(name), 5)  # on a foreign loop it times out there (old code)

    got: list[str] = []

    async def client() -> None:
        await asyncio.sleep(0.05)
        try:
            for _ in range(2):
                got.append(await asyncio.wait_for(queue.get(), 5))
        except (RuntimeError, TimeoutError) as exc:  # a queue bound to another loop, or the event lost
            got.append(type(exc).__name__)

    reader = asyncio.create_task(client())
    docs = await within(retrievers[kind].ainvoke("zzz unknown", min_confidence=0.5, config={"callbacks": [Streamer()]}))
    await within(reader)
    assert docs == [] and got == ["earlier event", ABSTENTION_EVENT]


async def test_astream_events_still_carries_the_abstention(retrievers: dict[str, Any]) -> None:
    async def names() -> list[str]:
        stream = retrievers["dense"].astream_events("zzz unknown", version="v2", min_confidence=0.5)
        return [e["name"] async for e in stream if e["event"] == "on_custom_event"]

    assert await within(names()) == [ABSTENTION_EVENT]


async def test_answered_async_query_sends_no_event(retrievers: dict[str, Any]) -> None:
    handler = AsyncRecorder()
    docs = await within(retrievers["dense"].ainvoke(HYBRID_TEXTS[0], config={"callbacks": [handler]}))
    assert docs and handler.events == []


# --------------------------------------------------------------------------- 2. cancelled writes
class GatedEncoder(CountingEncoder):
    """:class:`~conftest.CountingEncoder` that holds texts with "slow" at a gate (queries and documents alike)."""

    name_or_path = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _gaussians(self, texts: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if any("slow" in t for t in texts):
            self.entered.set()
            assert self.gate.wait(ASYNC_LIMIT)
        return super()._gaussians(texts)


async def cancel_while_encoding(encoder: GatedEncoder, write: Awaitable[Any]) -> None:
    """Start ``write``, cancel it while its worker thread encodes (at the gate)."""
    task = asyncio.ensure_future(write)
    await within(until(encoder.entered))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


LCWrite = Callable[[Any, list[Document]], Awaitable[Any]]
LC_WRITES: dict[str, LCWrite] = {
    "aadd_documents": lambda vs, docs: vs.aadd_documents(docs),
    "aadd_texts": lambda vs, docs: vs.aadd_texts(
        [d.page_content for d in docs], [d.metadata for d in docs], ids=[d.id for d in docs]
    ),
    "aupsert": lambda vs, docs: vs.aupsert(docs),
}


def v1_docs() -> list[Document]:
    return [Document(page_content=f"slow text {i}", id=f"d{i}", metadata={"version": 1}) for i in range(3)]


@pytest.mark.parametrize("write", list(LC_WRITES))
async def test_langchain_cancelled_write_never_lands_over_a_newer_one(write: str) -> None:
    loop = asyncio.get_running_loop()
    encoder = GatedEncoder()
    vs = KLVectorStore(encoder)
    with own_executor(loop):
        try:
            await cancel_while_encoding(encoder, LC_WRITES[write](vs, v1_docs()))
            # the client sends d0 again, fixed; it is written while the cancelled write still encodes
            await within(vs.aadd_documents([Document(page_content="fixed", id="d0", metadata={"version": 2})]))
        finally:
            encoder.gate.set()
        await within(drain(loop))
    assert [d.metadata["version"] for d in vs.get_by_ids(["d0", "d1", "d2"])] == [2]
    assert vs.store.ids == ["d0"]


async def test_langchain_hybrid_cancelled_aadd_documents_writes_nothing() -> None:
    loop = asyncio.get_running_loop()
    encoder = GatedEncoder()
    hybrid = KLHybridRetriever.from_texts(["cat sat"], encoder, ids=["cat"])
    with own_executor(loop):
        try:
            await cancel_while_encoding(encoder, hybrid.aadd_documents(v1_docs()))
        finally:
            encoder.gate.set()
        await within(drain(loop))
        assert hybrid.store.ids == ["cat"]
        assert await within(hybrid.aadd_documents([Document(page_content="dog", id="dog")])) == ["dog"]  # not cancelled
    assert sorted(hybrid.store.ids) == ["cat", "dog"]


class GatedReads:
    """A duck-typed store over a KLStore whose ``get_by_ids`` (the delete's read of the ids) waits at a gate."""

    def __init__(self, store: KLStore) -> None:
        self.inner = store
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.encoder = store.encoder

    def get_by_ids(self, ids: Sequence[str]) -> Any:
        self.entered.set()
        assert self.gate.wait(ASYNC_LIMIT)
        return self.inner.get_by_ids(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_langchain_cancelled_adelete_deletes_nothing() -> None:
    loop = asyncio.get_running_loop()
    inner = KLStore(encoder=GatedEncoder())
    inner.add(["a", "b"], ids=["a", "b"])
    gated = GatedReads(inner)
    vs = KLVectorStore(store=gated)
    with own_executor(loop):
        task = asyncio.ensure_future(vs.adelete(["a"]))
        try:
            await within(until(gated.entered))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            gated.gate.set()
        await within(drain(loop))
        assert inner.ids == ["a", "b"]
        assert await within(vs.adelete(["a"])) is True  # not cancelled: deleted
    assert inner.ids == ["b"]


async def test_llama_index_cancelled_async_add_never_lands_over_a_newer_one() -> None:
    loop = asyncio.get_running_loop()
    encoder = GatedEncoder()
    store = LIVectorStore(encoder=encoder)
    nodes = [TextNode(text=f"slow text {i}", id_=f"n{i}", metadata={"version": 1}) for i in range(3)]
    with own_executor(loop):
        try:
            await cancel_while_encoding(encoder, store.async_add(nodes))
            fixed = TextNode(text="fixed", id_="n0", metadata={"version": 2})
            assert await within(store.async_add([fixed])) == ["n0"]
        finally:
            encoder.gate.set()
        await within(drain(loop))
    assert [n.metadata["version"] for n in store.get_nodes(["n0", "n1", "n2"])] == [2]
    assert store.kl_store.ids == ["n0"]


async def test_llama_index_cancelled_adelete_nodes_deletes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    store = LIVectorStore(encoder=GatedEncoder())
    store.add([TextNode(text="a", id_="a"), TextNode(text="b", id_="b")])
    entered, gate = threading.Event(), threading.Event()
    read = store.kl_store.get_by_ids

    def gated_read(ids: Any) -> Any:
        entered.set()
        assert gate.wait(ASYNC_LIMIT)
        return read(ids)

    monkeypatch.setattr(store.kl_store, "get_by_ids", gated_read)
    with own_executor(loop):
        task = asyncio.ensure_future(store.adelete_nodes(["a"]))
        try:
            await within(until(entered))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            gate.set()
        await within(drain(loop))
        assert store.kl_store.ids == ["a", "b"]
        await within(store.adelete_nodes(["a"]))  # not cancelled: deleted
    assert store.kl_store.ids == ["b"]


# --------------------------------------------------------------------------- 3. LlamaIndex hybrid async writes
async def test_llama_index_hybrid_async_add_nodes_and_adelete_ref_doc() -> None:
    encoder = GatedEncoder()
    encoder.gate.set()  # nothing held
    retriever = LIHybridRetriever.from_defaults(nodes=[TextNode(text="cat sat", id_="cat")], encoder=encoder)
    doc = TextNode(text="dog in the sun", id_="dog")
    doc.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="source-1")
    assert await within(retriever.async_add_nodes([doc])) == ["dog"]
    assert sorted(retriever.store.ids) == ["cat", "dog"]
    assert await within(retriever.adelete_ref_doc("source-1")) == ["dog"]
    assert retriever.store.ids == ["cat"]


async def test_llama_index_hybrid_cancelled_async_add_nodes_writes_nothing() -> None:
    loop = asyncio.get_running_loop()
    encoder = GatedEncoder()
    retriever = LIHybridRetriever.from_defaults(nodes=[TextNode(text="cat sat", id_="cat")], encoder=encoder)
    nodes = [TextNode(text=f"slow text {i}", id_=f"n{i}") for i in range(3)]
    with own_executor(loop):
        try:
            await cancel_while_encoding(encoder, retriever.async_add_nodes(nodes))
        finally:
            encoder.gate.set()
        await within(drain(loop))
    assert retriever.store.ids == ["cat"]


@pytest.mark.parametrize("kind", ["dense", "hybrid"])
async def test_a_subclass_overriding_the_sync_retrieval_is_used_by_ainvoke_and_abatch(kind: str) -> None:
    """A user subclass that post-filters in ``_get_relevant_documents`` gets the same answer through ``ainvoke``."""
    embeddings = KLEmbeddings(encoder=make_tiny_encoder())
    base = KLRetriever if kind == "dense" else KLHybridRetriever

    class KeepOne(base):  # type: ignore[valid-type, misc]
        def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
            return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)[:1]

    if kind == "dense":
        retriever = KeepOne.from_store(KLVectorStore.from_texts(HYBRID_TEXTS, embeddings), k=3)
    else:
        retriever = KeepOne.from_texts(HYBRID_TEXTS, embeddings, k=3)
    assert len(retriever.invoke(HYBRID_TEXTS[0])) == 1
    assert len(await within(retriever.ainvoke(HYBRID_TEXTS[0]))) == 1
    assert [len(d) for d in await within(retriever.abatch([HYBRID_TEXTS[0], HYBRID_TEXTS[1]]))] == [1, 1]
