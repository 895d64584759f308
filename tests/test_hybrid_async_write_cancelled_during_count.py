"""An async write to a loaded ``KLHybridStore`` cancelled while the store counts its stored texts writes nothing.

A loaded hybrid store keeps no term counts: its first write counts every stored text (seconds on a large store)
before it takes its write lock (``KLHybridStore._ensure_tokens``, since 6d602ca). The adapters' async writes
(LangChain's ``KLHybridRetriever.aadd_documents`` / ``adelete``, LlamaIndex's ``KLHybridRetriever.async_add_nodes``
/ ``adelete_ref_doc``) checked their cancellation flag before ``store.add`` / ``store.delete``, so a call cancelled
during that count still wrote, against their docstrings ("writes nothing unless it holds the store's write lock
already"). The adapters now count first, then check.

Every wait runs under ``asyncio.wait_for``; the worker threads are a small executor of the test's own, drained
before the assertions.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

import kl_retrievers.langchain as klc
from conftest import ASYNC_LIMIT, CountingEncoder, drain, own_executor, within
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever

pytestmark = pytest.mark.asyncio


def source_node(node_id: str, source: str) -> TextNode:
    node = TextNode(text=f"text of {node_id}", id_=node_id)
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=source)
    return node


def loaded_store(tmp_path: Path, kind: str) -> KLHybridStore:
    """A hybrid store holding ``a`` (from doc-1) and ``b`` (doc-2), saved and loaded: its term counts not in memory."""
    encoder = CountingEncoder()
    if kind == "langchain":
        store = klc.KLHybridRetriever.from_texts(
            ["text of a", "text of b"], encoder, ids=["a", "b"], metadatas=[{"doc": 1}, {"doc": 2}]
        ).store
    else:
        store = LIHybridRetriever.from_defaults(
            nodes=[source_node("a", "doc-1"), source_node("b", "doc-2")], encoder=encoder
        ).store
    store.save(tmp_path / "hybrid")
    loaded = KLHybridStore.load(tmp_path / "hybrid", encoder=encoder)
    assert loaded._bm25.counts is None  # the first write counts the stored texts
    return loaded


class GatedCount:
    """Holds a loaded store's count of its stored texts (``_BM25Half.counted``) at a gate."""

    def __init__(self, store: KLHybridStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        half = store._bm25
        original = half.counted

        def gated(texts: Any) -> Any:
            self.entered.set()
            assert self.gate.wait(ASYNC_LIMIT)
            return original(texts)

        monkeypatch.setattr(half, "counted", gated)

    async def cancel_while_counting(self, write: Awaitable[Any]) -> None:
        """Start ``write``; cancel it while the store counts its texts (before its write lock)."""
        task = asyncio.ensure_future(write)
        try:
            while not (self.entered.is_set() or task.done()):
                await within(asyncio.sleep(0.005))
            assert not task.done(), "the write finished without counting the stored texts"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            self.gate.set()


# (adapter, the async write on the loaded store, the ids it leaves when not cancelled)
WRITES: dict[str, tuple[str, Callable[[KLHybridStore], Awaitable[Any]], list[str]]] = {
    "langchain-aadd_documents": (
        "langchain",
        lambda s: klc.KLHybridRetriever(store=s).aadd_documents([Document(page_content="new text", id="c")]),
        ["a", "b", "c"],
    ),
    "langchain-adelete": ("langchain", lambda s: klc.KLHybridRetriever(store=s).adelete(["a"]), ["b"]),
    "langchain-adelete-delete_all": (
        "langchain",
        lambda s: klc.KLHybridRetriever(store=s).adelete(delete_all=True),
        [],
    ),
    "llama_index-async_add_nodes": (
        "llama_index",
        lambda s: LIHybridRetriever(s).async_add_nodes([source_node("c", "doc-3")]),
        ["a", "b", "c"],
    ),
    "llama_index-adelete_ref_doc": ("llama_index", lambda s: LIHybridRetriever(s).adelete_ref_doc("doc-1"), ["b"]),
}


@pytest.mark.parametrize("case", list(WRITES))
async def test_a_write_cancelled_while_a_loaded_hybrid_store_counts_its_texts_writes_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, write, left = WRITES[case]
    store = loaded_store(tmp_path, kind)
    loop = asyncio.get_running_loop()
    with own_executor(loop):
        count = GatedCount(store, monkeypatch)
        await count.cancel_while_counting(write(store))
        await within(drain(loop))
        assert sorted(store.ids) == ["a", "b"]  # nothing written
        assert sorted(store._bm25.metas) == ["a", "b"]
        assert store._bm25.counts is not None  # counted all the same: the next write does not count again
        await within(write(store))  # not cancelled: written
    assert sorted(store.ids) == left
    assert sorted(store._bm25.metas) == left
