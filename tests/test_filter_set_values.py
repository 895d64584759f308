"""A set or frozenset as a filter value: the values of ``$in`` / ``$nin``, refused anywhere else.

A bare set (``{"lang": {"en", "de"}}``), or one in ``$eq`` / ``$ne`` / a comparison or inside a list, used
to be compared as the list of its elements in iteration order, which for strings depends on
``PYTHONHASHSEED``: it matched nothing on a scalar field and, on a list field, matched by chance. It now
raises ``ValueError`` naming the key and the set on every store; MilvusKLStore named a "list" it was not
given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore

METAS: list[dict[str, Any]] = [
    {"lang": "en", "tags": ["en", "de"], "n": 1},
    {"lang": "de", "tags": ["de", "en"], "n": 2},
    {"lang": "fr", "tags": ["fr"], "n": 3},
]
IDS = ["a", "b", "c"]
QUERY = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))

#: Filters holding a set where a value is compared, each with the key its error must name.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"lang": {"en", "de"}}, "lang"),
    ({"tags": frozenset({"en", "de"})}, "tags"),
    ({"lang": {"$eq": {"en"}}}, "lang"),
    ({"lang": {"$ne": frozenset({"en"})}}, "lang"),
    ({"lang": {"$neq": {"en"}}}, "lang"),
    ({"n": {"$gt": {1}}}, "n"),
    ({"lang": {"$not": {"$eq": {"en"}}}}, "lang"),
    ({"tags": [{"en"}, "fr"]}, "tags"),
    ({"tags": {"$in": [frozenset({"en", "de"})]}}, "tags"),
    ({"$or": [{"n": 1}, {"lang": {"de"}}]}, "lang"),
]


def _store() -> KLStore:
    store = KLStore()
    store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=IDS, metadatas=METAS)
    return store


def _ids(results: list[Any]) -> list[str]:
    return sorted(str(r.id) for r in results)


@pytest.mark.parametrize(("flt", "key"), REFUSED)
def test_set_compared_as_a_value_is_refused_naming_the_key_and_set(flt: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set.*write a list") as info:
        compile_filter(flt)
    assert "$in" in str(info.value)
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set"):
        _store().search(QUERY, k=3, filter=flt)
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set"):
        KLStore(dim=2).search(QUERY, k=3, filter=flt)  # empty: checked before anything is searched


def test_error_names_the_set_and_suggests_its_elements_as_a_list() -> None:
    with pytest.raises(ValueError) as info:
        compile_filter({"lang": {"en", "de"}})
    message = str(info.value)
    assert "'de'" in message and "'en'" in message
    assert "{'lang': ['de', 'en']}" in message  # the suggestion in a stable (sorted) order


@pytest.mark.parametrize("kind", [set, frozenset])
def test_set_as_in_and_nin_values_is_the_list_of_its_elements(kind: type) -> None:
    store = _store()
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": kind({"en", "de"})}})) == ["a", "b"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$nin": kind({"en", "de"})}})) == ["c"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$not": {"$in": kind({"fr"})}}})) == ["a", "b"]
    # a list field compared with each element (equality with the whole list): nothing here
    assert _ids(store.search(QUERY, k=3, filter={"tags": {"$in": kind({"en", "de"})}})) == []


def test_refusal_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    code = (
        "from kl_retrievers.filters import compile_filter\n"
        "for f in ({'tags': {'en', 'de'}}, {'lang': {'$eq': {'en', 'de'}}}):\n"
        "    try:\n"
        "        compile_filter(f)\n"
        "        print('accepted')\n"
        "    except ValueError:\n"
        "        print('refused')\n"
        "m = compile_filter({'tags': {'$in': {'en', 'de'}}})\n"
        "print(m({'tags': 'de'}), m({'tags': ['de', 'en']}), m({'tags': ['en', 'de']}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout)
    assert outputs == {"refused\nrefused\nTrue False False\n"}


def test_hybrid_store_refuses_a_bare_set() -> None:
    from kl_retrievers.hybrid import KLHybridStore

    hybrid = KLHybridStore(make_tiny_encoder())
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        hybrid.search("cat", k=3, filter={"lang": {"en", "de"}})  # empty
    hybrid.add(["the cat", "a dog", "tea"], ids=IDS, metadatas=METAS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        hybrid.search("cat", k=3, filter={"lang": {"en", "de"}})
    assert _ids(hybrid.search("cat", k=3, filter={"lang": {"$in": {"en", "de"}}})) == ["a", "b"]


def test_langchain_store_refuses_a_bare_set() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    vs = KLVectorStore(KLEmbeddings(make_tiny_encoder()))
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        vs.similarity_search("cat", k=3, filter={"lang": {"en", "de"}})  # empty
    vs.add_texts(["the cat", "a dog", "tea"], METAS, ids=IDS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        vs.similarity_search("cat", k=3, filter={"lang": {"en", "de"}})
    assert sorted(str(d.id) for d in vs.similarity_search("cat", k=3, filter={"lang": {"$in": {"en", "de"}}})) == [
        "a",
        "b",
    ]


def test_milvus_names_the_set_not_a_list() -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.milvus import to_milvus_expr

    for flt in ({"lang": {"en", "de"}}, {"lang": {"$eq": frozenset({"en"})}}, {"tags": [{"en"}]}):
        with pytest.raises(ValueError, match=r"filter on '(lang|tags)': .*got the set .*write a list") as info:
            to_milvus_expr(flt)
        assert "got list" not in str(info.value)
    assert to_milvus_expr({"lang": {"$in": {"en"}}}) == to_milvus_expr({"lang": {"$in": ["en"]}})
    with pytest.raises(ValueError, match="got list"):  # a tuple value: equality with a list, as before
        to_milvus_expr({"v": (1, 2)})


def test_milvus_store_refuses_a_bare_set(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "sets.db"), collection_name="c", index_type="flat")
    store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=IDS, metadatas=METAS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*got the set"):
        store.search(QUERY, k=3, filter={"lang": {"en", "de"}})
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": {"en", "de"}}})) == ["a", "b"]
