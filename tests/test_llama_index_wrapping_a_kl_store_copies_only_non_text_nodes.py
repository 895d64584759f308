"""``KLVectorStore(store=kl)`` over a filled ``KLStore`` copies only the stored ``IndexNode`` / ``ImageNode``
documents: it used to read every document (``get_by_ids(kl.ids)``, a full metadata copy) to find those nodes and
the reserved (score) metadata keys. The non-text ids and the one reserved-key warning (given at creation) are
as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from kl_retrievers.gaussian import Gaussians, kl_document_vectors, kl_query_vectors
from kl_retrievers.index import KLStore
from kl_retrievers.llama_index import KLVectorStore
from kl_retrievers.store._table import DocumentTable

N = 40
#: id -> metadata of the documents that differ from the plain ones
SPECIAL: dict[str, dict[str, Any]] = {
    "index": {"_node_type": "IndexNode", "src": "a"},
    "image": {"_node_type": "ImageNode", "tags": ["x", "y"]},  # nested metadata: read through a copying view
    "list-type": {"_node_type": ["IndexNode"]},  # no node type: a plain document
    "text": {"_node_type": "TextNode"},
    "scored": {"neg_kl": 1.0, "deep": {"confidence": 1}},  # a top-level reserved key (a nested one is no key)
    "nested-scored": {"fusion": "mine", "more": [1, 2]},
}


def _store() -> KLStore:
    ids = [f"d{i}" for i in range(N - len(SPECIAL))] + list(SPECIAL)
    metadatas = [{"page": i} for i in range(N - len(SPECIAL))] + list(SPECIAL.values())
    kl = KLStore()
    kl.add(gaussians=Gaussians(np.arange(2.0 * N).reshape(N, 2), np.ones((N, 2))), ids=ids, metadatas=metadatas)
    return kl


def _reserved_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reserved" in r.getMessage().lower()]


@pytest.mark.parametrize("saved", [False, True], ids=["in-memory", "loaded"])
def test_creation_copies_only_the_non_text_documents(
    saved: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kl = _store()
    if saved:
        kl = KLStore.load(kl.save(tmp_path / "s"))
    copied: list[str] = []
    copy_row = DocumentTable._metadata_copy

    def counting(table: DocumentTable, row: int) -> dict[str, Any]:
        copied.append(table.ids[row])
        return copy_row(table, row)

    monkeypatch.setattr(DocumentTable, "_metadata_copy", counting)
    by_ids = kl.get_by_ids
    asked: list[int] = []

    def asking(ids: Any) -> Any:
        asked.append(len(ids))
        return by_ids(ids)

    monkeypatch.setattr(kl, "get_by_ids", asking)
    with caplog.at_level(logging.WARNING):
        vs = KLVectorStore(store=kl)
    assert sorted(copied) == ["image", "index"], copied  # HEAD: every document
    assert asked == []
    assert vs._stored_non_text_ids() == {"index", "image"}
    warned = _reserved_warnings(caplog)
    assert len(warned) == 1 and "documents already stored" in warned[0], warned
    assert "'fusion'" in warned[0] and "'neg_kl'" in warned[0] and "'confidence'" not in warned[0], warned


def test_the_reserved_key_warning_is_given_once(caplog: pytest.LogCaptureFixture) -> None:
    """Given at creation; a later query or add of a node with a reserved key does not repeat it."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    kl = _store()
    with caplog.at_level(logging.WARNING):
        vs = KLVectorStore(store=kl)
        g = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))
        vs.query(VectorStoreQuery(query_embedding=list(kl_query_vectors(g)[0]), similarity_top_k=3))
        node = TextNode(id_="n", text="x", metadata={"confidence": "mine"}, embedding=list(kl_document_vectors(g)[0]))
        vs.add([node])
    assert vs.kl_store.get_by_ids(["n"])[0].metadata["confidence"] == "mine"
    assert len(_reserved_warnings(caplog)) == 1, _reserved_warnings(caplog)


def test_no_warning_and_no_copy_for_plain_documents(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kl = KLStore()
    kl.add(gaussians=Gaussians(np.zeros((5, 2)), np.ones((5, 2))), metadatas=[{"page": i} for i in range(5)])
    copied: list[int] = []
    copy_row = DocumentTable._metadata_copy

    def counting(table: DocumentTable, row: int) -> dict[str, Any]:
        copied.append(row)
        return copy_row(table, row)

    monkeypatch.setattr(DocumentTable, "_metadata_copy", counting)
    with caplog.at_level(logging.WARNING):
        vs = KLVectorStore(store=kl)
    assert copied == [] and vs._stored_non_text_ids() == frozenset()
    assert _reserved_warnings(caplog) == []
