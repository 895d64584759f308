"""HNSW and many identical documents (kl_retrievers/store/_hnsw_copies.py ``HnswCopies``, used by ``ApproxEngine``).

Copies of one vector fill each other's HNSW link lists (2 x ``hnsw_m`` at the lowest level), and
FAISS prunes the links from them to other documents, which the graph search then never reaches:
with 100 copies and one distinct document, the distinct document's own Gaussian got a copy as its
top-1. Now an HNSW index with more than ``2 x hnsw_m`` identical documents logs one warning, and the
rows its graph cannot reach are added to every query's candidates (kept up to date through adds,
deletes, compaction, save and load); a graph search that returns fewer candidates than asked for
falls back to the exact search. Results are compared with exact brute-force -KL (``neg_kl_matrix``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store._engines as engines
import kl_retrievers.store._hnsw_copies as hnsw_copies
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.store import KLStore
from kl_retrievers.store._engines import ApproxEngine
from kl_retrievers.store._hnsw_copies import HnswCopies, hnsw_reached, hnsw_reached_new, hnsw_unreached

LOGGER = "kl_retrievers.store._engines"
K = 4
QUERY = Gaussians(np.full((1, K), 0.5), np.ones((1, K)))


def gaussians(means: np.ndarray) -> Gaussians:
    return Gaussians(np.asarray(means, dtype=np.float64), np.ones(np.shape(means)))


def corpus(copies: int) -> tuple[Gaussians, list[str]]:
    """``copies`` identical documents (mean 0) and one distinct document (mean 0.5), all variance 1."""
    mean = np.concatenate([np.zeros((copies, K)), np.full((1, K), 0.5)])
    return gaussians(mean), [f"dup{i}" for i in range(copies)] + ["distinct"]


def check_exact(
    store: KLStore, queries: Gaussians, k: int, allowed: Callable[[Mapping[str, Any]], bool] | None = None
) -> list[str]:
    """``store.search_batch`` scores equal brute-force -KL over the store's (allowed) live documents; top-1 ids."""
    ids = list(dict.fromkeys(i for i in store._engine.table.ids if i is not None and i in store))  # live, once each
    if allowed is not None:
        ids = [i for i in ids if allowed(store.get_by_ids([i])[0].metadata)]
    docs = store.get_gaussians(ids)
    want = np.sort(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)), axis=1)[:, ::-1][:, :k]
    got = store.search_batch(queries, k=k, filter=allowed)
    for hits, best in zip(got, want, strict=True):
        np.testing.assert_allclose([h.score for h in hits], best, rtol=0, atol=1e-9)
    return [hits[0].id for hits in got]


def approx(store: KLStore) -> ApproxEngine:
    engine = store._engine
    assert isinstance(engine, ApproxEngine)
    return engine


def built(copies: int, **settings: Any) -> KLStore:
    docs, ids = corpus(copies)
    store = KLStore(index_type="hnsw", **settings)
    store.add(gaussians=docs, ids=ids, metadatas=[{"n": i} for i in range(copies + 1)])
    assert store._engine.index is not None  # the HNSW index answers, not the small-store exact path
    return store


@pytest.mark.parametrize("copies", [100, 200, 600])
@pytest.mark.parametrize("k", [1, 3])
def test_distinct_document_among_copies_is_found(copies: int, k: int) -> None:
    store = built(copies)
    hits = store.search(QUERY, k=k)
    assert hits[0].id == "distinct" and hits[0].score == pytest.approx(0.0, abs=1e-12)
    check_exact(store, QUERY, k)


def test_copies_added_first_then_distinct_document() -> None:
    """The probe's order: the copies in one add, the distinct document in a later one."""
    docs, ids = corpus(200)
    store = KLStore(index_type="hnsw")
    store.add(gaussians=docs[:200], ids=ids[:200])
    store.add(gaussians=docs[200:], ids=ids[200:])
    assert check_exact(store, QUERY, 2) == ["distinct"]


def test_copies_added_to_a_built_store(tmp_path: Path) -> None:
    """300 distinct documents, then 200 copies and one more document: the graph is searched, and so is what it
    cannot reach; also after a save and a load (in memory and memory-mapped)."""
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw")
    others = gaussians(rng.normal(size=(300, K)) * 0.3 + 2.0)
    store.add(gaussians=others, ids=[f"o{i}" for i in range(300)])
    docs, ids = corpus(200)
    store.add(gaussians=docs, ids=ids)
    queries = Gaussians(np.concatenate([np.full((1, K), 0.5), np.asarray(others.mean)[:20] + 0.01]), np.ones((21, K)))
    expected = ["distinct"] + [f"o{i}" for i in range(20)]
    assert check_exact(store, queries, 5) == expected
    for mmap in (False, True):
        loaded = KLStore.load(store.save(tmp_path / f"s{mmap}", overwrite=True), mmap=mmap)
        assert loaded._engine.index is not None
        assert check_exact(loaded, queries, 5) == expected


def test_an_add_after_the_build_keeps_the_rows_current() -> None:
    """Rows added without a rebuild are tracked: a distinct row the graph cannot reach is scored, and found.

    The copies and the distinct row come in one add to a built store (their norms fit under M):
    the graph's entry point moves among the copies, and neither the distinct row nor the earlier
    rows are reachable from it; only the add's tracking knows.
    """
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw")
    store.add(gaussians=gaussians(rng.normal(size=(300, K)) * 2), ids=[f"o{i}" for i in range(300)])
    engine = approx(store)
    assert engine._copies.hashes is None and engine._copies.rescue.size == 0  # nothing to track yet
    store.add(gaussians=corpus(600)[0], ids=corpus(600)[1])
    assert store.rebuild_count == 0 and engine.index is not None and engine.index.ntotal == 901
    assert engine._copies.hashes is not None and engine._copies.hashes.size == 901
    unreached = hnsw_unreached(engine.index)
    assert unreached is not None and 900 in unreached  # the distinct row: no path of the graph leads to it
    assert 900 in engine._copies.rescue
    assert check_exact(store, QUERY, 3) == ["distinct"]
    near = Gaussians(np.full((1, K), 0.25), np.ones((1, K)))
    store.add(gaussians=gaussians(np.full((1, K), 0.25)), ids=["near"])
    assert store.rebuild_count == 0 and engine._copies.hashes.size == 902
    assert check_exact(store, near, 3) == ["near"]


def test_filters_deletes_upserts_and_compaction() -> None:
    store = built(200, exact_threshold=0, compact_threshold=0.9)
    assert check_exact(store, QUERY, 2, allowed=lambda m: m["n"] % 10 != 3) == ["distinct"]
    assert check_exact(store, QUERY, 2, allowed=lambda m: m["n"] < 150) != ["distinct"]  # filtered out
    store.delete([f"dup{i}" for i in range(50)])
    assert store._engine.table.dead() == 50  # tombstones, still in the graph
    assert check_exact(store, QUERY, 3) == ["distinct"]
    store.add(gaussians=gaussians(np.full((1, K), 0.4)), ids=["distinct"])  # upsert: a new row, the old one dead
    assert check_exact(store, QUERY, 3) == ["distinct"]
    store.delete(["distinct"])
    assert check_exact(store, QUERY, 3)[0].startswith("dup")
    store.add(gaussians=gaussians(np.full((1, K), 0.5)), ids=["back"])
    store.compact()  # every live row re-added to the graph
    assert store._engine.table.dead() == 0
    assert check_exact(store, QUERY, 3) == ["back"]


def test_healthy_index_is_unchanged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Distinct documents: no warning, nothing added to the pools, no query searched exactly."""
    rng = np.random.default_rng(0)
    n = 2000
    docs = Gaussians(rng.normal(size=(n, 8)), np.exp(rng.normal(0, 0.5, (n, 8))))
    store = KLStore(index_type="hnsw")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=docs, ids=[str(i) for i in range(n)])
    assert not caplog.records
    engine = approx(store)
    assert engine._copies.hashes is None and engine._copies.rescue.size == 0
    calls: list[int] = []
    original = engine._exact_top_k

    def spy(qg: Gaussians, kk: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(qg))
        return original(qg, kk, mask)

    monkeypatch.setattr(engine, "_exact_top_k", spy)
    queries = Gaussians(np.asarray(docs.mean)[:20] + 0.05, np.asarray(docs.var)[:20])
    assert check_exact(store, queries, 5) == [str(i) for i in range(20)]
    assert not calls


def test_warning_names_the_copies_and_the_remedy(caplog: pytest.LogCaptureFixture) -> None:
    docs, ids = corpus(100)
    store = KLStore(index_type="hnsw")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=docs, ids=ids)
    warned = [r.getMessage() for r in caplog.records if "copies of one vector" in r.getMessage()]
    assert len(warned) == 1
    message = warned[0]
    assert message.startswith("100 documents") and "'dup0'" in message and "2 x hnsw_m = 64" in message
    assert "deduplicate" in message and "index_type='flat'" in message and "'ivf'" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # once per store: not again at the next build
        store.rebuild()
    assert not [r for r in caplog.records if "copies of one vector" in r.getMessage()]
    assert store.search(QUERY, k=1)[0].id == "distinct"


@pytest.mark.parametrize(("index_type", "copies", "settings"), [("hnsw", 64, {}), ("ivf", 300, {"nlist": 4})])
def test_no_warning_below_the_limit_or_for_ivf(
    caplog: pytest.LogCaptureFixture, index_type: str, copies: int, settings: dict[str, int]
) -> None:
    """64 copies (= 2 x hnsw_m) are not counted; IVF scans whole lists and is not affected."""
    docs, ids = corpus(copies)
    store = KLStore(index_type=index_type, **settings)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=docs, ids=ids)
    assert store._engine.index is not None
    assert not [r for r in caplog.records if "copies of one vector" in r.getMessage()]
    assert check_exact(store, QUERY, 2) == ["distinct"]


@pytest.mark.parametrize("settings", [{"compression": "sq8"}, {"compression": "sq8", "refine": "fp16"}])
def test_compressed_and_refined_graphs(settings: dict[str, str]) -> None:
    """SQ8 codes (and a refine stage): the copies are counted, and results stay exact."""
    store = built(300, **settings)
    assert approx(store)._copies.hashes is not None
    assert check_exact(store, QUERY, 3) == ["distinct"]


def test_adds_walk_the_graph_only_as_the_store_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Single adds away from the copies of a store tracking them read the new rows' links, and walk the whole
    graph again only once the live rows grew by _REWALK_GROWTH (or an add brings more copies, or links to one)."""
    rng = np.random.default_rng(1)
    store = KLStore(index_type="hnsw")
    means = np.concatenate([np.zeros((100, K)), rng.normal(size=(900, K)) * 2])
    store.add(gaussians=gaussians(means), ids=[str(i) for i in range(1000)])
    engine = approx(store)
    assert engine._copies.hashes is not None and engine._copies.walked_live == 1000
    walks: list[int] = []
    original = hnsw_copies.hnsw_reached

    def spy(index: Any) -> np.ndarray | None:
        walks.append(int(index.ntotal))
        return original(index)

    monkeypatch.setattr(hnsw_copies, "hnsw_reached", spy)
    far = means[100:][np.linalg.norm(means[100:], axis=1) > 4.0]  # far from the copies (at 0)
    for i in range(120):  # next to a document far from the copies: no new row links to one
        store.add(gaussians=gaussians(far[i % len(far)][None] + rng.normal(size=(1, K)) * 0.05), ids=[f"new{i}"])
    assert store.rebuild_count == 0
    assert walks == [1100]  # one walk, at 10% growth, not one per add
    assert engine._copies.hashes.size == engine.index.ntotal == 1120
    store.add(gaussians=gaussians(np.zeros((1, K))), ids=["another copy"])
    assert walks == [1100, 1121]  # a copy of the tracked group: walked again
    store.add(gaussians=gaussians(np.full((1, K), 0.01)), ids=["next to the copies"])
    assert walks == [1100, 1121, 1122]  # it links to copies, whose lists FAISS prunes: walked again
    added = ["next to the copies", "new0", "new60", "new119"]
    assert check_exact(store, store.get_gaussians(added).astype(np.float64), 3) == added


def test_new_rows_reached_from_their_neighbourhoods() -> None:
    """hnsw_reached_new, from the old rows' flags and the new rows' links only, agrees with a whole walk
    on the new rows."""
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw")
    store.add(gaussians=gaussians(rng.normal(size=(300, K)) * 2), ids=[f"o{i}" for i in range(300)])
    index = approx(store).index
    before = hnsw_reached(index)
    assert before is not None and before.all()
    docs, ids = corpus(600)
    store.add(gaussians=docs, ids=ids)
    whole, local = hnsw_reached(index), hnsw_reached_new(index, before)
    assert whole is not None and local is not None and local.size == whole.size == 901
    assert not local[900] and not whole[900]  # the distinct row among the copies
    np.testing.assert_array_equal(local[300:], whole[300:])


def test_a_short_graph_pool_is_searched_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HNSW search returning fewer candidates than asked for (with enough rows allowed) is searched exactly."""
    rng = np.random.default_rng(0)
    n = 2000
    docs = Gaussians(rng.normal(size=(n, 8)), np.exp(rng.normal(0, 0.5, (n, 8))))
    store = KLStore(index_type="hnsw")
    store.add(gaussians=docs, ids=[str(i) for i in range(n)])
    engine = approx(store)
    calls: list[int] = []
    exact, candidates = engine._exact_top_k, engine._approx_candidates

    def spy(qg: Gaussians, kk: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(qg))
        return exact(qg, kk, mask)

    def short(
        qg: Gaussians, cand: int, mask: np.ndarray | None, n_allowed: int, keep: int | None = None
    ) -> tuple[np.ndarray, Any]:
        pool, _ = candidates(qg, cand, mask, n_allowed, keep=keep)
        pool = pool.copy()
        pool[1:, pool.shape[1] // 2 :] = -1  # every query but the first: half its pool missing
        return pool, None

    monkeypatch.setattr(engine, "_exact_top_k", spy)
    monkeypatch.setattr(engine, "_approx_candidates", short)
    queries = Gaussians(np.asarray(docs.mean)[:6] + 0.05, np.asarray(docs.var)[:6])
    assert check_exact(store, queries, 5) == [str(i) for i in range(6)]
    assert calls == [5]


def test_many_rescue_rows_search_exactly_and_warn_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows the graph cannot reach above the tracker's share of the allowed rows: exact search; the warning says
    so once per store, and the counts leave deleted rows out."""
    calls: list[int] = []
    exact = ApproxEngine._exact_top_k

    def spy(self: ApproxEngine, qg: Gaussians, kk: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(qg))
        return exact(self, qg, kk, mask)

    monkeypatch.setattr(ApproxEngine, "_exact_top_k", spy)
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw")
    approx(store)._copies.share = 0.0
    means = np.concatenate([np.zeros((5, K)), rng.normal(size=(295, K))])
    store.add(gaussians=gaussians(means), ids=[f"gone{i}" for i in range(5)] + [f"o{i}" for i in range(295)])
    store.delete([f"gone{i}" for i in range(5)])  # tombstones: copies of the group below, but not live
    assert approx(store).table.dead() == 5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=corpus(600)[0], ids=corpus(600)[1])
        for i in range(3):
            store.add(gaussians=gaussians(rng.normal(size=(1, K)) * 0.1), ids=[f"n{i}"])
        store.rebuild()
    messages = [r.getMessage() for r in caplog.records]
    main = [m for m in messages if "copies of one vector" in m]
    over = [m for m in messages if "queries are searched" in m and "copies of one vector" not in m]
    assert len(main) == 1 and len(over) == 1, messages
    assert main[0].startswith("600 documents") and "'dup0'" in main[0]  # live copies only
    assert "the 0 it cannot reach" not in main[0] and "searched exactly" in main[0]
    assert "0%" in over[0] and "live documents" in over[0]
    assert check_exact(store, QUERY, 3) == ["distinct"] and calls


def test_rescue_rows_are_scored_apart_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rescue rows are scored by the exact path in blocks of queries, merged with the pools: scores exact."""
    monkeypatch.setattr(engines, "_RESCUE_QUERY_BLOCK", 7)
    rng = np.random.default_rng(0)
    n = 2000
    docs = Gaussians(rng.normal(size=(n, 8)), np.exp(rng.normal(0, 0.5, (n, 8))))
    store = KLStore(index_type="hnsw")
    store.add(gaussians=docs, ids=[str(i) for i in range(n)])
    engine = approx(store)
    engine._copies.rescue = np.arange(0, n, 20, dtype=np.int64)  # 5%: under the tracker's share (10%)
    blocks: list[int] = []
    original = engines.exact_top_k

    def spy(queries: Gaussians, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        blocks.append(len(queries))
        return original(queries, *args, **kwargs)

    monkeypatch.setattr(engines, "exact_top_k", spy)
    queries = Gaussians(np.asarray(docs.mean)[:30] + 0.05, np.asarray(docs.var)[:30])
    assert check_exact(store, queries, 5) == [str(i) for i in range(30)]
    assert blocks == [7, 7, 7, 7, 2]


def test_single_adds_next_to_the_copies_keep_older_rows_findable(tmp_path: Path) -> None:
    """Distinct documents added one at a time next to a group of copies: FAISS prunes the copies' full link
    lists for each, which can drop the last link into an earlier one. Such an add walks the whole graph, so
    every one is found by its own Gaussian in memory, as brute force and a reloaded store find it."""
    rng = np.random.default_rng(2)
    store = KLStore(index_type="hnsw", hnsw_m=8)
    means = np.concatenate([rng.normal(size=(400, K)) * 2, np.zeros((200, K))])
    store.add(gaussians=gaussians(means), ids=[f"b{i}" for i in range(400)] + [f"c{i}" for i in range(200)])
    for i in range(8):
        store.add(gaussians=gaussians(rng.normal(size=(1, K)) * 0.3), ids=[f"n{i}"])
        if i == 1:
            store.add(gaussians=gaussians(np.zeros((2, K))), ids=["c200", "c201"])
    added = [f"n{i}" for i in range(8)]
    queries = store.get_gaussians(added).astype(np.float64)
    assert check_exact(store, queries, 3) == added
    loaded = KLStore.load(store.save(tmp_path / "store"))
    assert check_exact(loaded, queries, 3) == added


def test_a_failed_add_counts_the_live_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An add that fails after its rows reached the index re-adds every row (drop_entries_from); the tracking
    then counts the live rows, not the tombstones among them."""
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw", hnsw_m=8)
    means = np.concatenate([rng.normal(size=(300, K)) * 2, np.zeros((20, K))])
    store.add(gaussians=gaussians(means), ids=[f"b{i}" for i in range(300)] + [f"c{i}" for i in range(20)])
    store.delete([f"b{i}" for i in range(40)])
    store.add(gaussians=gaussians(np.zeros((10, K))), ids=[f"d{i}" for i in range(10)])  # 30 copies > 16
    engine = approx(store)
    assert engine._copies.walked_live == len(store) == 290 and engine.table.n_rows == 330

    def fail(self: HnswCopies, *args: Any) -> None:
        raise MemoryError("simulated")

    with monkeypatch.context() as patch:
        patch.setattr(HnswCopies, "track_added", fail)
        with pytest.raises(MemoryError):
            store.add(gaussians=gaussians(rng.normal(size=(1, K))), ids=["x"])
    assert "x" not in store and engine.index.ntotal == engine.table.n_rows == 330
    assert engine._copies.hashes is not None and engine._copies.walked_live == len(store) == 290
    assert check_exact(store, gaussians(np.zeros((1, K))), 3)[0].startswith(("c", "d"))


@pytest.mark.parametrize("how", ["delete", "filter"])
def test_copies_the_graph_cannot_reach_are_found_without_the_reached_ones(how: str) -> None:
    """Copies the graph cannot reach tie with those it reaches, and a query that allows a reached copy skips
    them; where the reached copies are deleted (no compaction) or filtered out, the others are still found."""
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw", hnsw_m=8, compact_threshold=0.9, exact_threshold=0)
    means = np.concatenate([rng.normal(size=(600, K)) * 2 + 3, np.zeros((200, K))])
    ids = [f"b{i}" for i in range(600)] + [f"c{i}" for i in range(200)]
    store.add(gaussians=gaussians(means), ids=ids, metadatas=[{"row": i} for i in range(800)])
    engine = approx(store)
    unreached = hnsw_unreached(engine.index)
    assert unreached is not None
    lost = set(unreached.tolist())
    reached_copies = [600 + i for i in range(200) if 600 + i not in lost]
    assert reached_copies and len(reached_copies) < 200  # some copies reached, some not
    query = gaussians(np.zeros((1, K)))
    assert check_exact(store, query, 3)[0].startswith("c")
    allowed = None
    if how == "delete":
        store.delete([ids[r] for r in reached_copies])
        assert engine.table.dead() == len(reached_copies) and engine.index is not None
    else:
        gone = set(reached_copies)

        def allowed(metadata: Mapping[str, Any]) -> bool:
            return metadata["row"] not in gone

    top = check_exact(store, query, 3, allowed)[0]
    assert top.startswith("c") and int(top[1:]) + 600 in lost
    assert engine._copies.rows(None, 1).size < engine._copies.rescue.size  # tied copies skipped where one is allowed


@pytest.mark.parametrize("how", ["filter", "delete"])
def test_fewer_allowed_reachable_copies_than_k_still_fill_the_top_k_with_copies(how: str) -> None:
    """With one reachable copy allowed and k = 5, the four other places are copies too (they all score 0)."""
    rng = np.random.default_rng(0)
    store = KLStore(index_type="hnsw", hnsw_m=8, compact_threshold=0.9, exact_threshold=0)
    means = np.concatenate([rng.normal(size=(600, K)) * 2 + 3, np.zeros((200, K))])
    ids = [f"b{i}" for i in range(600)] + [f"c{i}" for i in range(200)]
    store.add(gaussians=gaussians(means), ids=ids, metadatas=[{"row": i} for i in range(800)])
    engine = approx(store)
    unreachable = hnsw_unreached(engine.index)
    assert unreachable is not None  # the graph is exposed
    lost = set(unreachable.tolist())
    reached = [600 + i for i in range(200) if 600 + i not in lost]
    unreached = [600 + i for i in range(200) if 600 + i in lost]
    assert reached and len(unreached) >= 9
    query = gaussians(np.zeros((1, K)))
    allowed = None
    if how == "filter":
        keep = {reached[0], *unreached[:9], *range(600)}

        def allowed(metadata: Mapping[str, Any]) -> bool:
            return metadata["row"] in keep

    else:
        store.delete([ids[r] for r in reached[1:]])
    for k in (1, 5, 10):
        top = check_exact(store, query, k, allowed)
        assert all(i.startswith("c") for i in top[:k])
