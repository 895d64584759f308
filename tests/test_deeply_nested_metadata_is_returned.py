"""Metadata nested as deeply as ``add`` and a saved store take it is returned by every search, not a RecursionError.

``add`` keeps whatever metadata survives its JSON round trip (some 900 levels deep, Python's recursion limit), and a
saved ``documents.jsonl`` is read as deep; but the copy every search and ``get_by_ids`` hands out was made by a
recursive function, so each of them raised ``RecursionError`` for such a document from about 500 levels on. The
copy is now made level by level (``kl_retrievers.filters._copied``), and so is the copy a callable filter reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import random_gaussians
from kl_retrievers.filters import _copied
from kl_retrievers.hub import sha256_file
from kl_retrievers.store import KLStore

DEPTH = 700  # lists in lists: what add keeps (under Python's recursion limit), deeper than a recursive copy goes


def _nested(levels: int) -> list[Any]:
    value: list[Any] = ["leaf"]
    for _ in range(levels - 1):
        value = [value]
    return value


def _levels(value: Any) -> int:
    """How many lists ``value`` nests (without recursion), checking the innermost is ``["leaf"]``."""
    levels = 0
    while isinstance(value, list):
        levels += 1
        value = value[0]
    assert value == "leaf"
    return levels


def _store(metadata: dict[str, Any]) -> KLStore:
    store = KLStore()
    g = random_gaussians(2, 4, seed=1)
    store.add(gaussians=g, ids=["deep", "flat"], metadatas=[metadata, {"n": 1}])
    return store


def _returns_deep_metadata(store: KLStore) -> None:
    query = random_gaussians(1, 4, seed=2)
    hits = store.search(query, k=2)
    deep = next(h for h in hits if h.id == "deep")
    assert _levels(deep.metadata["a"]) == DEPTH
    (doc,) = store.get_by_ids(["deep"])
    assert _levels(doc.metadata["a"]) == DEPTH
    # a callable filter reads copies of nested values too
    hits = store.search(query, k=2, filter=lambda m: "a" in m and _levels(m["a"]) == DEPTH)
    assert [h.id for h in hits] == ["deep"]
    # what is handed out is a copy: changing it changes nothing stored
    doc.metadata["a"][0][0].append("EVIL")
    (again,) = store.get_by_ids(["deep"])
    assert _levels(again.metadata["a"]) == DEPTH and len(again.metadata["a"][0][0]) == 1


def test_metadata_added_deeply_nested_is_returned_by_search_and_get_by_ids() -> None:
    _returns_deep_metadata(_store({"a": _nested(DEPTH)}))


def test_a_saved_documents_file_with_deep_metadata_loads_and_searches(tmp_path: Path) -> None:
    _store({"a": ["leaf"]}).save(tmp_path / "s")
    docs = tmp_path / "s" / "documents.jsonl"
    lines = docs.read_text().splitlines()
    record = json.loads(lines[0])
    record["metadata"] = {"a": _nested(DEPTH)}
    lines[0] = json.dumps(record)
    docs.write_text("\n".join(lines) + "\n")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["files"]["documents.jsonl"] = {"bytes": docs.stat().st_size, "sha256": sha256_file(docs)}
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    _returns_deep_metadata(KLStore.load(tmp_path / "s"))


@pytest.mark.parametrize("levels", [1, 3, 5000])
def test_the_copy_shares_nothing_mutable_at_any_depth(levels: int) -> None:
    stored = {"a": _nested(levels), "b": {"c": [1, {"d": "e"}]}, "n": np.float64(0.5)}
    copied = _copied(stored)
    assert _levels(copied["a"]) == levels
    node, original = copied["a"], stored["a"]
    while isinstance(node, list):
        assert node is not original
        node, original = node[0], original[0]
    assert copied["b"] == {"c": [1, {"d": "e"}]} and copied["b"]["c"][1] is not stored["b"]["c"][1]
    assert copied["n"] == 0.5


def test_a_mapping_that_holds_itself_is_copied_as_itself() -> None:
    looped: dict[str, Any] = {"tags": ["x"]}
    looped["self"] = looped
    looped["tags"].append(looped["tags"])
    copied = _copied(looped)
    assert copied is not looped and copied["self"] is copied
    assert copied["tags"][1] is copied["tags"] and copied["tags"] is not looped["tags"]
