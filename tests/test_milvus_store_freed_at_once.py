"""A dropped ``MilvusKLStore`` is freed at once, not by a later cyclic garbage collection.

Two pymilvus errors held the store in a reference cycle: creating a collection on Milvus Lite made pymilvus wait for
the index build by asking for a timestamp Milvus Lite does not implement, and grpc keeps the failed call's error in a
local variable of its interceptor frames, which the error's traceback holds (pymilvus swallows the error); and the
``describe_collection`` error a store catches when its collection was dropped is its own cause (pymilvus' ``raise e
from e``). Either traceback held the frame of every caller up the stack, the store's among them, until the cyclic
collector ran (as the dropped ``KLStore`` of ``tests/test_dropped_store_freed_at_once.py`` did).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
from test_dropped_store_freed_at_once import no_cyclic_gc  # noqa: F401  (the fixture, used by name)

from conftest import random_gaussians
from kl_retrievers.store import MilvusKLStore

pytestmark = pytest.mark.usefixtures("no_cyclic_gc")


def _closed(store: MilvusKLStore) -> weakref.ref[MilvusKLStore]:
    store.close()
    return weakref.ref(store)


def test_a_store_that_created_its_collection_is_freed(tmp_path: Path) -> None:
    ref = _closed(MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", dim=4))
    assert ref() is None, "the store is kept alive by a reference cycle"


def test_a_store_created_by_its_first_add_and_used_is_freed(tmp_path: Path) -> None:
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="hnsw")
    store.add(
        gaussians=random_gaussians(20, 4), ids=[f"d{i}" for i in range(20)], metadatas=[{"y": i % 3} for i in range(20)]
    )
    assert len(store.search_batch(random_gaussians(2, 4, seed=1), k=3, filter={"y": 1})[0]) == 3
    store.delete(["d1"])
    ref = _closed(store)
    del store
    assert ref() is None, "the store is kept alive by a reference cycle"


def test_a_store_whose_collection_was_dropped_is_freed(tmp_path: Path) -> None:
    creator = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat")
    creator.add(gaussians=random_gaussians(5, 4), ids=[f"d{i}" for i in range(5)])
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"))  # attached (it created nothing)
    store.client.drop_collection(store.collection_name)
    assert store.search(random_gaussians(1, 4), k=2) == []  # noticed: describe_collection raised, and was caught
    ref = _closed(store)
    del store
    assert ref() is None, "the store is kept alive by a reference cycle"
    creator.close()
