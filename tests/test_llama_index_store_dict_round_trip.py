"""LlamaIndex ``KLVectorStore``'s dict form (``to_dict``, ``model_dump``, ``to_json``) and its keyword checks.

* ``from_dict(to_dict())`` kept the fields only: an ``index_type="hnsw"`` store came back flat, an explicit
  calibrator was dropped, and a store that held nodes came back empty without a word. The dict now carries
  the ``KLStore`` options that differ from their defaults and the calibrator, and building a store from it
  warns that the nodes were not carried (``persist`` saves them).
* ``model_validate(model_dump())``, ``model_validate_json`` and ``KLVectorStore(**store.to_dict())`` raised
  ``TypeError: KLStore.__init__() got an unexpected keyword argument 'class_name'``.
* A typo'd keyword named ``KLStore.__init__``; it now names ``KLVectorStore`` (a subclass by its own name), every
  unknown keyword with its closest option, and all the options (read from ``__init__``'s signature).
* A Milvus-backed store's dict warned to ``persist`` it; its nodes stay in Milvus, so it says to reopen the collection.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.schema import TextNode

from conftest import max_score_calibrator, random_gaussians
from kl_retrievers.gaussian import kl_document_vectors
from kl_retrievers.index import KLStore
from kl_retrievers.llama_index import KLVectorStore


def _store(**kw: Any) -> KLVectorStore:
    store = KLVectorStore(**kw)
    vectors = kl_document_vectors(random_gaussians(2, 3, seed=0))
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)])
    return store


REBUILDS: dict[str, Callable[[KLVectorStore], KLVectorStore]] = {
    "from_dict": lambda s: KLVectorStore.from_dict(s.to_dict()),
    "from_json": lambda s: KLVectorStore.from_json(s.to_json()),
    "model_validate": lambda s: KLVectorStore.model_validate(s.model_dump()),
    "model_validate_json": lambda s: KLVectorStore.model_validate_json(s.model_dump_json()),
    "keywords": lambda s: KLVectorStore(**s.to_dict()),
}


@pytest.mark.parametrize("how", sorted(REBUILDS))
def test_the_dict_carries_the_settings_and_warns_that_the_nodes_stay_behind(how: str) -> None:
    calibrator = max_score_calibrator()
    store = _store(index_type="hnsw", hnsw_m=16, relevance="inverse", flat_metadata=True, calibrator=calibrator)
    with pytest.warns(UserWarning, match=r"held 2 node\(s\).*persist"):
        back = REBUILDS[how](store)
    inner = back._store
    assert isinstance(inner, KLStore)
    assert (inner.index_type, inner.hnsw_m, inner.dim, len(inner)) == ("hnsw", 16, 3, 0)
    assert (back.relevance, back.flat_metadata) == ("inverse", True)
    assert back.calibrator is not None and back.calibrator.to_dict() == calibrator.to_dict()


def test_an_empty_store_round_trips_without_a_warning() -> None:
    data = KLVectorStore(relevance="inverse").to_dict()
    assert data == {
        "stores_text": True,
        "is_embedding_query": True,
        "flat_metadata": False,
        "relevance": "inverse",
        "class_name": "KLVectorStore",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = KLVectorStore.from_dict(data)
    assert back.relevance == "inverse" and isinstance(back._store, KLStore) and back._store.index_type == "flat"


def test_a_dict_of_another_class_is_refused() -> None:
    with pytest.raises(ValueError, match="class_name must be 'KLVectorStore'.*'SimpleVectorStore'"):
        KLVectorStore(class_name="SimpleVectorStore")


@pytest.mark.parametrize(
    ("keyword", "closest"), [("bogus", None), ("index_typ", "index_type"), ("relevence", "relevance")]
)
def test_an_unknown_keyword_names_the_class_and_the_options(keyword: str, closest: str | None) -> None:
    with pytest.raises(TypeError) as info:
        options: dict[str, Any] = {keyword: 1}
        KLVectorStore(**options)
    message = str(info.value)
    assert message.startswith(f"KLVectorStore() got unexpected keyword argument(s) [{keyword!r}]")
    assert "KLStore.__init__" not in message and "'hnsw_m'" in message and "'is_embedding_query'" in message
    assert (f"{keyword}: did you mean {closest!r}" in message) == (closest is not None)


def test_every_unknown_keyword_is_named_with_its_closest_option() -> None:
    options: dict[str, Any] = {"index_typ": "hnsw", "bogus": 1, "relevence": "exp"}
    with pytest.raises(TypeError) as info:
        KLVectorStore(**options)
    message = str(info.value)
    assert message.startswith("KLVectorStore() got unexpected keyword argument(s) ['bogus', 'index_typ', 'relevence']")
    assert "index_typ: did you mean 'index_type'?" in message and "relevence: did you mean 'relevance'?" in message


def test_a_subclass_is_named_and_its_own_options_are_taken() -> None:
    class TaggedStore(KLVectorStore):
        def __init__(self, store: Any = None, *, tag: str = "", **kwargs: Any) -> None:
            super().__init__(store, **kwargs)

    with pytest.raises(
        TypeError,
        match=r"^TaggedStore\(\) got unexpected keyword argument\(s\) \['tga'\] \(tga: did you mean 'tag'\?\)",
    ):
        TaggedStore(tga="x")


def test_a_milvus_backed_stores_dict_warns_that_its_nodes_stay_behind(tmp_path: Any) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    milvus = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="nodes", index_type="flat")
    store = KLVectorStore(store=milvus)
    vectors = kl_document_vectors(random_gaussians(2, 3, seed=0))
    store.add([TextNode(id_=f"n{i}", text=f"t{i}", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)])
    data = store.to_dict()
    assert data["nodes_in_milvus"] == {"collection_name": "nodes"}
    with pytest.warns(UserWarning, match=r"held 2 node\(s\).*stay in the Milvus collection 'nodes'") as seen:
        back = KLVectorStore.from_dict(data)
    message = str(seen[0].message)
    assert "KLVectorStore(store=MilvusKLStore(uri, collection_name='nodes'))" in message and "persist" not in message
    assert isinstance(back._store, KLStore) and len(back._store) == 0
