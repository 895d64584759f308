"""MilvusKLStore (stop 43): a Milvus Lite client passed as ``client=`` is detected as Lite, so its filter
workarounds apply (the same results as ``uri=`` and as KLStore)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("milvus_lite")

import kl_retrievers.store.milvus as milvus_module
from conftest import random_gaussians
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore
from kl_retrievers.milvus import MilvusKLStore

K = 4
# numbers, strings and other JSON types under one key: an order comparison between them is unknown on Lite
METAS: list[dict[str, Any]] = [
    {"year": 2020},
    {"year": 2021},
    {"year": "abc"},
    {"year": "zzz"},
    {},
    {"year": None},
    {"year": [1, 2]},
    {"year": 2.5},
]
NEGATED = {"$not": {"year": {"$gt": "abc"}}}


def test_a_lite_client_passed_as_client_is_lite_and_matches_uri_and_klstore(tmp_path: Path) -> None:
    pymilvus = pytest.importorskip("pymilvus")
    docs = random_gaussians(len(METAS), K, seed=3)
    ids = [f"d{i:03d}" for i in range(len(METAS))]
    by_uri = MilvusKLStore(uri=str(tmp_path / "a.db"), index_type="flat")
    by_client = MilvusKLStore(client=pymilvus.MilvusClient(str(tmp_path / "b.db")), index_type="flat")
    ref = KLStore()
    for s in (by_uri, by_client, ref):
        s.add(gaussians=docs, ids=ids, metadatas=METAS)
    q = random_gaussians(2, K, seed=9)

    def run(store: Any) -> list[list[str]]:
        return [[h.id for h in row] for row in store.search_batch(q, k=len(METAS), filter=NEGATED)]

    want = run(ref)
    assert run(by_client) == run(by_uri) == want
    # every document but the one string above "abc" ("zzz"): numbers, null, a list and a missing key pass
    assert sorted(want[0]) == sorted(set(ids) - {"d003"})
    assert by_client._lite and by_uri._lite
    # the repr names the client, not the uri argument's default (which a given client never used)
    assert repr(by_client).startswith("MilvusKLStore(client=MilvusClient, collection=")
    assert "kl_retrievers.db" not in repr(by_client) and repr(by_uri).startswith(
        f"MilvusKLStore(uri={str(tmp_path / 'a.db')!r}"
    )


class _Server:
    def __init__(self, version: Any) -> None:
        self.version = version

    def get_server_version(self, timeout: float | None = None) -> Any:
        self.timeout = timeout
        if isinstance(self.version, Exception):
            raise self.version
        return self.version


@pytest.mark.parametrize(
    ("client", "lite"),
    [
        (_Server("milvus_lite-3.2.2"), True),
        (_Server("v2.5.4"), False),
        (_Server("v2.5.4-elite-build"), False),  # "lite" inside a server's version is not Milvus Lite
        (_Server(ConnectionError("down")), False),
        (_Server({"version": "lite"}), False),
        (object(), False),
    ],
)
def test_lite_detection_reads_the_server_version(client: Any, lite: bool) -> None:
    from kl_retrievers.store.milvus import _is_lite_client

    assert _is_lite_client(client, 3.0) is lite
    if isinstance(client, _Server):
        assert client.timeout == 3.0  # a server that stopped answering cannot hang the constructor


# ------------------------------------------------------------------ ties: the later-added first, as KLStore
def _copies(n: int) -> Gaussians:
    g = random_gaussians(1, K, seed=5).numpy()
    return Gaussians(np.repeat(g.mean, n, axis=0), np.repeat(g.var, n, axis=0))


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_tied_documents_come_back_in_klstore_s_order_whatever_the_ids(tmp_path: Path, index_type: str) -> None:
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type=index_type)  # type: ignore[arg-type]
    ref = KLStore()
    q = random_gaussians(1, K, seed=7)
    for s in (store, ref):
        s.add(gaussians=_copies(3), ids=["b", "a", "c"])
    assert [h.id for h in ref.search(q, k=3)] == ["c", "a", "b"]
    assert [h.id for h in store.search(q, k=3)] == ["c", "a", "b"]
    for s in (store, ref):
        s.add(gaussians=_copies(2), ids=["e", "d"])  # a later add ranks first
        s.add(gaussians=_copies(1), ids=["a"])  # re-added: now the latest
    want = [h.id for h in ref.search(q, k=5)]
    assert want == ["a", "d", "e", "c", "b"]
    assert [h.id for h in store.search(q, k=5)] == want
    assert [h.id for h in store.search(q, k=2)] == want[:2]  # a shallower search is a prefix


def test_a_rewrite_of_the_rows_keeps_their_order_among_ties(tmp_path: Path) -> None:
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat", metric="L2")  # rewrites: the L2 reduction
    ref = KLStore()
    q = random_gaussians(1, K, seed=7)
    big = random_gaussians(1, K, seed=8).numpy()
    far = Gaussians(big.mean * 50.0, big.var * 1e-3)  # a norm far above M: every row is rewritten
    for s in (store, ref):
        s.add(gaussians=_copies(4), ids=["c", "a", "d", "b"])
        s.add(gaussians=far, ids=["z"])
    assert store.rebuild_count >= 1
    want = [h.id for h in ref.search(q, k=5) if h.id != "z"]
    assert want == ["b", "d", "a", "c"]
    assert [h.id for h in store.search(q, k=5) if h.id != "z"] == want


def test_a_collection_without_the_insertion_field_is_read_and_ties_greatest_id_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection created by an earlier release (no ``added`` field) still loads, adds and searches."""
    uri = str(tmp_path / "old.db")
    create_schema = MilvusKLStore._create

    def old_create(self: MilvusKLStore, k: int) -> None:  # the schema of the previous release
        make = self._client.create_schema

        def schema(*args: Any, **kwargs: Any) -> Any:
            sch = make(*args, **kwargs)
            add = sch.add_field

            def add_field(name: str, *a: Any, **kw: Any) -> Any:
                return sch if name == milvus_module._ADDED_FIELD else add(name, *a, **kw)

            sch.add_field = add_field
            return sch

        self._client.create_schema = schema
        try:
            create_schema(self, k)
        finally:
            del self._client.create_schema
        self._has_added = False

    monkeypatch.setattr(MilvusKLStore, "_create", old_create)
    MilvusKLStore(uri=uri, index_type="flat").add(gaussians=_copies(3), ids=["b", "a", "c"])
    monkeypatch.undo()
    old = MilvusKLStore(uri=uri, index_type="flat")
    fields = {f["name"] for f in old.client.describe_collection("kl_retrievers")["fields"]}
    assert milvus_module._ADDED_FIELD not in fields and not old._has_added
    old.add(gaussians=_copies(1), ids=["0"])
    q = random_gaussians(1, K, seed=7)
    assert [h.id for h in old.search(q, k=4)] == ["c", "b", "a", "0"]  # the rule of the previous release
    assert len(old) == 4 and old.get_by_ids(["a"])[0].id == "a"
