"""Leftovers of the async-write and adapter rounds (5c39526, 515d764).

1. A cancelled async delete (LlamaIndex ``aclear`` / ``adelete(ref_doc_id)``, the LlamaIndex hybrid retriever's
   ``adelete_ref_doc``, LangChain's ``adelete(delete_all=True)``) cancelled before its cancellation check deletes
   nothing; the same call not cancelled deletes.
2. LlamaIndex's ``add`` forgot the encoders noted for its nodes before its cancellation check, so a cancelled
   ``async_add`` lost them and a retry recorded no model. Every async write encoded its texts before the store
   checked the ids (repeated, a lone surrogate, not a str), and LlamaIndex's sync ``add`` did too: a bad id now
   fails before any encoding, and an async write raises it on the caller's thread, before any worker thread runs.
3. LlamaIndex metadata: a ``uuid.UUID``, path or ``Enum`` dict KEY is stored as LlamaIndex's own node JSON
   (pydantic's JSON mode) writes it, as the values already were.
4. ``KLHybridStore.search_batch((mean, var))`` (Gaussians where texts belong) says where the Gaussians go.

Every async test runs under ``asyncio.wait_for``; worker threads are a small executor of the test's own, drained
before the assertions.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

import kl_retrievers._adapters as adapters
import kl_retrievers.langchain as klc
from conftest import ASYNC_LIMIT, CountingEncoder, drain, make_tiny_encoder, own_executor, within
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.llama_index import KLEmbedding
from kl_retrievers.llama_index import KLHybridRetriever as LIHybridRetriever
from kl_retrievers.llama_index import KLVectorStore as LIVectorStore


# --------------------------------------------------------------------------- 1. cancelled async deletes
class CheckGate:
    """Holds the first cancellation check of a write (``write_cancelled``) at a gate: the call is cancelled there,
    in its worker thread, after it started and before it could take the store's lock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls = 0
        original = adapters.write_cancelled

        def gated(what: str) -> bool:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.gate.wait(ASYNC_LIMIT)
            return original(what)

        monkeypatch.setattr(adapters, "write_cancelled", gated)  # the LlamaIndex adapter's
        monkeypatch.setattr(klc, "write_cancelled", gated)  # the LangChain adapter's (imported by name)

    async def cancel_at_check(self, write: Awaitable[Any]) -> None:
        """Start ``write``; cancel it while it waits at its cancellation check."""
        task = asyncio.ensure_future(write)
        try:
            while not (self.entered.is_set() or task.done()):
                await within(asyncio.sleep(0.005))
            assert not task.done(), "the write finished without checking whether it was cancelled"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            self.gate.set()


def source_node(node_id: str, source: str) -> TextNode:
    node = TextNode(text=f"text of {node_id}", id_=node_id)
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=source)
    return node


def li_store() -> LIVectorStore:
    store = LIVectorStore(encoder=CountingEncoder())
    store.add([source_node("a", "doc-1"), source_node("b", "doc-2")])
    return store


def li_hybrid() -> LIHybridRetriever:
    return LIHybridRetriever.from_defaults(
        nodes=[source_node("a", "doc-1"), source_node("b", "doc-2")], encoder=CountingEncoder()
    )


def lc_store() -> klc.KLVectorStore:
    store = klc.KLVectorStore(CountingEncoder())
    store.add_texts(["text of a", "text of b"], ids=["a", "b"])
    return store


def lc_hybrid() -> klc.KLHybridRetriever:
    return klc.KLHybridRetriever.from_texts(["text of a", "text of b"], CountingEncoder(), ids=["a", "b"])


def ids_of(target: Any) -> list[str]:
    return sorted(target.kl_store.ids if isinstance(target, LIVectorStore) else target.store.ids)


# (what, the target, the async delete, the ids left once it ran)
DELETES: dict[str, tuple[Callable[[], Any], Callable[[Any], Awaitable[Any]], list[str]]] = {
    "llama_index-aclear": (li_store, lambda s: s.aclear(), []),
    "llama_index-adelete-ref_doc_id": (li_store, lambda s: s.adelete("doc-1"), ["b"]),
    "llama_index-hybrid-adelete_ref_doc": (li_hybrid, lambda r: r.adelete_ref_doc("doc-1"), ["b"]),
    "langchain-adelete-delete_all": (lc_store, lambda s: s.adelete(delete_all=True), []),
    "langchain-hybrid-adelete-delete_all": (lc_hybrid, lambda r: r.adelete(delete_all=True), []),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(DELETES))
async def test_a_cancelled_async_delete_deletes_nothing(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, delete, left = DELETES[case]
    target = make()
    loop = asyncio.get_running_loop()
    with own_executor(loop):
        check = CheckGate(monkeypatch)
        await check.cancel_at_check(delete(target))
        await within(drain(loop))
        assert ids_of(target) == ["a", "b"]  # nothing deleted
        await within(delete(target))  # not cancelled: deleted
    assert ids_of(target) == left


# --------------------------------------------------------------------------- 2. the order of an async add
@pytest.mark.asyncio
async def test_a_cancelled_llama_index_async_add_keeps_the_noted_encoder_for_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``KLEmbedding`` embedded the nodes for this empty store (``VectorStoreIndex`` does): a cancelled
    ``async_add`` changes nothing, so adding the same nodes again records that encoder as the store's model."""
    encoder = make_tiny_encoder()
    texts = ["the cat sat", "green tea"]
    vectors = KLEmbedding(encoder).get_text_embedding_batch(texts)
    store = LIVectorStore()
    store._adopt_document_encoder(encoder, vectors)  # as KLEmbedding notes it, found on the call stack
    nodes = [TextNode(text=t, id_=t, embedding=v) for t, v in zip(texts, vectors, strict=True)]
    loop = asyncio.get_running_loop()
    with own_executor(loop):
        await CheckGate(monkeypatch).cancel_at_check(store.async_add(nodes))
        await within(drain(loop))
    assert len(store.kl_store) == 0 and store.kl_store.encoder is None
    assert store.add(nodes) == texts  # the retry
    assert store.kl_store.encoder is encoder


def test_a_refused_llama_index_add_still_forgets_the_noted_encoders() -> None:
    """Only a cancelled add keeps them: a refused one (here: metadata JSON cannot hold) forgets them, as before."""
    encoder = make_tiny_encoder()
    vectors = KLEmbedding(encoder).get_text_embedding_batch(["the cat sat"])
    store = LIVectorStore()
    store._adopt_document_encoder(encoder, vectors)
    bad = TextNode(text="the cat sat", id_="x", embedding=vectors[0], metadata={"x": object()})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.add([bad])
    store.add([TextNode(text="the cat sat", id_="x", embedding=vectors[0])])
    assert store.kl_store.encoder is None


LONE = "b\udce9"  # a lone surrogate: what bytes decoded with errors="surrogateescape" hold

# (what, a target, the write with bad ids, the error it raises)
Write = Callable[[Any, list[Any]], Any]
LC_WRITES: dict[str, tuple[Callable[[CountingEncoder], Any], Write]] = {
    "KLVectorStore.add_texts": (klc.KLVectorStore, lambda s, ids: s.add_texts(["x", "y"], ids=ids)),
    "KLVectorStore.aadd_texts": (klc.KLVectorStore, lambda s, ids: s.aadd_texts(["x", "y"], ids=ids)),
    "KLVectorStore.aadd_documents": (
        klc.KLVectorStore,
        lambda s, ids: s.aadd_documents([Document(page_content="x"), Document(page_content="y")], ids=ids),
    ),
    "KLVectorStore.aupsert": (
        klc.KLVectorStore,
        lambda s, ids: s.aupsert([Document(page_content="x"), Document(page_content="y")], ids=ids),
    ),
    "KLHybridRetriever.add_documents": (
        lambda e: klc.KLHybridRetriever.from_texts(["cat sat"], e, ids=["cat"]),
        lambda r, ids: r.add_documents([Document(page_content="x"), Document(page_content="y")], ids=ids),
    ),
    "KLHybridRetriever.aadd_documents": (
        lambda e: klc.KLHybridRetriever.from_texts(["cat sat"], e, ids=["cat"]),
        lambda r, ids: r.aadd_documents((Document(page_content=t) for t in "xy"), ids=iter(ids)),
    ),
}
LC_BAD_IDS: dict[str, tuple[list[Any], type[Exception], str]] = {
    "repeated": (["a", "a"], ValueError, r"ids must be unique within one add call; 'a' is at positions 0 and 1"),
    "lone-surrogate": (["a", LONE], ValueError, r"ids\[1\] holds a lone surrogate"),
    "not-a-str": (["a", 1], TypeError, r"ids\[1\] must be a str; got int 1"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", list(LC_BAD_IDS))
@pytest.mark.parametrize("write", list(LC_WRITES))
async def test_langchain_bad_ids_fail_before_any_encoding_on_the_callers_thread(write: str, bad: str) -> None:
    encoder = CountingEncoder()
    make, call = LC_WRITES[write]
    target = make(encoder)
    before = sorted(target.store.ids)
    encoder.documents_encoded = 0
    ids, error, match = LC_BAD_IDS[bad]
    with own_executor(asyncio.get_running_loop()) as pool:
        with pytest.raises(error, match=match):
            result = call(target, ids)
            if asyncio.iscoroutine(result):
                await within(result)
        assert pool.submitted == 0  # raised on the caller's thread: no worker thread was given the write
    assert encoder.documents_encoded == 0
    assert sorted(target.store.ids) == before


@pytest.mark.asyncio
async def test_langchain_async_add_reads_iterables_once_and_still_writes() -> None:
    """The async writes read their arguments on the caller's thread: generators work, ids given or generated."""
    store = klc.KLVectorStore(CountingEncoder())
    with own_executor(asyncio.get_running_loop()):
        ids = await within(store.aadd_texts((t for t in ["x", "y"]), iter([{"n": 1}, {"n": 2}]), ids=iter(["a", None])))
        assert ids[0] == "a" and len(ids[1]) == 32
        assert await within(store.aupsert([Document(page_content="z", id="c")])) == {"succeeded": ["c"], "failed": []}
        hybrid = klc.KLHybridRetriever.from_texts(["cat sat"], CountingEncoder(), ids=["cat"])
        docs = (Document(page_content=t, id=i) for t, i in [("dog", "d"), ("eel", "e")])
        assert await within(hybrid.aadd_documents(docs)) == ["d", "e"]
    assert [d.metadata for d in store.get_by_ids(["a", ids[1]])] == [{"n": 1}, {"n": 2}]
    assert sorted(hybrid.store.ids) == ["cat", "d", "e"]


LI_WRITES: dict[str, tuple[Callable[[CountingEncoder], Any], Callable[[Any, list[TextNode]], Any]]] = {
    "KLVectorStore.add": (lambda e: LIVectorStore(encoder=e), lambda s, nodes: s.add(nodes)),
    "KLVectorStore.async_add": (lambda e: LIVectorStore(encoder=e), lambda s, nodes: s.async_add(nodes)),
    "KLHybridRetriever.add_nodes": (
        lambda e: LIHybridRetriever.from_defaults(nodes=[TextNode(text="cat sat", id_="cat")], encoder=e),
        lambda r, nodes: r.add_nodes(nodes),
    ),
    "KLHybridRetriever.async_add_nodes": (
        lambda e: LIHybridRetriever.from_defaults(nodes=[TextNode(text="cat sat", id_="cat")], encoder=e),
        lambda r, nodes: r.async_add_nodes(nodes),
    ),
}
LI_BAD_IDS: dict[str, tuple[Callable[[], TextNode], type[Exception], str]] = {
    "lone-surrogate": (
        lambda: TextNode(text="y", id_=LONE),
        ValueError,
        r"nodes\[1\]\.node_id holds a lone surrogate '\\udce9' at character 1",
    ),
    "not-a-str": (
        lambda: TextNode.model_construct(text="y", id_=7),
        TypeError,
        r"nodes\[1\]\.node_id must be a str; got int 7",
    ),
}


def li_ids(target: Any) -> list[str]:
    return sorted(target.kl_store.ids if isinstance(target, LIVectorStore) else target.store.ids)


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", list(LI_BAD_IDS))
@pytest.mark.parametrize("write", list(LI_WRITES))
async def test_llama_index_bad_node_ids_fail_before_any_encoding_on_the_callers_thread(write: str, bad: str) -> None:
    encoder = CountingEncoder()
    make, call = LI_WRITES[write]
    target = make(encoder)
    before = li_ids(target)
    encoder.documents_encoded = 0
    node, error, match = LI_BAD_IDS[bad]
    nodes = [TextNode(text="x", id_="x"), node()]
    with own_executor(asyncio.get_running_loop()) as pool:
        with pytest.raises(error, match=match):
            result = call(target, nodes)
            if asyncio.iscoroutine(result):
                await within(result)
        assert pool.submitted == 0
    assert encoder.documents_encoded == 0
    assert li_ids(target) == before


def test_llama_index_repeated_node_ids_are_still_no_error() -> None:
    """The check of node ids keeps LlamaIndex's rule for a repeated id: the last occurrence wins."""
    store = LIVectorStore(encoder=CountingEncoder())
    assert store.add([TextNode(text="x1", id_="x"), TextNode(text="x2", id_="x")]) == ["x", "x"]
    assert [n.get_content() for n in store.get_nodes(["x"])] == ["x2"]


# --------------------------------------------------------------------------- 3. LlamaIndex metadata keys
class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 2


KEY_ID = uuid.UUID(int=7)


def as_llama_index_stores(node: TextNode) -> dict[str, Any]:
    """The node's metadata as LlamaIndex's own node JSON holds it (pydantic's JSON mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns that the keys are not str, and writes them as it can
        return dict(json.loads(node.model_dump_json())["metadata"])


@pytest.mark.parametrize(
    "key",
    [KEY_ID, Path("/data/a.txt"), Colour.RED, Size.BIG],
    ids=["uuid", "path", "enum", "int-enum"],
)
def test_llama_index_stores_uuid_path_and_enum_keys_as_llama_index_writes_them(key: Any) -> None:
    node = TextNode(text="x", id_="n", embedding=None)
    node.metadata[key] = KEY_ID  # TextNode refuses such a key at construction, not in its dict afterwards
    node.metadata["nested"] = {key: [1]}
    expected = as_llama_index_stores(node)
    assert expected[str(key.value if isinstance(key, enum.Enum) else key)] == str(KEY_ID)
    store = LIVectorStore(encoder=CountingEncoder())
    store.add([node])
    (back,) = store.get_nodes(["n"])
    assert back.metadata == expected
    assert {k: v for k, v in store.kl_store.get_by_ids(["n"])[0].metadata.items() if k in expected} == expected
    assert node.metadata[key] == KEY_ID  # the input is not modified


def test_llama_index_keys_that_become_the_same_are_refused_naming_them() -> None:
    node = TextNode(text="x", id_="n")
    node.metadata["m"] = {Colour.RED: 1, "red": 2}
    with pytest.raises(TypeError, match=r"the metadata of node 'n'\['m'\] has keys that are the same once written"):
        LIVectorStore(encoder=CountingEncoder()).add([node])


def test_llama_index_hybrid_converts_the_keys_too() -> None:
    node = TextNode(text="cat sat", id_="n")
    node.metadata[KEY_ID] = 1  # type: ignore[index]  # as a user's code may set it (TextNode would refuse it)
    retriever = LIHybridRetriever.from_defaults(nodes=[TextNode(text="dog", id_="d")], encoder=CountingEncoder())
    retriever.add_nodes([node])
    assert retriever.store.get_by_ids(["n"])[0].metadata[str(KEY_ID)] == 1


# --------------------------------------------------------------------------- 4. hybrid queries given as Gaussians
def hybrid_store() -> KLHybridStore:
    store = KLHybridStore(fusion="rrf")
    store.add(["x y", "y z"], gaussians=Gaussians(np.eye(2), np.ones((2, 2))), ids=["a", "b"])
    return store


MEAN, VAR = np.eye(2)[1:], np.ones((1, 2))
HINT = r"pass the texts, and precomputed query Gaussians beside them as query_gaussians=Gaussians\(mean, var\)"


@pytest.mark.parametrize(
    "queries",
    [(MEAN, VAR), [MEAN, VAR], MEAN, Gaussians(MEAN, VAR)],
    ids=["tuple-mean-var", "list-mean-var", "means", "gaussians"],
)
@pytest.mark.parametrize("method", ["search_batch", "candidates", "encode_queries", "search"])
def test_hybrid_queries_given_as_gaussians_say_where_they_go(queries: Any, method: str) -> None:
    with pytest.raises(TypeError, match=HINT):
        getattr(hybrid_store(), method)(queries)


def test_hybrid_other_bad_queries_get_no_gaussians_hint() -> None:
    store = hybrid_store()
    with pytest.raises(TypeError, match=r"queries\[0\] is float; every text must be a str$"):
        store.search_batch([1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"query must be a string \(BM25 reads it\); got int$"):
        store.search(3)  # type: ignore[arg-type]
    qg = Gaussians(MEAN, VAR)
    assert [h.id for h in store.search_batch(["z"], k=2, query_gaussians=qg)[0]] == ["b", "a"]  # the right way
