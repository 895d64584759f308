"""The state every backend reports the same way (``dim``, ``norm_bound``, ``index_offset``) is defined once,
on :class:`GaussianStore`; each backend only says where its reduction's ``M`` and ``o`` are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import random_gaussians
from kl_retrievers.store import GaussianStore, KLStore, MilvusKLStore
from kl_retrievers.store._engines import ApproxEngine


@pytest.mark.parametrize("name", ["dim", "norm_bound", "index_offset"])
def test_backends_share_one_definition(name: str) -> None:
    assert getattr(KLStore, name) is getattr(GaussianStore, name)
    assert getattr(MilvusKLStore, name) is getattr(GaussianStore, name)


def test_flat_klstore_reports_no_reduction_and_its_dim() -> None:
    store = KLStore()
    assert (store.dim, store.norm_bound, store.index_offset) == (None, None, 0.0)
    store.add(gaussians=random_gaussians(5, 3), ids=[f"d{i}" for i in range(5)])
    assert (store.dim, store.norm_bound, store.index_offset) == (3, None, 0.0)


def test_approximate_klstore_reports_its_engines_reduction() -> None:
    store = KLStore(index_type="ivf", nlist=4, nprobe=4, exact_threshold=0)
    store.add(gaussians=random_gaussians(200, 4), ids=[f"d{i}" for i in range(200)])
    assert store.is_built
    engine = store._engine
    assert isinstance(engine, ApproxEngine)
    bound = store.norm_bound
    assert bound is not None and bound == engine.norm_bound and bound > 0
    assert store.index_offset == engine.offset != 0.0


def test_milvus_ip_reports_no_reduction_and_l2_its_stored_one(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    ip = MilvusKLStore(uri=str(tmp_path / "ip.db"), metric="IP", index_type="flat")
    ip.add(gaussians=random_gaussians(10, 3), ids=[f"d{i}" for i in range(10)])
    assert (ip.dim, ip.norm_bound, ip.index_offset) == (3, None, 0.0)
    l2 = MilvusKLStore(uri=str(tmp_path / "l2.db"), metric="L2", index_type="flat")
    l2.add(gaussians=random_gaussians(10, 3), ids=[f"d{i}" for i in range(10)])
    state = l2._state
    assert (l2.dim, l2.norm_bound, l2.index_offset) == (3, state.norm_bound, state.offset)
    assert l2.norm_bound is not None and l2.norm_bound > 0
