"""MilvusKLStore flat search is exact (F5): inner-product rows are centred on the first documents' mean, as KLStore's
flat index centres them, and a candidate pool that float32 cannot prove to hold the top k is widened, then every
matching row scored in float64; an uncentred inner-product collection of the previous format keeps working; filters
holding a lone surrogate match as in KLStore instead of raising a raw MilvusException."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store.milvus as milvus_module
from conftest import random_gaussians
from kl_retrievers.gaussian import Gaussians, document_gaussians_from_vectors, kl_document_vectors, neg_kl_matrix
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusKLStore

_CONFIG_KEY = "kl_retrievers.config"


def _offset_case(n: int = 2000, k: int = 32, nq: int = 20) -> tuple[Gaussians, Gaussians, list[str]]:
    """The probe's case: means 30 + 0.01 N(0, 1), unit variances, queries near the first documents."""
    rng = np.random.default_rng(0)
    dm = 30 + 0.01 * rng.normal(size=(n, k))
    qm = dm[:nq] + 0.005 * rng.normal(size=(nq, k))
    return Gaussians(dm, np.ones((n, k))), Gaussians(qm, np.ones((nq, k))), [f"d{i}" for i in range(n)]


def _brute_force(queries: Gaussians, docs: Gaussians, ids: list[str], k: int) -> list[list[str]]:
    exact = np.asarray(neg_kl_matrix(queries.astype(np.float64), docs.astype(np.float64)))
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in exact]


def _stored(store: MilvusKLStore, ids: list[str]) -> np.ndarray:
    rows = store.client.query(store.collection_name, filter=f"id in {json.dumps(ids)}", output_fields=["vector"])
    by_id = {r["id"]: r["vector"] for r in rows}
    return np.asarray([by_id[i] for i in ids], dtype=np.float64)


def _config(store: MilvusKLStore) -> dict[str, Any]:
    info = store.client.describe_collection(store.collection_name)
    return dict(json.loads(info["properties"][_CONFIG_KEY]))


@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_flat_search_is_exact_on_means_sharing_a_large_offset(tmp_path: Path, metric: str) -> None:
    """Inner product over the uncentred d~ found 0.215 of the true top 10 here (float32 cancellation)."""
    docs, queries, ids = _offset_case()
    flat = KLStore()
    flat.add(gaussians=docs, ids=ids)
    want = [[h.id for h in row] for row in flat.search_batch(queries, k=10)]
    as_stored = Gaussians(docs.mean.astype(np.float32), docs.var.astype(np.float32))  # KLStore's float32 copies
    assert want == _brute_force(queries, as_stored, ids, 10)
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", metric=metric) as store:  # type: ignore[arg-type]
        store.add(gaussians=docs, ids=ids)
        got = [[h.id for h in row] for row in store.search_batch(queries, k=10)]
        assert got == want
        assert got == _brute_force(queries, docs, ids, 10)
        if metric == "IP":  # a new inner-product collection: format version 3, centred on the documents' mean
            config = _config(store)
            assert config["format_version"] == 3
            np.testing.assert_allclose(config["index_centre"], docs.mean.mean(axis=0), rtol=1e-12)


def test_a_new_inner_product_collection_keeps_its_centre_for_every_writer(tmp_path: Path) -> None:
    docs = random_gaussians(60, 8, seed=1)
    shifted = Gaussians(docs.mean + 50.0, docs.var)
    path = str(tmp_path / "kl.db")
    with MilvusKLStore(uri=path, index_type="flat") as first:
        first.add(gaussians=shifted[:40], ids=[f"a{i}" for i in range(40)])
        centre = np.asarray(_config(first)["index_centre"])
        np.testing.assert_allclose(centre, np.asarray(shifted.mean[:40]).mean(axis=0), rtol=1e-12)
        later = MilvusKLStore(uri=path, index_type="flat")  # a second client: adopts the stored centre
        later.add(gaussians=shifted[40:], ids=[f"b{i}" for i in range(20)])
        assert _config(later)["index_centre"] == list(centre)
        ids = [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(20)]
        # every row holds d~ of the centred Gaussian
        want = np.asarray(kl_document_vectors(Gaussians(np.asarray(shifted.mean) - centre, shifted.var)))
        np.testing.assert_allclose(_stored(first, ids), want.astype(np.float32), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(later.get_gaussians(ids).mean, shifted.mean, rtol=1e-6)
        queries = Gaussians(shifted.mean[::7] + 0.1, shifted.var[::7])
        assert [[h.id for h in r] for r in first.search_batch(queries, k=5)] == _brute_force(queries, shifted, ids, 5)
        later.close()


def test_an_uncentred_inner_product_collection_of_the_previous_format_keeps_working(tmp_path: Path) -> None:
    """Rows written as the previous release wrote them: the raw float32 d~, no centre, format version 2."""
    docs, queries, ids = _offset_case(n=600, k=16, nq=8)
    path = str(tmp_path / "kl.db")
    with MilvusKLStore(uri=path, index_type="flat", dim=16) as made:  # the empty collection
        config = _config(made)
        config.update(format_version=2, index_centre=None)
        made.client.alter_collection_properties(made.collection_name, properties={_CONFIG_KEY: json.dumps(config)})
        raw = np.asarray(kl_document_vectors(docs[:500])).astype(np.float32)
        rows = [
            {"id": i, "vector": v.tolist(), "text": None, "metadata": {}, "added": n}
            for n, (i, v) in enumerate(zip(ids[:500], raw, strict=True))
        ]
        made.client.upsert(made.collection_name, rows)
    with MilvusKLStore(uri=path, index_type="flat", prove_flat=True) as old:
        assert old.metric == "IP" and old._state.centre is None
        # float32 inner products of these uncentred rows cannot rank them: the pool is not proven, every row is scored
        # exactly, as stored (the float32 d~ of means near 30 hold them within about 2e-6: another top 10 than the
        # float64 documents' at times)
        stored = document_gaussians_from_vectors(_stored(old, ids[:500]), 16)
        got = [[h.id for h in row] for row in old.search_batch(queries, k=10)]
        assert got == _brute_force(queries, stored, ids[:500], 10)
        old.add(gaussians=docs[500:], ids=ids[500:])  # a later add keeps the rows uncentred
        config = _config(old)
        assert config["format_version"] == 2 and config["index_centre"] is None
        want = np.asarray(kl_document_vectors(docs[500:])).astype(np.float32)
        np.testing.assert_allclose(_stored(old, ids[500:]), want, rtol=1e-6)
        stored = document_gaussians_from_vectors(_stored(old, ids), 16)
        got = [[h.id for h in row] for row in old.search_batch(queries, k=10)]
        assert got == _brute_force(queries, stored, ids, 10)
        np.testing.assert_allclose(old.get_gaussians(ids[:3]).mean, docs.mean[:3], rtol=1e-6)


def test_a_centre_replaced_during_the_first_add_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two first adds at once: the writer whose centre was replaced writes its rows again under the stored one."""
    docs = random_gaussians(80, 8, seed=3)
    shifted = Gaussians(docs.mean + 20.0, docs.var)
    ids = [f"d{i}" for i in range(80)]
    other = np.full(8, 19.0)  # the centre another writer's first add stored meanwhile
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", dim=8) as store:
        real = store._upsert
        calls: list[int] = []

        def upsert(*args: Any) -> None:
            real(*args)
            if not calls:  # right after this add's rows were written under its own centre
                config = _config(store)
                config.update(index_centre=list(other), writer="other", version=config["version"] + 1)
                store.client.alter_collection_properties(
                    store.collection_name, properties={_CONFIG_KEY: json.dumps(config)}
                )
            calls.append(1)

        monkeypatch.setattr(store, "_upsert", upsert)
        store.add(gaussians=shifted, ids=ids)
        assert len(calls) == 2  # written again
        assert store._state.centre == tuple(other)
        want = np.asarray(kl_document_vectors(Gaussians(np.asarray(shifted.mean) - other, shifted.var)))
        np.testing.assert_allclose(_stored(store, ids), want.astype(np.float32), rtol=1e-6, atol=1e-6)
        queries = Gaussians(shifted.mean[:5] + 0.05, shifted.var[:5])
        assert [[h.id for h in r] for r in store.search_batch(queries, k=5)] == _brute_force(queries, shifted, ids, 5)


def _wide_case(n: int, k: int = 16) -> tuple[Gaussians, Gaussians, list[str]]:
    """Means of magnitude 10 to 100 with variances from 1e-4 to 1e4: float32 inner products of d~ are noise."""
    rng = np.random.default_rng(4)
    var = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), size=(n, k)))
    mean = rng.choice([-1.0, 1.0], size=(n, k)) * rng.uniform(10, 100, size=(n, k))
    src = rng.integers(0, n, size=6)
    qm = mean[src] + 0.05 * np.sqrt(var[src]) * rng.normal(size=(6, k))
    qv = var[src] * np.exp(rng.uniform(np.log(0.5), np.log(2), size=(6, k)))
    return Gaussians(mean, var), Gaussians(qm, qv), [f"d{i:04d}" for i in range(n)]


@pytest.mark.parametrize("metric", ["IP", "L2"])
def test_an_unproven_pool_is_widened_then_every_matching_row_scored(
    tmp_path: Path, metric: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, queries, ids = _wide_case(600)
    metas = [{"even": i % 2 == 0} for i in range(600)]
    pools: list[int] = []  # the searches refine_top_k asked for: the pool and its witness
    real = milvus_module.refine_top_k

    def spy(nq: int, k: int, n: Any, margin: int, candidates: Any, *rest: Any) -> Any:
        def asked(qi: np.ndarray, c: int) -> Any:
            pools.append(c)
            return candidates(qi, c)

        return real(nq, k, n, margin, asked, *rest)

    monkeypatch.setattr(milvus_module, "refine_top_k", spy)
    flat = KLStore()
    flat.add(gaussians=docs, ids=ids, metadatas=metas)
    with MilvusKLStore(
        uri=str(tmp_path / "kl.db"),
        index_type="flat",
        metric=metric,  # type: ignore[arg-type]
        rescore_pool=10,
        rescore_factor=1,
        prove_flat=True,
    ) as store:
        store.add(gaussians=docs, ids=ids, metadatas=metas)
        for flt, matching in ((None, 600), ({"even": True}, 300)):
            want = [[h.id for h in row] for row in flat.search_batch(queries, k=10, filter=flt)]
            with caplog.at_level(logging.INFO, logger="kl_retrievers.store.milvus"):
                caplog.clear()
                pools.clear()
                got = store.search_batch(queries, k=10, filter=flt)
            assert [[h.id for h in row] for row in got] == want
            assert pools == [11, 267]  # pools of 10, then 266 (refine_top_k's first wider pool), each with its witness
            # the next pool (2128 rows) would be above a quarter of the matching rows: the unproven queries are scanned
            # (on these seeded data, all the L2 ones of the 300 are proven by the wider pool)
            scanned = f"scoring all {matching} matching rows" in caplog.text
            assert scanned == (matching == 600 or metric == "IP")
            assert all(h.text is None and h.metadata == metas[int(h.id[1:])] for row in got for h in row)
        # above exact_threshold the unproven results are kept, with a warning
        store.exact_threshold = 100
        with caplog.at_level(logging.WARNING, logger="kl_retrievers.store.milvus"):
            caplog.clear()
            assert len(store.search_batch(queries, k=10)[0]) == 10
        assert "may miss documents (raise exact_threshold" in caplog.text


def test_flat_scores_are_the_neg_kl_of_the_gaussians_recovered_from_the_stored_rows(tmp_path: Path) -> None:
    docs = random_gaussians(200, 8, seed=5)
    queries = random_gaussians(4, 8, seed=6)
    ids = [f"d{i}" for i in range(200)]
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat") as store:
        store.add(gaussians=docs, ids=ids)
        centre = np.asarray(store._state.centre) if store._state.centre is not None else np.zeros(8)
        recovered = document_gaussians_from_vectors(_stored(store, ids), 8)
        exact = np.asarray(neg_kl_matrix(Gaussians(np.asarray(queries.mean) - centre, queries.var), recovered))
        for q, row in enumerate(store.search_batch(queries, k=5)):
            for hit in row:
                assert hit.score == pytest.approx(exact[q, ids.index(hit.id)], rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------ filters holding a lone surrogate
_S = "\udce9"
_SURROGATE_FILTERS: list[dict[str, Any]] = [
    {"c": _S},
    {"c": {"$eq": _S}},
    {"c": {"$ne": _S}},
    {"c": {"$neq": "x" + _S}},
    {"c": {"$gt": _S}},
    {"c": {"$gte": _S}},
    {"c": {"$lt": _S}},
    {"c": {"$lte": _S}},
    {"c": {"$gt": "ab" + _S}},
    {"c": {"$lt": "ab" + _S + "z"}},
    {"c": ["a", _S]},
    {"c": {"$in": [_S]}},
    {"c": {"$nin": [_S]}},
    {"c": {"$nin": [_S, "a"]}},
    {"c": {"$not": {"$lte": _S}}},
    {"$not": {"c": {"$gt": _S}}},
    {_S: 1},
    {_S: {"$ne": 1}},
    {_S: {"$not": {"$gt": 1}}},
    {"$or": [{_S: {"$gt": 1}}, {"c": "a"}]},
    {"c" + _S: {"$nin": ["a"]}},
    {"c": {"$in": ["a", *(f"{_S}{i}" for i in range(200))]}},  # long: resolved to ids on Milvus Lite
    {_S: {"$in": list(range(200))}},
    {_S: {"$nin": list(range(200))}},
]
_METAS: list[dict[str, Any]] = [
    {"c": "a"},
    {"c": "\ud7ff"},
    {"c": "\ue000"},
    {"c": "\uffff"},
    {"c": 1},
    {"c": "ab"},
    {"c": "ab\ue000x"},
    {"c": "😀"},
    {},
]


@pytest.fixture(scope="module")
def surrogate_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    docs = random_gaussians(len(_METAS), 4, seed=7)
    ids = [f"d{i}" for i in range(len(_METAS))]
    flat = KLStore()
    flat.add(gaussians=docs, ids=ids, metadatas=_METAS)
    store = MilvusKLStore(uri=str(tmp_path_factory.mktemp("f5") / "kl.db"), index_type="flat")
    store.add(gaussians=docs, ids=ids, metadatas=_METAS)
    yield store, flat
    store.close()


@pytest.mark.parametrize("flt", _SURROGATE_FILTERS, ids=[ascii(f)[:60] for f in _SURROGATE_FILTERS])
def test_filters_holding_a_lone_surrogate_match_as_in_klstore(surrogate_pair: Any, flt: dict[str, Any]) -> None:
    store, flat = surrogate_pair
    q = random_gaussians(1, 4, seed=8)
    n = len(_METAS)
    assert {h.id for h in store.search(q, k=n, filter=flt)} == {h.id for h in flat.search(q, k=n, filter=flt)}


def test_delete_by_a_filter_holding_a_lone_surrogate(tmp_path: Path) -> None:
    docs = random_gaussians(len(_METAS), 4, seed=9)
    ids = [f"d{i}" for i in range(len(_METAS))]
    flat = KLStore()
    flat.add(gaussians=docs, ids=ids, metadatas=_METAS)
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat") as store:
        store.add(gaussians=docs, ids=ids, metadatas=_METAS)
        for flt in ({"c": _S}, {"c": {"$in": [_S, "a"]}}, {"c": {"$gt": _S}}, {_S: {"$ne": 0}}):
            assert sorted(store.delete(filter=flt).deleted) == sorted(flat.delete(filter=flt).deleted)
            assert sorted(store.ids) == sorted(flat.ids)
        assert len(store) == 0


def test_prove_flat_is_off_by_default_and_must_be_a_bool(tmp_path: Path) -> None:
    docs, queries, ids = _wide_case(600)
    with MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", rescore_pool=10, rescore_factor=1) as store:
        assert store.prove_flat is False
        store.add(gaussians=docs, ids=ids)
        calls: list[int] = []

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            raise AssertionError("proved by default")

        store._proven_flat = counting  # type: ignore[method-assign]
        assert len(store.search_batch(queries, k=10)[0]) == 10
        assert calls == []  # no proof, no widening, no scan by default
    with pytest.raises(TypeError, match="prove_flat must be True or False; got 'yes'"):
        MilvusKLStore(uri=str(tmp_path / "other.db"), index_type="flat", prove_flat="yes")  # type: ignore[arg-type]
