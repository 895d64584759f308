"""MilvusKLStore defaults and attach/close behaviour: a flat collection is exact (inner product by default), the
index's build settings are the collection's, close() releases a Milvus Lite file, get_gaussians is float32."""

from __future__ import annotations

import fcntl
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import milvus_lite_locked
from kl_retrievers.gaussian import Gaussians, neg_kl_matrix
from kl_retrievers.store.milvus import MilvusConnectionError, MilvusKLStore

LOGGER = "kl_retrievers.store.milvus"


def _spread(n: int, dim: int, seed: int) -> Gaussians:
    """Gaussians whose variances spread over twelve orders of magnitude (float32-exact values)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, (n, dim)).astype(np.float32).astype(np.float64)
    var = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), (n, dim))).astype(np.float32).astype(np.float64)
    return Gaussians(mean, var)


def test_a_new_flat_collection_is_exact_by_default(tmp_path: Path) -> None:
    """The L2 reduction (the old default) lost true top-10 documents on a flat index when variances spread widely."""
    docs = _spread(400, 8, seed=0)
    ids = [f"d{i:03d}" for i in range(400)]
    rng = np.random.default_rng(1)
    pick = rng.integers(0, 400, 30)
    queries = Gaussians(
        docs.mean[pick] + rng.normal(0, 0.1, (30, 8)) * np.sqrt(docs.var[pick]),
        docs.var[pick] * np.exp(rng.normal(0, 0.3, (30, 8))),
    )
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat")
    assert store.metric == "IP"
    store.add(gaussians=docs, ids=ids)
    scores = np.asarray(neg_kl_matrix(queries, docs))
    got = store.search_batch(queries, k=10)
    for row, want in zip(got, scores, strict=True):
        assert {h.id for h in row} == {ids[j] for j in np.argsort(-want)[:10]}


def test_attaching_keeps_the_collections_metric(tmp_path: Path) -> None:
    uri = str(tmp_path / "kl.db")
    docs = _spread(5, 4, seed=2)
    l2 = MilvusKLStore(uri=uri, collection_name="c", index_type="flat", metric="L2")
    l2.add(gaussians=docs, ids=list("abcde"))
    again = MilvusKLStore(uri=uri, collection_name="c", index_type="flat")  # no metric asked: the collection's
    assert again.metric == "L2" and again.norm_bound == l2.norm_bound
    assert [h.id for h in again.search(docs[2], k=1)] == ["c"]
    with pytest.raises(ValueError, match="metric 'L2', not 'IP'"):
        MilvusKLStore(uri=uri, collection_name="c", index_type="flat", metric="IP")
    assert MilvusKLStore(uri=uri, collection_name="h", index_type="hnsw", dim=4).metric == "L2"


def test_reattaching_reports_the_collections_build_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = str(tmp_path / "kl.db")
    made = MilvusKLStore(uri=uri, collection_name="h", index_type="hnsw", hnsw_m=8, ef_construction=20, dim=4)
    MilvusKLStore(client=made.client, collection_name="i", index_type="ivf", nlist=7, dim=4)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        h = MilvusKLStore(client=made.client, collection_name="h", index_type="hnsw", hnsw_m=48, ef_construction=400)
        i = MilvusKLStore(client=made.client, collection_name="i", index_type="ivf", nlist=99)
    assert (h.hnsw_m, h.ef_construction) == (8, 20) and i.nlist == 7
    messages = [r.getMessage() for r in caplog.records]
    assert any("hnsw_m=8 (asked: 48)" in m and "ef_construction=20 (asked: 400)" in m for m in messages)
    assert any("nlist=7 (asked: 99)" in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        same = MilvusKLStore(client=made.client, collection_name="h", index_type="hnsw", hnsw_m=8, ef_construction=20)
    assert same.hnsw_m == 8 and not [r for r in caplog.records if "was built with" in r.getMessage()]


def test_close_releases_the_milvus_lite_file_and_a_held_file_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "kl.db")
    first = MilvusKLStore(uri=path, collection_name="c", dim=4)
    second = MilvusKLStore(uri=path, collection_name="c")  # the same file, served once in this process
    first.close()
    assert milvus_lite_locked(path) and len(second) == 0  # still in use by the second store
    second.close()
    assert not milvus_lite_locked(path)  # another process may open it now
    # another process holding the file (its lock): the error says so, not "check the URI"
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(MilvusConnectionError, match="another process holds the Milvus Lite file") as info:
            MilvusKLStore(uri=path, collection_name="c", timeout=5.0)
        assert "one process per file" in str(info.value) and "Milvus server" in str(info.value)
    finally:
        os.close(fd)
    third = MilvusKLStore(uri=path, collection_name="c")
    assert third.dim == 4
    third.close()


def test_get_gaussians_is_float32_and_a_self_score_is_plus_zero(tmp_path: Path) -> None:
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="c", index_type="flat", metric="L2")
    docs = Gaussians(np.zeros((2, 4)), np.ones((2, 4)))  # recovered exactly from float32
    store.add(gaussians=Gaussians(np.array([[0.0] * 4, [1.0] * 4]), docs.var), ids=["a", "b"])
    got = store.get_gaussians(["a", "b"])
    assert np.asarray(got.mean).dtype == np.float32 and np.asarray(got.var).dtype == np.float32
    np.testing.assert_array_equal(got.var, np.ones((2, 4), np.float32))
    hit = store.search(docs[0], k=1)[0]
    assert hit.id == "a" and hit.score == 0.0 and math.copysign(1.0, hit.score) == 1.0
