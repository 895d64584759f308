"""Two writers that both read their own publication of one ``M`` back, and searches that race a rewrite.

Milvus has no compare-and-set on collection properties, so a publication of a new ``M`` is write-then-verify: two
writers that store version ``v + 1`` one right after the other both read their own back and both rewrite the rows.
Before the fix, the loser's rewrite could end after the winner had marked its own done, leaving rows under the
loser's (larger) ``M`` with nothing pending and no mark, which a ``prove_flat`` search read too low and "proved"
a top ``k`` without them. Now the rewrite reads the stored publication again after its last page and, where it is not
the one it followed, rewrites every row again under it with its mark still held, and a search proves nothing while a
rewrite mark is there (or a rewrite started during it). Also: the re-search of a query whose winner changed between
the search and the fetch is made with query vectors built under the state read again, and the fallback's warning
names the right reason where the rows were not under the query's ``M``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import proving_milvus_store
from kl_retrievers.gaussian import Gaussians, kl_document_vectors, neg_kl
from kl_retrievers.milvus import MilvusKLStore
from kl_retrievers.store import milvus as milvus_mod

N, DIM, K = 400, 8, 5


def _data() -> tuple[Gaussians, list[str], Gaussians]:
    """Documents, their ids and one query; the query's true top ``K`` hold the ids that sort first (``a0``..)."""
    rng = np.random.default_rng(3)
    docs = Gaussians(rng.normal(size=(N, DIM)), np.exp(rng.normal(0, 0.3, size=(N, DIM))))
    q = Gaussians(np.asarray(docs.mean)[7:8] + 0.1, np.asarray(docs.var)[7:8])
    order = np.argsort(-np.asarray(neg_kl(q.astype(np.float64)[0], docs.astype(np.float64))))
    ids = [""] * N
    for rank, j in enumerate(order):
        ids[j] = f"a{rank}" if rank < K else f"d{rank:03d}"
    return docs, ids, q


def _top(store: MilvusKLStore, q: Gaussians) -> list[str]:
    return [r.id for r in store.search(q, k=K)]


def _row_norms(store: MilvusKLStore) -> dict[str, float]:
    """Each stored row's vector norm: ``M`` of the publication it was reduced under."""
    return {
        str(r["id"]): float(np.linalg.norm(np.asarray(r["vector"], dtype=np.float64)))
        for page in store._iter_all(["vector"])
        for r in page
    }


def test_the_loser_of_one_version_rewrites_every_row_under_the_winners_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs, ids, q = _data()
    reader = proving_milvus_store(tmp_path)
    reader.add(gaussians=docs, ids=ids)
    truth = _top(reader, q)
    assert truth == [f"a{i}" for i in range(K)]
    loser = MilvusKLStore(client=reader.client, collection_name="c")
    winner = MilvusKLStore(client=reader.client, collection_name="c")
    m0 = loser._read_state().norm_bound
    assert m0 is not None and winner._read_state().version == loser._state.version
    # both publish version 2 and both read their own back: the winner's (smaller) M is stored last
    assert loser._publish(10 * m0, loser._state.offset, rewrite=True)
    assert winner._publish(2 * m0, winner._state.offset, rewrite=True)
    assert winner._read_state().writer == winner._state.writer
    # the winner rewrites in pages of 50; after its first page (the query's top k), the loser's whole rewrite runs,
    # then the winner's other pages, then its mark "done": on HEAD the first page stayed under the loser's 10 M0
    winner._iter_all = lambda output_fields, batch=1000, filter="": MilvusKLStore._iter_all(  # type: ignore[method-assign]
        winner, output_fields, 50, filter
    )
    real_alter = winner._alter_properties
    raced: list[int] = []

    def alter(properties: dict[str, str]) -> None:
        if properties == {winner._mark: "50"} and not raced:
            raced.append(1)
            loser._rewrite_rows(m0)
        real_alter(properties)

    winner._alter_properties = alter  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
        winner._rewrite_rows(m0)
    assert raced
    state = reader._read_state()
    assert (state.norm_bound, state.pending, state.rewriting) == (2 * m0, False, ())
    norms = _row_norms(reader)
    assert len(norms) == N
    # HEAD: the rows a0..a4 (and the rest of the first page) had norm 10 M0 under a stored M of 2 M0
    np.testing.assert_allclose(list(norms.values()), 2 * m0, rtol=1e-5)
    assert "replaced the one this rewrite followed" in caplog.text
    assert loser._state.writer == winner._state.writer  # the loser adopted the stored publication
    # each rewrite logs the rows of its last pass and its passes (HEAD: the loser logged "rewrote 800 rows")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rewrote ")]
    assert len(lines) == 2 and all(line.startswith(f"rewrote {N} rows ") for line in lines), lines
    assert sorted("2 pass(es) over every row" in line for line in lines) == [False, True], lines
    assert _top(reader, q) == truth
    reader.close()


def test_a_search_proves_nothing_while_another_writers_rewrite_is_marked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loser's rewrite still running (its mark stored, the query's top k under its larger M) after the winner
    marked its own done: nothing is pending, the publication does not change during the search."""
    docs, ids, q = _data()
    reader = proving_milvus_store(tmp_path)
    reader.add(gaussians=docs, ids=ids)
    truth = _top(reader, q)
    loser = MilvusKLStore(client=reader.client, collection_name="c")
    winner = MilvusKLStore(client=reader.client, collection_name="c")
    m0 = loser._read_state().norm_bound
    assert m0 is not None
    winner._read_state()
    assert loser._publish(10 * m0, loser._state.offset, rewrite=True)
    assert winner._publish(2 * m0, winner._state.offset, rewrite=True)
    winner._rewrite_rows(m0)
    reader.client.alter_collection_properties("c", properties={loser._mark: "5"})  # the loser's rewrite, running
    top = [ids.index(f"a{i}") for i in range(K)]
    raw = np.asarray(kl_document_vectors(Gaussians(np.asarray(docs.mean)[top], np.asarray(docs.var)[top])))
    loser._upsert(loser._rows(loser._centred(raw)), truth, [None] * K, [{}] * K)  # under the loser's 10 M0
    state = reader._read_state()
    assert not state.pending and state.rewriting
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
        got = _top(reader, q)
    # HEAD: proved a top k without the rows under 10 M0 (read ~50 M0 |q~| too low)
    assert got == truth
    assert "another writer was rewriting the rows when the search began" in caplog.text
    assert "; call repair() if no writer is running" in caplog.text  # the mark could be a killed writer's
    reader.close()


def test_a_stale_winner_is_searched_again_with_query_vectors_under_the_stored_bound(tmp_path: Path) -> None:
    docs, ids, q = _data()
    reader = MilvusKLStore(
        uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat", metric="L2", rescore_pool=20
    )
    reader.add(gaussians=docs, ids=ids)
    truth = _top(reader, q)
    writer = MilvusKLStore(client=reader.client, collection_name="c")
    m0 = writer._read_state().norm_bound
    assert m0 is not None
    real = reader.client.search
    sent: list[float] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        sent.append(float(np.linalg.norm(np.asarray(kwargs["data"][0], dtype=np.float64))))
        hits = real(*args, **kwargs)
        if len(sent) == 1:  # between the search and the fetch of its winners: M raised, every row rewritten
            assert writer._publish(10 * m0, writer._state.offset, rewrite=True)
            writer._rewrite_rows(m0)
        return hits

    reader.client.search = racing  # type: ignore[method-assign]
    try:
        got = _top(reader, q)
    finally:
        del reader.client.search
    assert got == truth
    assert len(sent) == 2  # the winners' vectors changed: searched again
    # a query vector is [q~ M / |q~|, 0]: its norm is the M it was made with. HEAD: the old M0
    np.testing.assert_allclose(sent, [m0, 10 * m0], rtol=1e-5)
    reader.close()


def test_the_fallback_warning_names_the_changed_bound_not_float32_rounding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs, ids, q = _data()
    # 400 rows match: the fallback re-scores the best, with a warning
    reader = proving_milvus_store(tmp_path, exact_threshold=10)
    reader.add(gaussians=docs, ids=ids)
    writer = MilvusKLStore(client=reader.client, collection_name="c")
    real = reader.client.search
    raced: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # between the reader's state read and its candidate search: another writer raises M
            raced.append(1)
            bound = writer._read_state().norm_bound
            assert bound is not None and writer._publish(10 * bound, writer._state.offset, rewrite=True)
        return real(*args, **kwargs)

    reader.client.search = racing  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
            reader.search(q, k=K)
    finally:
        del reader.client.search
    assert raced
    text = caplog.text
    assert "since the search read it" in text  # the reason, from _rows_follow
    assert "above exact_threshold=10" in text
    # HEAD: "float32 rounding is too coarse for their documents' scores", the wrong reason
    assert "float32 rounding is too coarse" not in text
    assert "may not all have been under the bound M of their query vectors" in text
    reader.close()


def test_a_collection_re_created_during_the_rewrite_raises_a_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publication read after the last page has no ``M`` (the collection was dropped and re-created meanwhile):
    a ``RuntimeError`` naming the collection, not a bare ``AssertionError`` (HEAD)."""
    docs, ids, _ = _data()
    store = proving_milvus_store(tmp_path)
    store.add(gaussians=docs, ids=ids)
    monkeypatch.setattr(store, "_read_state", lambda *a, **kw: milvus_mod._NO_REDUCTION)
    with pytest.raises(RuntimeError, match=r"collection 'c' was re-created during the rewrite"):
        store._rewrite_rows(None)
    monkeypatch.undo()
    assert not store._read_state().rewriting  # its mark was dropped all the same
    store.close()
