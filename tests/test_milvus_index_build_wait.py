"""MilvusKLStore builds a new collection's index with ``create_index(sync=...)``: on a Milvus server it waits for
the build (``sync=True``, as ``create_collection(index_params=...)`` did), on Milvus Lite it does not (Lite builds
the index before it answers, and pymilvus' wait asks for a timestamp Lite does not implement, leaving a grpc error
cycle that kept the store alive). A client that names itself a server in its version takes the server path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("milvus_lite")

from conftest import random_gaussians
from kl_retrievers.store.milvus import MilvusKLStore


class _RecordingClient:
    """A Milvus Lite client that records ``create_index``'s keywords; with ``server``, it answers a server's
    version (so the store takes the server path) and builds the index without the wait Lite cannot answer."""

    def __init__(self, client: Any, *, server: bool) -> None:
        self._client = client
        self._server = server
        self.index_calls: list[dict[str, Any]] = []

    def get_server_version(self, **kwargs: Any) -> Any:
        return "v2.5.4" if self._server else self._client.get_server_version(**kwargs)

    def create_index(self, *args: Any, **kwargs: Any) -> Any:
        self.index_calls.append(dict(kwargs))
        return self._client.create_index(*args, **{**kwargs, "sync": False})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.parametrize(("server", "sync"), [(True, True), (False, False)])
def test_a_new_collection_waits_for_its_index_on_a_server_only(tmp_path: Path, server: bool, sync: bool) -> None:
    pymilvus = pytest.importorskip("pymilvus")
    lite = pymilvus.MilvusClient(str(tmp_path / "kl.db"))
    client = _RecordingClient(lite, server=server)
    try:
        store = MilvusKLStore(client=client, collection_name="c", index_type="flat", dim=4)
        assert store._lite is not server
        assert [call.get("sync") for call in client.index_calls] == [sync]
        assert client.index_calls[0].get("timeout") == store.timeout
        docs = random_gaussians(3, 4, seed=0)
        store.add(gaussians=docs, ids=["a", "b", "c"])  # the index built either way: the collection is usable
        assert [h.id for h in store.search(docs[1], k=1)] == ["b"]
        assert np.isfinite(store.search(docs[1], k=1)[0].score)
    finally:
        lite.close()
