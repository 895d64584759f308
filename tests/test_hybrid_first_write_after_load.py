"""A loaded hybrid store's first write counts the stored texts again without holding searches off.

A loaded store keeps no per-document term counts: its first add, upsert or delete counts every stored text
again. That count runs outside the store's write lock (texts read under the read lock, counts installed under
the write lock), so a search in another thread is answered while it runs; a delete of ids the store does not
hold counts nothing. The count is made observable (and held) by a patched ``_BM25Half.count``, so no timing
is asserted: a thread that does not finish within a generous bound is waiting for the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import random_gaussians
from kl_retrievers import hybrid as hybrid_module
from kl_retrievers.hybrid import KLHybridStore

pytest.importorskip("bm25s")

K = 3
MARKER = "slow marker kiwi"  # the stored text whose count the patched counter holds
TEXTS = ["apple pear", MARKER, "fig plum apple", "kiwi fig"]
IDS = ["a", "m", "f", "k"]
BOUND = 30.0  # seconds: a deadlock guard, far above a search of four documents


def _loaded(tmp_path: Path) -> KLHybridStore:
    store = KLHybridStore(fusion="rrf")
    store.add(TEXTS, gaussians=random_gaussians(len(TEXTS), K), ids=IDS, metadatas=[{"n": i} for i in range(4)])
    loaded = KLHybridStore.load(store.save(tmp_path / "h"))
    assert loaded._bm25.counts is None  # counted again at the first change
    return loaded


def _search(store: KLHybridStore) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in store.search("kiwi apple", k=4, query_gaussians=random_gaussians(1, K, seed=9))]


def _fresh(texts: list[str], ids: list[str], gaussians_of: dict[str, int]) -> KLHybridStore:
    store = KLHybridStore(fusion="rrf")
    for text, doc_id in zip(texts, ids, strict=True):
        store.add(
            [text],
            gaussians=random_gaussians(len(TEXTS), K)[gaussians_of[doc_id] : gaussians_of[doc_id] + 1],
            ids=[doc_id],
        )
    return store


def _hold_the_recount(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Patch the counter: counting MARKER signals ``started`` and waits for ``release``."""
    started, release = threading.Event(), threading.Event()
    count = hybrid_module._BM25Half.count

    def held(self: hybrid_module._BM25Half, text: str) -> Counter[str]:
        if text == MARKER:
            started.set()
            release.wait(4 * BOUND)
        return count(self, text)

    monkeypatch.setattr(hybrid_module._BM25Half, "count", held)
    return started, release


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.delete(["a"]), id="delete"),
        pytest.param(lambda s: s.add(["grape kiwi"], gaussians=random_gaussians(1, K, seed=3), ids=["g"]), id="add"),
        pytest.param(
            lambda s: s.upsert(["kiwi kiwi"], gaussians=random_gaussians(1, K, seed=4), ids=["f"]), id="upsert"
        ),
        pytest.param(lambda s: s.delete(filter={"n": 0}), id="delete-filter"),
    ],
)
def test_a_search_is_answered_while_the_first_write_after_load_counts_the_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[[KLHybridStore], object]
) -> None:
    """The recount of a loaded store's texts does not hold the write lock: a concurrent search completes meanwhile."""
    store = _loaded(tmp_path)
    before = _search(store)
    started, release = _hold_the_recount(monkeypatch)
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    writer = threading.Thread(target=run, args=(lambda: write(store),), daemon=True)
    answered: list[list[tuple[str, float]]] = []
    reader = threading.Thread(target=run, args=(lambda: answered.append(_search(store)),), daemon=True)
    writer.start()
    try:
        assert started.wait(BOUND), "the write never counted the stored texts"
        reader.start()
        reader.join(BOUND)
        searched_during_count = not reader.is_alive()
        counting = not release.is_set() and writer.is_alive()
    finally:
        release.set()
        writer.join(BOUND)
        reader.join(BOUND)
    assert not errors, errors
    assert counting
    assert searched_during_count, "the search waited for the recount of the stored texts (write lock held)"
    assert answered == [before]  # the store as it was before the write
    assert not writer.is_alive()
    assert store._bm25.counts is not None


def test_the_first_write_after_load_gives_the_store_a_fresh_build_gives(tmp_path: Path) -> None:
    """Counted outside the lock, installed under it: the same BM25 and fused results as a store built afresh."""
    store = _loaded(tmp_path)
    store.upsert(["kiwi kiwi"], gaussians=random_gaussians(len(TEXTS), K)[2:3], ids=["f"])
    store.delete(["a"])
    fresh = _fresh(["slow marker kiwi", "kiwi fig", "kiwi kiwi"], ["m", "k", "f"], {"m": 1, "k": 3, "f": 2})
    assert store.ids == fresh.ids
    assert _search(store) == _search(fresh)


def test_concurrent_first_writes_count_once_and_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers after a load: one counts the stored texts, the other waits for its counts; both writes land."""
    store = _loaded(tmp_path)
    counted: list[str] = []
    count = hybrid_module._BM25Half.count

    def counting(self: hybrid_module._BM25Half, text: str) -> Counter[str]:
        counted.append(text)
        return count(self, text)

    monkeypatch.setattr(hybrid_module._BM25Half, "count", counting)
    barrier = threading.Barrier(2)

    def add(doc_id: str, seed: int) -> None:
        barrier.wait(BOUND)
        store.add([f"{doc_id} grape"], gaussians=random_gaussians(1, K, seed=seed), ids=[doc_id])

    threads = [threading.Thread(target=add, args=(d, s)) for d, s in (("x", 5), ("y", 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert sorted(store.ids) == sorted([*IDS, "x", "y"])
    assert counted.count(MARKER) == 1  # the stored texts were counted once
    store.check_sync()
    assert {h.id for h in store.search("grape", k=2, query_gaussians=random_gaussians(1, K, seed=9))} == {"x", "y"}


def test_deleting_only_absent_ids_counts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete of ids the store does not hold changes nothing, so a loaded store does not count its texts for it."""
    store = _loaded(tmp_path)
    counted: list[str] = []
    count = hybrid_module._BM25Half.count

    def counting(self: hybrid_module._BM25Half, text: str) -> Counter[str]:
        counted.append(text)
        return count(self, text)

    monkeypatch.setattr(hybrid_module._BM25Half, "count", counting)
    before = _search(store)
    report = store.delete(["nope", "gone"])
    assert report.deleted == [] and sorted(report.missing) == ["gone", "nope"]
    assert counted == [] and store._bm25.counts is None
    assert _search(store) == before
    store.delete(("a", "nope"))  # one present id: counted now, and deleted from both halves
    assert MARKER in counted and store._bm25.counts is not None
    assert "a" not in store.ids and "a" not in store._bm25.metas
    store.check_sync()
