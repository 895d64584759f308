"""LlamaIndex metadata whose dict keys are tuples or dates is stored as LlamaIndex's own node JSON writes it.

``TextNode`` refuses such a key at construction, not in its metadata dict set or changed later (or in a nested
dict). LlamaIndex's node JSON (``node.model_dump(mode="json")``, what ``SimpleVectorStore`` stores) writes a tuple
key as its items joined by commas (``(1, 2)`` as ``"1,2"``) and a date, time, datetime or timedelta key as pydantic's
ISO text; our vector store refused the node ("keys must be str, int, float, bool or None, not tuple"). It now
stores what ``SimpleVectorStore`` stores, top-level and nested, in a split node's ``SOURCE`` metadata too, and the
hybrid retriever does the same; two keys that become one spelling are refused, naming them.
"""

from __future__ import annotations

import datetime
import warnings
from typing import Any

import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import SimpleVectorStore

from conftest import CountingEncoder
from kl_retrievers.llama_index import KLHybridRetriever, KLVectorStore

UTC = datetime.timezone.utc
KEYS: dict[str, Any] = {
    "tuple": (1, 2),
    "str-tuple": ("a", "b"),
    "nested-tuple": (1, (2, "x"), None, True),
    "date": datetime.date(2024, 5, 1),
    "datetime": datetime.datetime(2024, 5, 1, 3, 4, 5),
    "datetime-utc": datetime.datetime(2024, 5, 1, 3, 4, 5, tzinfo=UTC),
    "time": datetime.time(3, 4),
    "timedelta": datetime.timedelta(seconds=90),
    "tuple-of-dates": (datetime.date(2024, 5, 1), datetime.date(2024, 5, 2)),
}
# what LlamaIndex's SimpleVectorStore adds to a node's metadata besides the node's own
LLAMA_INDEX_KEYS = {"_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id"}


def node_with_key(key: Any) -> TextNode:
    node = TextNode(text="cat sat", id_="n", embedding=None)
    node.metadata[key] = "top"  # TextNode refuses such a key at construction, not in its dict afterwards
    node.metadata["nested"] = {key: [1, {key: "deep"}]}
    source = RelatedNodeInfo(node_id="doc")
    source.metadata[key] = "source"  # as a document's metadata set after construction, copied into its nodes
    node.relationships[NodeRelationship.SOURCE] = source
    return node


def simple_vector_store_metadata(node: TextNode) -> dict[str, Any]:
    """The node's metadata as LlamaIndex's ``SimpleVectorStore`` stores it."""
    store = SimpleVectorStore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns that the keys are not str, and writes them as it can
        store.add([node.model_copy(update={"embedding": [0.0, 1.0]})])
    stored = store.data.metadata_dict["n"]
    return {key: value for key, value in stored.items() if key not in LLAMA_INDEX_KEYS}


@pytest.mark.parametrize("key", list(KEYS.values()), ids=list(KEYS))
def test_tuple_and_date_keys_are_stored_as_simple_vector_store_stores_them(key: Any) -> None:
    node = node_with_key(key)
    expected = simple_vector_store_metadata(node)
    spelled = next(k for k in expected if k != "nested")
    assert isinstance(spelled, str) and expected == {spelled: "top", "nested": {spelled: [1, {spelled: "deep"}]}}
    store = KLVectorStore(encoder=CountingEncoder())
    assert store.add([node]) == ["n"]  # refused before: "keys must be str, int, float, bool or None, not tuple"
    (back,) = store.get_nodes(["n"])
    assert back.metadata == expected
    assert {k: v for k, v in store.kl_store.get_by_ids(["n"])[0].metadata.items() if k in expected} == expected
    assert back.source_node is not None and back.source_node.metadata == {spelled: "source"}
    assert node.metadata[key] == "top"  # the input is not modified


def test_the_spellings_are_llama_index_s() -> None:
    node = TextNode(text="x", id_="n")
    for key in KEYS.values():
        node.metadata[key] = 1
    assert sorted(simple_vector_store_metadata(node)) == [
        "03:04:00",
        "1,2",
        "1,2,x,None,true",
        "2024-05-01",
        "2024-05-01,2024-05-02",
        "2024-05-01T03:04:05",
        "2024-05-01T03:04:05Z",
        "PT1M30S",
        "a,b",
    ]
    store = KLVectorStore(encoder=CountingEncoder())
    store.add([node])
    assert store.get_nodes(["n"])[0].metadata == simple_vector_store_metadata(node)


def test_the_hybrid_retriever_stores_them_the_same_way() -> None:
    node = node_with_key((1, 2))
    retriever = KLHybridRetriever.from_defaults(nodes=[TextNode(text="dog", id_="d")], encoder=CountingEncoder())
    retriever.add_nodes([node])
    stored = retriever.store.get_by_ids(["n"])[0].metadata
    assert stored["1,2"] == "top" and stored["nested"] == {"1,2": [1, {"1,2": "deep"}]}


def test_keys_that_become_one_spelling_are_refused_naming_them() -> None:
    node = TextNode(text="x", id_="n")
    node.metadata["m"] = {(1, 2): 1, "1,2": 2}
    with pytest.raises(TypeError, match=r"the metadata of node 'n'\['m'\] has keys that are the same once written"):
        KLVectorStore(encoder=CountingEncoder()).add([node])


def test_a_key_pydantic_cannot_write_either_is_still_refused() -> None:
    node = TextNode(text="x", id_="n")
    node.metadata[frozenset([1])] = 1  # type: ignore[index]
    with pytest.raises(ValueError):  # LlamaIndex's own store refuses it too (pydantic's serialisation error)
        simple_vector_store_metadata(node)
    with pytest.raises(TypeError, match=r"the metadata of node 'n' is not JSON-serialisable: .*frozenset"):
        KLVectorStore(encoder=CountingEncoder()).add([node])
