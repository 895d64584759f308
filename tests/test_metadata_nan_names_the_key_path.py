"""A NaN or infinite metadata number is a bad value: ``ValueError`` naming its key path, in every store and adapter.

``KLStore.add(metadatas=[{"nested": {"score": nan}}])`` raised ``TypeError("metadatas[0] is not
JSON-serialisable: Out of range float values are not JSON compliant")``, which named neither the key nor
what is allowed. A value of a type JSON cannot hold at all (a set, an object) still raises ``TypeError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import Gaussians, KLStore
from kl_retrievers.hybrid import KLHybridStore

BAD = {"title": "x", "nested": {"score": float("nan")}}
SAYS = r"holds nan at \['nested'\]\['score'\]: metadata values must be JSON values, whose numbers are finite"


def _one() -> Gaussians:
    return Gaussians(np.zeros((1, 3)), np.ones((1, 3)))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"nested": {"score": float("nan")}}, "nan at ['nested']['score']"),
        ({"a": [1.0, float("-inf")]}, "-inf at ['a'][1]"),
        ({"v": np.float32("inf")}, "inf at ['v']"),  # converted to a Python float first, as the store keeps it
        ({"v": np.array([[1.0], [np.nan]])}, "nan at ['v'][1][0]"),
        ({"s": {1}, "v": float("nan")}, "nan at ['v']"),  # named whatever else the metadata holds
        ({1: {"x": [float("nan")]}}, "nan at ['1']['x'][0]"),  # as the store keeps the key: a JSON string
    ],
    ids=["nested", "list", "numpy-scalar", "numpy-array", "beside-a-set", "int-key"],
)
def test_klstore_add_names_the_key_path(value: dict[Any, Any], says: str) -> None:
    store = KLStore()
    with pytest.raises(ValueError, match=rf"^metadatas\[1\] holds {re.escape(says)}: .*finite") as info:
        store.add(gaussians=Gaussians(np.zeros((2, 3)), np.ones((2, 3))), metadatas=[{"ok": 1.0}, value])
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(store) == 0


def test_a_nan_nested_as_deeply_as_add_takes_metadata_is_named_too() -> None:
    value: list[Any] = [float("nan")]
    for _ in range(699):  # the walk goes level by level: no RecursionError
        value = [value]
    with pytest.raises(ValueError, match=r"^metadatas\[0\] holds nan at \['x'\](\[0\])+\.\.\.(\[0\])+: ") as info:
        KLStore().add(gaussians=_one(), metadatas=[{"x": value}])
    assert len(str(info.value)) < 400  # the path shortened


@pytest.mark.parametrize("value", [{1, 2}, object()], ids=["set", "object"])
def test_a_type_json_cannot_hold_is_still_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match=r"metadatas\[0\] is not JSON-serialisable: Object of type \w+"):
        KLStore().add(gaussians=_one(), metadatas=[{"x": value}])


def test_texts_to_encode_are_not_encoded_for_it() -> None:
    encoder = make_tiny_encoder()
    with pytest.raises(ValueError, match=rf"^metadatas\[0\] {SAYS}"):
        KLStore(encoder=encoder).add(["a text"], metadatas=[BAD])


def test_hybrid_store_says_the_same() -> None:
    encoder = make_tiny_encoder()
    for gaussians in (None, encoder.encode_documents(["a text"])):
        store = KLHybridStore(encoder, fusion="rrf")
        with pytest.raises(ValueError, match=rf"^metadatas\[0\] {SAYS}"):
            store.add(["a text"], gaussians=gaussians, metadatas=[BAD])
        assert len(store) == 0


def test_langchain_says_the_same_naming_the_document() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    vs = KLVectorStore(KLEmbeddings(encoder=make_tiny_encoder()))
    with pytest.raises(ValueError, match=rf"^metadatas\[1\] \(document id 'q'\) {SAYS}"):
        vs.add_texts(["a", "b"], [{}, BAD], ids=["p", "q"])
    assert len(vs) == 0


def test_llama_index_says_the_same_naming_the_node() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode

    from kl_retrievers.llama_index import KLHybridRetriever, KLVectorStore

    encoder = make_tiny_encoder()
    vs = KLVectorStore(encoder=encoder)
    with pytest.raises(ValueError, match=rf"^the metadata of node 'n' {SAYS}"):
        vs.add([TextNode(text="a", id_="n", metadata=BAD)])
    assert len(vs.kl_store) == 0
    hybrid = KLHybridRetriever.from_defaults(nodes=[TextNode(text="a dog", id_="h")], encoder=encoder)
    with pytest.raises(ValueError, match=rf"^the metadata of node 'n' {SAYS}"):
        hybrid.add_nodes([TextNode(text="a", id_="n", metadata=BAD)])
    assert hybrid.store.ids == ["h"]


def test_milvus_store_says_the_same(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "nan.db"), collection_name="c", index_type="flat")
    try:
        with pytest.raises(ValueError, match=rf"^metadatas\[0\] {SAYS}"):
            store.add(gaussians=_one(), metadatas=[BAD])
        assert len(store) == 0
    finally:
        store.close()
