"""An async filtered delete judges its filter as the sync one does: under the store's read lock, searches going on.

LlamaIndex's ``KLVectorStore.adelete`` / ``adelete_nodes`` used to take the store's write lock around the whole
``KLStore.delete(ids, filter=...)`` (to check a cancellation again once the lock was held), so every document's
metadata was judged while searches waited; the sync ``delete`` judges it under the read lock. The cancellation is
now asked by the store's own write, right after it takes the write lock (``kl_retrievers._adapters.WriteGate``).
Over a ``MilvusKLStore`` the callable filter is judged on the rows read back, without the store's lock.
An async add's metadata conversion and float32 casts run before the write lock too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

import kl_retrievers.llama_index as li
from conftest import CountingEncoder
from kl_retrievers import KLStore
from kl_retrievers.gaussian import Gaussians

if TYPE_CHECKING:
    from kl_retrievers._adapters import WriteGate

SEARCH_LIMIT = 10.0  # seconds a search may take while the filter runs (it takes milliseconds unless blocked)


def _nodes() -> list[TextNode]:
    nodes = []
    for i in range(4):
        node = TextNode(text=f"text {i}", id_=f"n{i}", metadata={"group": i % 2})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"r{i % 2}")
        nodes.append(node)
    return nodes


def _search_finishes(store: Any) -> bool:
    """Whether a search of ``store`` (run in another thread) returns within :data:`SEARCH_LIMIT` seconds."""
    done = threading.Event()

    def search() -> None:
        store.search(CountingEncoder().encode_queries(["text 1"]), k=2)
        done.set()

    threading.Thread(target=search, daemon=True).start()
    return done.wait(SEARCH_LIMIT)


@pytest.fixture
def milvus_store(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    try:
        yield store
    finally:
        store.close()


def _spied(monkeypatch: pytest.MonkeyPatch, vector_store: li.KLVectorStore) -> list[bool]:
    """Each time the filter reads a node's ``ref_doc_id``: whether a search of the store finishes meanwhile."""
    original = li._ref_doc_id
    searched: list[bool] = []

    def spy(metadata: Any) -> Any:
        if not searched:  # once: a search per document would take long when blocked
            searched.append(_search_finishes(vector_store._store))
        return original(metadata)

    monkeypatch.setattr(li, "_ref_doc_id", spy)
    return searched


@pytest.mark.parametrize("call", ["delete", "adelete"])
def test_a_filtered_delete_judges_its_filter_while_searches_go_on(monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    vector_store = li.KLVectorStore(encoder=CountingEncoder())
    vector_store.add(_nodes())
    searched = _spied(monkeypatch, vector_store)
    if call == "delete":
        vector_store.delete("r1")
    else:
        asyncio.run(vector_store.adelete("r1"))
    assert searched == [True], "a search waited while the delete judged its filter"
    assert vector_store.kl_store.ids == ["n0", "n2"]


def test_adelete_nodes_judges_a_callable_filter_under_the_read_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    vector_store = li.KLVectorStore(encoder=CountingEncoder())
    vector_store.add(_nodes())
    store = cast(KLStore, vector_store.kl_store)
    writers: list[object] = []
    original = store._prepare_filter

    def prepare(filter: Any) -> Any:
        compiled = original(filter)

        def judged(metadata: Any) -> bool:
            writers.append(store._lock._writer)
            return bool(compiled(metadata))

        return judged

    monkeypatch.setattr(store, "_prepare_filter", prepare)
    filters = MetadataFilters(filters=[MetadataFilter(key="group", value=0)])
    asyncio.run(vector_store.adelete_nodes(filters=filters))
    assert writers and set(writers) == {None}, "the filter ran under the write lock"
    assert store.ids == ["n1", "n3"]


def test_adelete_over_milvus_judges_its_filter_without_the_store_lock(
    monkeypatch: pytest.MonkeyPatch, milvus_store: Any
) -> None:
    vector_store = li.KLVectorStore(store=milvus_store, encoder=CountingEncoder())
    vector_store.add(_nodes())
    original = li._ref_doc_id
    free: list[bool] = []

    def spy(metadata: Any) -> Any:
        if not free:  # whether another thread can take the store's lock meanwhile (a search, a write)

            def take() -> None:
                if milvus_store._lock.acquire(timeout=SEARCH_LIMIT):
                    milvus_store._lock.release()
                    free.append(True)

            thread = threading.Thread(target=take)
            thread.start()
            thread.join()
            free.append(False)
        return original(metadata)

    monkeypatch.setattr(li, "_ref_doc_id", spy)
    asyncio.run(vector_store.adelete("r1"))
    assert free[0], "the store's lock was held while the filter ran"
    assert sorted(milvus_store.ids) == ["n0", "n2"]


def test_an_async_add_checks_and_converts_its_documents_before_the_write_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.documents import Document

    from kl_retrievers.langchain import KLVectorStore
    from kl_retrievers.store import _base

    vector_store = KLVectorStore(CountingEncoder())
    store = cast(KLStore, vector_store.store)
    original = _base._new_documents
    writers: list[object] = []

    def spied(*args: Any, **kwargs: Any) -> Any:  # metadata JSON round trip, id and text checks
        writers.append(store._lock._writer)
        return original(*args, **kwargs)

    monkeypatch.setattr(_base, "_new_documents", spied)
    docs = [Document(page_content="a", id="a", metadata={"v": np.float64(1.5)})]
    assert asyncio.run(vector_store.aadd_documents(docs)) == ["a"]
    assert writers == [None], "the documents were checked and converted under the store's write lock"
    assert store.get_by_ids(["a"])[0].metadata == {"v": 1.5}


def _write_in(context: Callable[[], Any], cancel: bool) -> tuple[WriteGate, Any]:
    """``context()`` run as an async write's worker thread runs it, inside the gate, the call cancelled or not."""

    from kl_retrievers import _adapters

    async def main() -> tuple[WriteGate, Any]:
        def work() -> tuple[WriteGate, Any]:
            with _adapters.store_write_unless_cancelled("test write") as gate:
                if cancel:
                    flag.set()  # cancelled after the first check, before the store's write lock
                return gate, context()

        flag = threading.Event()
        token = _adapters._WRITE_CANCELLED.set(flag)
        try:
            return await asyncio.to_thread(work)
        finally:
            _adapters._WRITE_CANCELLED.reset(token)

    return asyncio.run(main())


def test_a_store_write_asks_the_gate_under_its_lock_and_a_cancelled_one_writes_nothing() -> None:
    store = KLStore()
    store.add(gaussians=Gaussians(np.zeros((1, 2)), np.ones((1, 2))), ids=["x"])
    new = Gaussians(np.ones((1, 2)), np.ones((1, 2)))
    gate, _ = _write_in(lambda: store.add(gaussians=new, ids=["y"], metadatas=[{"v": np.float64(1.5)}]), cancel=True)
    assert not gate.go and store.ids == ["x"]
    gate, report = _write_in(lambda: store.delete(["x"]), cancel=True)
    assert not gate.go and report.deleted == [] and store.ids == ["x"]
    gate, _ = _write_in(lambda: store.add(gaussians=new, ids=["y"]), cancel=False)
    assert gate.go and store.ids == ["x", "y"]


def test_the_gate_of_a_sync_call_lets_the_write_go_ahead() -> None:
    from kl_retrievers._adapters import cancellable_write, store_write_unless_cancelled

    with store_write_unless_cancelled("sync") as gate:
        assert gate.go and gate()
    assert asyncio.run(cancellable_write(lambda: 3)) == 3
