"""A write inside ``KLHybridStore.consistent()`` is refused with a message naming ``consistent()``.

The write is refused (it would wait for the thread's own read lock), but the message said "this thread is
reading the store (e.g. inside a callable filter during a search)", which sends the reader to look for a filter
that is not there. A callable filter that writes during a search keeps the filter's wording, inside
``consistent()`` too (the filter is the nearer cause).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from conftest import random_gaussians
from kl_retrievers.hybrid import KLHybridStore


def _store() -> KLHybridStore:
    store = KLHybridStore(stemmer=None)
    store.add(["a b", "c d", "a c"], gaussians=random_gaussians(3, 4), ids=["x", "y", "z"])
    return store


@pytest.mark.parametrize("write", ["add", "upsert", "delete"])
def test_a_write_inside_consistent_names_consistent(write: str) -> None:
    store = _store()
    calls: dict[str, Any] = {
        "add": lambda: store.add(["e"], gaussians=random_gaussians(1, 4, seed=1), ids=["w"]),
        "upsert": lambda: store.upsert(["e"], gaussians=random_gaussians(1, 4, seed=1), ids=["x"]),
        "delete": lambda: store.delete(["x"]),
    }
    with store.consistent(), pytest.raises(RuntimeError) as info:
        calls[write]()
    message = str(info.value)
    assert "KLHybridStore.consistent()" in message and "after the with block" in message, message
    assert "callable filter" not in message, message
    assert len(store) == 3
    calls[write]()  # after the block, writes go through


def test_a_filter_that_writes_keeps_the_filter_wording_inside_consistent_too() -> None:
    store = _store()
    qg = random_gaussians(1, 4, seed=2)

    def writes(metadata: Mapping[str, Any]) -> bool:
        store.delete(["y"])
        return True

    for inside in (False, True):
        with pytest.raises(RuntimeError, match="inside a callable filter during a search"):
            if inside:
                with store.consistent():
                    store.candidates(["a"], query_gaussians=qg, filter=writes)
            else:
                store.search("a", k=2, query_gaussians=qg, filter=writes)
    assert len(store) == 3
