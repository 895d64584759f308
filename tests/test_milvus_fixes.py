"""MilvusKLStore fixes (audit 2026-12-03): escaped ids, one snapshot per hit, the stored index adopted,
a re-created collection noticed, selective filters answered exactly, "no text" kept, the norm bound lowered."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import random_gaussians
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusKLStore

K = 8
LOGGER = "kl_retrievers.store.milvus"


def _store(tmp_path: Path, name: str = "kl.db", **kw: Any) -> MilvusKLStore:
    kw.setdefault("metric", "L2")  # these tests exercise the L2 reduction (flat collections default to IP)
    return MilvusKLStore(uri=str(tmp_path / name), **kw)


def _exact(queries: Gaussians, docs: Gaussians, ids: list[str], k: int) -> list[list[tuple[str, float]]]:
    scores = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))
    return [[(ids[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


# ------------------------------------------------------------------ 1. ids needing escapes
ODD_IDS = ["O'Brien", "c\\d", 'x\\"]', "new\nline", 'a"b', "", "tab\there", "ü'\\\\"]


def test_ids_with_quotes_backslashes_and_newlines_work_everywhere(tmp_path: Path) -> None:
    plain = [f"d{i}" for i in range(12)]
    ids = ODD_IDS + plain
    docs = random_gaussians(len(ids), K, seed=1)
    store = _store(tmp_path, index_type="flat")
    store.add(gaussians=docs, ids=ids, texts=[f"t{i}" for i in range(len(ids))])
    got = store.get_by_ids(ODD_IDS)
    assert [d.id for d in got] == ODD_IDS and [d.text for d in got] == [f"t{i}" for i in range(len(ODD_IDS))]
    assert all(i in store for i in ODD_IDS) and "O'Brien2" not in store
    assert len(store) == len(ids) and sorted(store.ids) == sorted(ids)  # paged by id: no endless loop
    np.testing.assert_allclose(store.get_gaussians(ODD_IDS).mean, docs.mean[: len(ODD_IDS)], rtol=1e-5, atol=1e-5)
    for n, doc_id in enumerate(ODD_IDS):  # each one its own nearest neighbour, text from the same row
        hit = store.search(docs[n], k=1)[0]
        assert (hit.id, hit.text) == (doc_id, f"t{n}")
    everything = store.search(docs[0], k=len(ids))  # the whole corpus: nothing dropped for its id
    assert sorted(h.id for h in everything) == sorted(ids)
    want = _exact(docs[:1], docs, ids, len(ids))[0]
    assert [h.id for h in everything] == [i for i, _ in want]
    assert [h.score for h in everything] == pytest.approx([s for _, s in want], rel=1e-5)
    big = Gaussians(docs.mean[:1] * 20.0, docs.var[:1] * 0.05)  # raises M: every row is rewritten (paged by id)
    store.add(gaussians=big, ids=["big"])
    assert store.rebuild_count == 1 and len(store) == len(ids) + 1
    assert [(h.id, h.text) for h in store.search(docs[1], k=1)] == [(ODD_IDS[1], "t1")]
    store.delete(["big"])
    report = store.delete([*ODD_IDS, "never-there"])
    assert report.deleted == ODD_IDS and report.missing == ["never-there"]
    assert len(store) == len(plain) and sorted(store.ids) == sorted(plain)
    assert not any(i in store for i in ODD_IDS) and store.get_by_ids(ODD_IDS) == []


# ------------------------------------------------------------------ 2. one snapshot per hit
def _versions() -> tuple[Gaussians, Gaussians, Gaussians, Gaussians]:
    base = random_gaussians(20, K, seed=2)
    ver_a = Gaussians(np.zeros((1, K)), np.ones((1, K)))
    ver_b = Gaussians(np.full((1, K), 0.3), np.full((1, K), 1.5))
    return base, ver_a, ver_b, ver_a  # the query is version A's Gaussian


def test_a_hit_changed_right_after_the_search_keeps_its_own_text_and_is_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the document is upserted (then deleted) by another client the moment the ANN
    search returns. The old flow fetched texts in a second request: it paired version A's score with
    version B's text, and dropped the hit once deleted (k=1 gave []). Now the hit is one version,
    the one the search saw or the one after the write (a second search), with that version's score."""
    base, ver_a, ver_b, query = _versions()
    store = _store(tmp_path, index_type="flat")
    store.add(gaussians=base, ids=[f"b{i}" for i in range(20)], texts=[f"b{i}" for i in range(20)])
    store.add(gaussians=ver_a, ids=["x"], texts=["A"], metadatas=[{"v": "A"}])
    other = _store(tmp_path, index_type="flat")
    score_a = _exact(query, ver_a, ["x"], 1)[0][0][1]
    score_b = _exact(query, ver_b, ["x"], 1)[0][0][1]
    assert abs(score_a - score_b) > 0.1
    real = store.client.search
    action: list[str] = []

    def search_then_write(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if action[-1] == "upsert":
            other.add(gaussians=ver_b, ids=["x"], texts=["B"], metadatas=[{"v": "B"}])
        else:
            other.delete(["x"])
        return out

    monkeypatch.setattr(store.client, "search", search_then_write)
    action.append("upsert")
    hit = store.search(query[0], k=1)[0]
    assert hit.id == "x" and hit.metadata == {"v": hit.text}
    assert hit.score == pytest.approx({"A": score_a, "B": score_b}[str(hit.text)])  # its own version's score
    other.add(gaussians=ver_a, ids=["x"], texts=["A"], metadatas=[{"v": "A"}])
    action.append("delete")
    hits = store.search(query[0], k=1)
    assert len(hits) == 1  # not []
    if hits[0].id == "x":  # the version the search saw
        assert (hits[0].text, hits[0].score) == ("A", pytest.approx(score_a))
    else:  # the store after the delete: the best other document, with its own text and score
        row = int(hits[0].id[1:])
        assert hits[0].text == hits[0].id
        assert hits[0].score == pytest.approx(_exact(query, base[row : row + 1], [hits[0].id], 1)[0][0][1])


def test_concurrent_upserts_and_deletes_never_tear_or_drop_hits(tmp_path: Path) -> None:
    """A writer toggles a document between two versions (and deletes it) for ~2 s while two readers
    search: every hit's (score, text, metadata) is one consistent version, and k=1 always gives a hit."""
    base, ver_a, ver_b, query = _versions()
    store = _store(tmp_path, index_type="flat")
    store.add(gaussians=base, ids=[f"b{i}" for i in range(20)], texts=[f"b{i}" for i in range(20)])
    store.add(gaussians=ver_a, ids=["x"], texts=["A"], metadatas=[{"v": "A"}])
    consistent = {"A": _exact(query, ver_a, ["x"], 1)[0][0][1], "B": _exact(query, ver_b, ["x"], 1)[0][0][1]}
    assert abs(consistent["A"] - consistent["B"]) > 0.1
    stop = time.monotonic() + 2.0
    bad: list[object] = []
    searches = [0]

    def writer() -> None:
        step = 0
        while time.monotonic() < stop:
            if step % 3 == 0:
                store.add(gaussians=ver_b, ids=["x"], texts=["B"], metadatas=[{"v": "B"}])
            elif step % 3 == 1:
                store.add(gaussians=ver_a, ids=["x"], texts=["A"], metadatas=[{"v": "A"}])
            else:
                store.delete(["x"])
            step += 1

    def reader() -> None:
        while time.monotonic() < stop:
            try:
                for k in (1, 21):
                    hits = store.search(query[0], k=k)
                    searches[0] += 1
                    if k == 1 and len(hits) != 1:
                        bad.append(("k=1 gave", hits))
                    for h in hits:
                        if h.id == "x" and (
                            h.text not in consistent
                            or h.score != pytest.approx(consistent[h.text], abs=1e-4)
                            or h.metadata != {"v": h.text}
                        ):
                            bad.append(("torn", h))
            except Exception as exc:  # reported by the assertion below
                bad.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert searches[0] > 20
    assert bad == []


# ------------------------------------------------------------------ 3. the stored index is adopted
@pytest.mark.parametrize(
    ("created", "asked"),
    [(("hnsw", None), ("flat", None)), (("hnsw", "sq8"), ("hnsw", None)), (("flat", None), ("ivf", "sq8"))],
)
def test_attaching_with_another_index_adopts_the_stored_one_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, created: tuple[str, Any], asked: tuple[str, Any]
) -> None:
    docs = random_gaussians(60, K, seed=3)
    ids = [f"d{i}" for i in range(60)]
    first = _store(tmp_path, index_type=created[0], compression=created[1])
    first.add(gaussians=docs, ids=ids)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        second = _store(tmp_path, index_type=asked[0], compression=asked[1])
    assert (second.index_type, second.compression) == created
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
    if asked == ("hnsw", None):  # the constructor's defaults, as build settings: adopted without a warning
        assert "this client asked for" not in warned
    else:
        assert f"index_type={created[0]!r}" in warned and f"index_type={asked[0]!r}" in warned
        assert f"compression={created[1]!r}" in warned and f"compression={asked[1]!r}" in warned
    assert [h.id for h in second.search(docs[5], k=1)] == ["d5"]
    second.add(gaussians=docs[:1], ids=["again"])  # a write keeps the stored index in the config
    third = _store(tmp_path, index_type=created[0], compression=created[1])
    assert (third.index_type, third.compression) == created


# ------------------------------------------------------------------ 4. dropped and re-created
def test_a_client_attached_before_a_drop_and_recreate_follows_the_new_collection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(4)
    old = Gaussians(10.0 + rng.normal(size=(30, K)), np.exp(rng.normal(0, 0.5, size=(30, K))))
    new = Gaussians(-10.0 + rng.normal(size=(30, K)), np.exp(rng.normal(0, 0.5, size=(30, K))))
    query = Gaussians(-10.0 + rng.normal(size=(2, K)), np.exp(rng.normal(0, 0.5, size=(2, K))))
    new_ids = [f"n{i}" for i in range(30)]
    a = _store(tmp_path, index_type="flat")
    a.add(gaussians=old, ids=[f"a{i}" for i in range(30)])
    b = _store(tmp_path, index_type="flat")  # attached: holds the old centre and bound
    assert b._state.centre is not None  # the old documents' centre (means far from 0)
    a.drop()
    a.add(gaussians=new, ids=new_ids)
    want = _exact(query, new, new_ids, 3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = [[(h.id, h.score) for h in row] for row in b.search_batch(query, k=3)]
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g_row, w_row in zip(got, want, strict=True):
        assert [s for _, s in g_row] == pytest.approx([s for _, s in w_row], rel=1e-5)
    assert any("re-created" in r.getMessage() for r in caplog.records)
    c = _store(tmp_path, index_type="flat")
    a.drop()
    a.add(gaussians=new, ids=new_ids)  # re-created once more: get_gaussians needs the new centre too
    np.testing.assert_allclose(c.get_gaussians(["n0", "n7"]).mean, new.mean[[0, 7]], rtol=1e-5, atol=1e-4)
    c.add(gaussians=old[:2], ids=["o0", "o1"])  # a write under the current centre and bound
    assert [h.id for h in a.search(old[1], k=1)] == ["o1"]
    a.drop()  # dropped, not re-created: the attached client finds nothing, and its next add re-creates it
    assert b.search(query[0], k=3) == []
    assert len(c) == 0 and c.ids == []  # dropped by another client: empty, no error
    b.add(gaussians=new[:3], ids=["m0", "m1", "m2"])
    assert len(c) == 3 and sorted(c.ids) == ["m0", "m1", "m2"]  # created again by another client
    assert len(b) == 3 and [h.id for h in a.search(new[2], k=1)] == ["m2"]


# ------------------------------------------------------------------ 5. selective filters on HNSW
@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_a_selective_filter_returns_every_match_like_brute_force(tmp_path: Path, index_type: str) -> None:
    n = 3000
    docs = random_gaussians(n, K, seed=5)
    ids = [f"d{i}" for i in range(n)]
    metas = [{"c": i % 100} for i in range(n)]
    store = _store(tmp_path, index_type=index_type, nlist=64, nprobe=2)
    store.add(gaussians=docs, ids=ids, metadatas=metas, texts=[f"t{i}" for i in range(n)])
    store.flush(wait_for_index=True)
    queries = random_gaussians(4, K, seed=6)
    match = [i for i in range(n) if metas[i]["c"] == 7]
    assert len(match) == 30
    want = _exact(queries, docs[match], [ids[i] for i in match], 50)
    for row, exp in zip(store.search_batch(queries, k=50, filter={"c": 7}), want, strict=True):
        assert [h.id for h in row] == [i for i, _ in exp]
        assert [h.score for h in row] == pytest.approx([s for _, s in exp], rel=1e-5)
        assert all(h.text == f"t{h.id[1:]}" and h.metadata == {"c": 7} for h in row)


# ------------------------------------------------------------------ 6. no text reads back as None
def test_documents_added_without_text_read_back_as_none_like_klstore(tmp_path: Path) -> None:
    docs = random_gaussians(4, K, seed=7)
    store = _store(tmp_path, index_type="flat")
    ref = KLStore()
    for s in (store, ref):
        s.add(gaussians=docs[:2], ids=["none0", "none1"])
        s.add(texts=["", "some"], gaussians=docs[2:], ids=["empty", "some"])
    want = [(d.id, d.text) for d in ref.get_by_ids(["none0", "none1", "empty", "some"])]
    assert want == [("none0", None), ("none1", None), ("empty", ""), ("some", "some")]
    assert [(d.id, d.text) for d in store.get_by_ids(["none0", "none1", "empty", "some"])] == want
    assert [(h.id, h.text) for h in store.search(docs[0], k=1)] == [("none0", None)]
    big = Gaussians(docs.mean[:1] * 30.0, docs.var[:1] * 0.01)  # raises M: every row is rewritten
    store.add(gaussians=big, ids=["big"])
    assert [d.text for d in store.get_by_ids(["none0", "empty", "big"])] == [None, "", None]
    again = _store(tmp_path, index_type="flat")  # a reattached client keeps the distinction
    again.add(gaussians=docs[3:], ids=["none3"])
    assert [d.text for d in again.get_by_ids(["none3", "some"])] == [None, "some"]


def test_a_collection_with_a_non_nullable_text_field_still_takes_documents_without_text(tmp_path: Path) -> None:
    """Collections created before the fix: "no text" is stored (and read back) as "" (documented)."""
    from pymilvus import DataType

    made = _store(tmp_path, collection_name="new", index_type="flat", dim=K)
    config = json.loads(made.client.describe_collection("new")["properties"]["kl_retrievers.config"])
    config.pop("collection_uid", None)
    client = made.client
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2 * K + 2)
    schema.add_field("text", DataType.VARCHAR, max_length=100)
    schema.add_field("metadata", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    client.create_collection(
        "old", schema=schema, index_params=index, properties={"kl_retrievers.config": json.dumps(config)}
    )
    old = _store(tmp_path, collection_name="old", index_type="flat")
    docs = random_gaussians(3, K, seed=8)
    old.add(gaussians=docs[:2], ids=["a", "b"])
    old.add(texts=["c text"], gaussians=docs[2:], ids=["c"])
    assert [(d.id, d.text) for d in old.get_by_ids(["a", "c"])] == [("a", ""), ("c", "c text")]
    assert [h.id for h in old.search(docs[1], k=1)] == ["b"]


# ------------------------------------------------------------------ 7. a huge norm bound
def _recall(store: MilvusKLStore, queries: Gaussians, docs: Gaussians, ids: list[str]) -> float:
    want = _exact(queries, docs, ids, 10)
    got = store.search_batch(queries, k=10)
    return float(np.mean([len({h.id for h in g} & {i for i, _ in w}) / 10 for g, w in zip(got, want, strict=True)]))


def test_an_outlier_raising_the_bound_is_logged_and_repair_lowers_it_after_its_deletion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 2000
    docs = random_gaussians(n, K, seed=9)
    queries = random_gaussians(20, K, seed=10)
    ids = [f"d{i}" for i in range(n)]
    store = _store(tmp_path, index_type="flat", prove_flat=True)
    store.add(gaussians=docs, ids=ids)
    bound = store.norm_bound
    assert bound is not None and _recall(store, queries, docs, ids) == 1.0
    outlier = Gaussians(np.zeros((1, K)), np.array([[1e-8] + [1.0] * (K - 1)]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=outlier, ids=["outlier"])
    warned = [r.getMessage() for r in caplog.records if "'outlier'" in r.getMessage()]
    assert warned and "repair()" in warned[0] and "recall" in warned[0]
    assert store.norm_bound is not None and store.norm_bound > 1e3 * bound
    # what the warning is about (documented limit): float32 L2 can no longer rank the other documents, so a flat
    # search stays exact only by scoring every row in float64 (HNSW / IVF lose recall instead)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        caplog.clear()
        assert _recall(store, queries, docs, ids) == 1.0
    assert "scoring all 2001 matching rows in float64" in caplog.text
    store.delete(["outlier"])
    assert store.norm_bound > 1e3 * bound  # deleting alone does not lower M
    version = store.norm_version
    assert store.repair() == store.norm_version > version
    assert store.norm_bound == pytest.approx(bound, rel=1e-3)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        caplog.clear()
        assert _recall(store, queries, docs, ids) == 1.0
    assert "scoring all" not in caplog.text  # the float32 candidates are enough again
    fresh = _store(tmp_path, index_type="flat")  # the lower M is stored
    assert fresh.norm_bound == pytest.approx(bound, rel=1e-3) and _recall(fresh, queries, docs, ids) == 1.0
    assert store.repair() == store.norm_version  # nothing left to lower: the bound stays


def test_an_outlier_among_the_first_documents_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    docs = random_gaussians(50, K, seed=11)
    outlier = Gaussians(np.zeros((1, K)), np.array([[1e-9] + [1.0] * (K - 1)]))
    store = _store(tmp_path, index_type="flat")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=Gaussians.concat([docs, outlier]), ids=[f"d{i}" for i in range(50)] + ["tiny-var"])
    assert any("'tiny-var'" in r.getMessage() and "median" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.add(gaussians=random_gaussians(5, K, seed=12), ids=[f"e{i}" for i in range(5)])
    assert not [r for r in caplog.records if r.name == LOGGER]  # ordinary documents: no warning
