"""A KLStore caches the rows a repeated dict filter allows: no predicate call per document the second time.

The cache is keyed by the table's version (bumped by every change of the rows) and the filter's canonical
key; callables and filters holding dates (no key) are compiled and called every time, and stay right.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import count_compiled_filter_calls
from kl_retrievers import Gaussians, KLStore
from kl_retrievers.filters import _filter_key, compile_filter
from kl_retrievers.store._table import MASK_CACHE_SIZE, DocumentTable, KeyedFilter

DIM = 4
N = 60


def _gaussians(n: int, seed: int) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(n, DIM)) * 0.3, rng.uniform(0.5, 1.5, size=(n, DIM)))


def _meta(i: int) -> dict[str, Any]:
    return {"tenant": f"t{i % 3}", "year": 2000 + i % 7, "tags": ["a"] if i % 2 else ["b"]}


def _store(n: int = N, **kwargs: Any) -> KLStore:
    store = KLStore(**kwargs)
    store.add(gaussians=_gaussians(n, 0), ids=[f"d{i}" for i in range(n)], metadatas=[_meta(i) for i in range(n)])
    return store


QUERY = _gaussians(2, 99)
FILTERS: list[dict[str, Any]] = [
    {"tenant": "t1"},
    {"year": {"$gte": 2003, "$lt": 2006}},
    {"$or": [{"tenant": "t0"}, {"tags": ["a"]}]},
    {"tenant": {"$in": ["t0", "t2"]}, "year": {"$ne": 2001}},
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of every predicate KLStore compiles (``calls[0]``)."""
    return count_compiled_filter_calls(monkeypatch)


def _ranked(store: KLStore, flt: Any) -> list[list[tuple[str, float]]]:
    """Every allowed document per query (k = all), as (id, score)."""
    k = max(1, len(store))
    return [[(r.id, r.score) for r in hits] for hits in store.search_batch(QUERY, k=k, filter=flt)]


def _uncached(spec: dict[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """The same filter as a callable (never cached)."""
    predicate = compile_filter(spec)
    assert predicate is not None
    return lambda m: bool(predicate(dict(m)))


def _expected_ids(store: KLStore, spec: dict[str, Any]) -> set[str]:
    predicate = compile_filter(spec)
    assert predicate is not None
    return {d.id for d in store.get_by_ids(store.ids) if predicate(d.metadata)}


# ----------------------------------------------------------------------------- no call the second time
def test_repeated_dict_filter_calls_no_predicate_the_second_time(calls: list[int]) -> None:
    store = _store()
    first = store.search(QUERY[0], k=5, filter={"tenant": "t1", "year": {"$gte": 2002}})
    assert calls[0] == N  # once per live document
    calls[0] = 0
    again = store.search(QUERY[0], k=5, filter={"year": {"$gte": 2002}, "tenant": "t1"})  # keys in another order
    assert calls[0] == 0
    assert [(r.id, r.score) for r in again] == [(r.id, r.score) for r in first]
    store.search_batch(QUERY, k=3, filter={"tenant": "t1", "year": {"$gte": 2002}})
    assert calls[0] == 0


def test_the_hybrid_store_reuses_the_cached_rows(calls: list[int]) -> None:
    """KLHybridStore filters through its KL half's table, so a repeated dict filter is not called again."""
    from conftest import make_tiny_encoder
    from kl_retrievers.hybrid import KLHybridStore

    words = ["sun", "moon", "star", "sea", "tree", "rock"]
    store = KLHybridStore(make_tiny_encoder())
    texts = [f"{words[i % 6]} {words[(i * 5) % 6]} {i}" for i in range(N)]
    store.add(texts, ids=[f"d{i}" for i in range(N)], metadatas=[_meta(i) for i in range(N)])
    first = store.search("sun moon", k=5, filter={"tenant": "t1"})
    assert calls[0] == N  # once per live document, shared by both halves
    calls[0] = 0
    again = store.search("sun moon", k=5, filter={"tenant": "t1"})
    assert calls[0] == 0
    assert [(r.id, r.score) for r in again] == [(r.id, r.score) for r in first]
    assert {r.metadata["tenant"] for r in again} == {"t1"}
    store.add(["sun sun"], ids=["new"], metadatas=[{"tenant": "t1", "year": 2001, "tags": []}])
    calls[0] = 0
    assert "new" in {r.id for r in store.search("sun", k=N + 1, filter={"tenant": "t1"})}
    assert calls[0] == N + 1  # the change bumped the table's version: judged afresh


def test_a_delete_by_filter_judges_afresh(calls: list[int]) -> None:
    store = _store()
    store.search(QUERY[0], k=5, filter={"tenant": "t1"})
    calls[0] = 0
    report = store.delete(["d0", "d1", "d4", "missing"], filter={"tenant": "t1"})
    assert calls[0] == 3  # the live ids given, not the mask the search cached
    assert report.deleted == ["d1", "d4"] and report.missing == ["missing"]
    calls[0] = 0
    assert len(store.delete(filter={"tenant": "t1"}).deleted) == len(range(1, N, 3)) - 2
    assert calls[0] == N - 2


def test_the_cache_keeps_the_most_recent_filters(calls: list[int]) -> None:
    store = _store()
    specs = [{"year": 2000 + i} for i in range(MASK_CACHE_SIZE + 1)]
    for spec in specs:
        store.search(QUERY[0], k=1, filter=spec)
    calls[0] = 0
    store.search(QUERY[0], k=1, filter=specs[-1])
    assert calls[0] == 0
    store.search(QUERY[0], k=1, filter=specs[0])  # the least recently used one was dropped
    assert calls[0] == N


def test_cached_masks_are_read_only() -> None:
    store = _store()
    store.search(QUERY[0], k=1, filter={"tenant": "t0"})
    mask, count = store._table.allowed(store._prepare_filter({"tenant": "t0"}))
    assert mask is not None and not mask.flags.writeable
    assert count == len(_expected_ids(store, {"tenant": "t0"}))


# ----------------------------------------------------------------------------- right after every change
def _add(store: KLStore) -> None:
    store.add(gaussians=_gaussians(5, 1), ids=[f"new{i}" for i in range(5)], metadatas=[_meta(i) for i in range(5)])


def _upsert(store: KLStore) -> None:  # the same ids with other metadata (how a metadata update is made)
    ids = [f"d{i}" for i in range(0, N, 4)]
    store.add(gaussians=store.get_gaussians(ids), ids=ids, metadatas=[_meta(i + 1) for i in range(len(ids))])


def _delete(store: KLStore) -> None:
    store.delete([f"d{i}" for i in range(1, N, 5)])


def _delete_by_filter(store: KLStore) -> None:
    store.delete(filter={"year": 2003})


def _compact(store: KLStore) -> None:
    store.delete(["d2", "d3"])
    store.compact()
    assert store.compaction_count


MUTATIONS = [_add, _upsert, _delete, _delete_by_filter, _compact]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("compact_threshold", [0.0, 0.9])
def test_a_cached_filter_is_right_after_every_change(
    mutate: Callable[[KLStore], None], compact_threshold: float
) -> None:
    store = _store(compact_threshold=compact_threshold)
    for spec in FILTERS:
        assert _ranked(store, spec) == _ranked(store, _uncached(spec))
    mutate(store)
    for spec in FILTERS:
        got = _ranked(store, spec)
        assert got == _ranked(store, _uncached(spec))
        assert {doc_id for doc_id, _ in got[0]} == _expected_ids(store, spec)


def test_a_cached_filter_is_right_after_save_and_load(tmp_path: Path) -> None:
    store = _store(compact_threshold=0.9)
    store.delete(["d5", "d6"])  # saved as tombstones
    for spec in FILTERS:
        _ranked(store, spec)
    store.save(tmp_path / "s")
    loaded = KLStore.load(tmp_path / "s")
    for spec in FILTERS:
        assert _ranked(loaded, spec) == _ranked(store, spec) == _ranked(loaded, _uncached(spec))
    _upsert(loaded)
    for spec in FILTERS:
        assert _ranked(loaded, spec) == _ranked(loaded, _uncached(spec))


def _table(n: int = 4) -> DocumentTable:
    t = DocumentTable(2)
    t.append(
        np.zeros((n, 2), np.float32),
        np.ones((n, 2), np.float32),
        [f"r{i}" for i in range(n)],
        [None] * n,
        [{"n": i} for i in range(n)],
    )
    return t


TABLE_CHANGES: dict[str, Callable[[DocumentTable], Any]] = {
    "append": lambda t: t.append(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32), ["r9"], [None], [{"n": 0}]),
    "upsert": lambda t: t.append(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32), ["r1"], [None], [{"n": 0}]),
    "undo_append": lambda t: t.undo_append(3, {}),
    "tombstone": lambda t: t.tombstone(["r0"]),
    "compact": lambda t: (t.tombstone(["r0"]), t.compact()),
    "set_rows": lambda t: t.set_rows(
        (np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), np.zeros(2)),
        ["x", "y"],
        [None, None],
        [{"n": 0}, {"n": 0}],
    ),
    "reset": lambda t: t.reset(2),
}


@pytest.mark.parametrize("change", TABLE_CHANGES, ids=str)
def test_every_change_of_the_rows_drops_the_cached_masks(change: str) -> None:
    t = _table()
    keyed = KeyedFilter(compile_filter({"n": 0}), _filter_key({"n": 0}) or "")  # type: ignore[arg-type]
    before = t.version
    mask, _ = t.allowed(keyed)
    assert mask is not None and mask.tolist() == [True, False, False, False]
    assert t._masks
    TABLE_CHANGES[change](t)
    assert t.version > before and not t._masks
    mask, count = t.allowed(keyed)
    expected = [bool(alive) and meta.get("n") == 0 for meta, alive in zip(t.metas, t.alive, strict=True)]
    assert (mask.tolist() if mask is not None else []) == expected and count == sum(expected)


# ----------------------------------------------------------------------------- what is not cached
def test_callable_filters_are_not_cached_and_stay_right() -> None:
    store = _store()
    seen = [0]

    def tenant_t1(m: Mapping[str, Any]) -> bool:
        seen[0] += 1
        return m["tenant"] == "t1"

    assert not isinstance(store._prepare_filter(tenant_t1), KeyedFilter)
    store.search(QUERY[0], k=3, filter=tenant_t1)
    store.search(QUERY[0], k=3, filter=tenant_t1)
    assert seen[0] == 2 * N
    assert not store._table._masks
    _upsert(store)
    assert {d for d, _ in _ranked(store, tenant_t1)[0]} == _expected_ids(store, {"tenant": "t1"})


def test_date_filters_are_not_cached_and_stay_right() -> None:
    store = KLStore()
    days = [datetime.date(2024, 1, 1) + datetime.timedelta(days=i) for i in range(10)]
    store.add(gaussians=_gaussians(10, 3), ids=[f"d{i}" for i in range(10)], metadatas=[{"t": d} for d in days])
    spec = {"t": {"$gte": datetime.date(2024, 1, 6)}}
    assert not isinstance(store._prepare_filter(spec), KeyedFilter)
    assert {r.id for r in store.search(QUERY[0], k=10, filter=spec)} == {f"d{i}" for i in range(5, 10)}
    store.add(gaussians=_gaussians(1, 4), ids=["d0"], metadatas=[{"t": datetime.date(2024, 2, 1)}])
    assert {r.id for r in store.search(QUERY[0], k=10, filter=spec)} == {"d0", *(f"d{i}" for i in range(5, 10))}
    assert not store._table._masks


@pytest.mark.parametrize(
    "spec",
    [
        {"t": datetime.date(2024, 1, 1)},
        {"pos": (1, 2)},
        {"n": {"$in": {1, 2}}},
        {"n": np.int64(1)},
        {"n": {"$in": np.array([1, 2])}},
        {"n": {"$in": [1, datetime.datetime(2024, 1, 1)]}},
        {"s": type("Text", (str,), {})("x")},
    ],
    ids=["date", "tuple", "set", "numpy-scalar", "numpy-array", "nested-datetime", "str-subclass"],
)
def test_filters_beyond_plain_json_have_no_key(spec: dict[str, Any]) -> None:
    assert _filter_key(spec) is None
    assert _filter_key(lambda m: True) is None


def test_filter_keys_tell_apart_what_matches_apart() -> None:
    keys = [_filter_key({"n": v}) for v in (1, 1.0, True, "1", None, [1], {"$eq": 1})]
    assert None not in keys and len(set(keys)) == len(keys)
    assert _filter_key({"a": 1, "b": {"$lt": 3, "$gt": 1}}) == _filter_key({"b": {"$gt": 1, "$lt": 3}, "a": 1})
    assert _filter_key({"$or": [{"a": 1}, {"b": 2}]}) != _filter_key({"$or": [{"b": 2}, {"a": 1}]})


# ----------------------------------------------------------------------------- threads
def test_concurrent_filtered_searches_match_serial_ones() -> None:
    store = _store(n=300)
    specs: list[dict[str, Any]] = [*FILTERS, *({"year": 2000 + i} for i in range(7)), {"tags": ["b"]}]
    assert len(specs) > MASK_CACHE_SIZE  # evictions happen while threads search
    serial = [_ranked(store, spec) for spec in specs]
    store._table._changed()  # nothing cached: the threads fill the cache themselves

    def run(i: int) -> tuple[int, list[list[tuple[str, float]]]]:
        return i % len(specs), _ranked(store, specs[i % len(specs)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(12 * len(specs))))
    for j, got in results:
        assert got == serial[j]


def test_searches_with_a_repeated_filter_stay_right_while_a_writer_upserts_and_compacts() -> None:
    n, rounds = 200, 150
    store = KLStore()
    store.add(gaussians=_gaussians(n, 0), ids=[f"d{i}" for i in range(n)], metadatas=[{"g": i % 2} for i in range(n)])
    wrong: list[tuple[str, Any]] = []
    searches = [0]
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for hits in store.search_batch(QUERY, k=n, filter={"g": 1}):
                wrong.extend((h.id, h.metadata) for h in hits if h.metadata.get("g") != 1)
            searches[0] += 1

    def writer() -> None:
        rng = np.random.default_rng(1)
        try:
            for it in range(rounds):
                i = int(rng.integers(n))  # an upsert: the same id, new Gaussian, perhaps another group
                store.add(gaussians=_gaussians(1, 1000 + it), ids=[f"d{i}"], metadatas=[{"g": int(rng.integers(2))}])
                if it % 25 == 0:
                    store.compact()
        finally:
            done.set()

    threads = [threading.Thread(target=reader) for _ in range(2)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert searches[0] > 0 and not wrong, wrong[:3]
    # at the end: the cached filter agrees with a serial brute force over the final documents
    chosen = [doc.id for doc in store.get_by_ids(store.ids) if doc.metadata["g"] == 1]
    brute = KLStore(index_type="flat")
    brute.add(gaussians=store.get_gaussians(chosen), ids=chosen)
    expected = _ranked(brute, None)
    for _ in range(2):  # the first search fills the cache, the second reads it
        got = _ranked(store, {"g": 1})
        assert [[i for i, _ in hits] for hits in got] == [[i for i, _ in hits] for hits in expected]
        assert np.allclose([[s for _, s in hits] for hits in got], [[s for _, s in hits] for hits in expected])
