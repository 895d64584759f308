"""The centre of a Milvus collection is fixed by its first ``add``; copying it into a new collection re-centres it.

``MilvusKLStore`` has no ``rebuild()`` (docs/milvus.md, *No rebuild()*: a row does not say which centre it was written
under, so an in-place rewrite stopped midway could not be told apart from a finished one). The documented workaround
copies the documents into a new collection, whose first ``add`` chooses the centre. Checked against a float64 brute
force: a skewed first add costs the flat inner-product collection recall, the copy restores 1.0 and keeps ids, texts,
metadata and filters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import MilvusKLStore


def _true_top(queries: Gaussians, docs: Gaussians, k: int) -> np.ndarray:
    qm, qv = np.asarray(queries.mean)[:, None, :], np.asarray(queries.var)[:, None, :]
    dm, dv = np.asarray(docs.mean)[None], np.asarray(docs.var)[None]
    kl = 0.5 * (np.log(dv / qv) + qv / dv + (qm - dm) ** 2 / dv - 1.0).sum(-1)
    return np.argsort(kl, axis=1, kind="stable")[:, :k]


def test_copying_a_skewed_collection_into_a_new_one_restores_exact_recall(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dim, n, k = 16, 1000, 10
    first = Gaussians(rng.normal(0.0, 1.0, (4, dim)), np.ones((4, dim)))  # the first add: far from the rest
    rest = Gaussians(30.0 + 0.01 * rng.normal(size=(n, dim)), np.ones((n, dim)))
    ids = [f"f{i}" for i in range(4)] + [f"d{i:04d}" for i in range(n)]
    docs = Gaussians(np.vstack([first.mean, rest.mean]), np.vstack([first.var, rest.var]))
    queries = Gaussians(30.0 + 0.01 * rng.normal(size=(20, dim)), np.ones((20, dim)))
    truth = [{ids[j] for j in row} for row in _true_top(queries, docs, k)]

    def recall(store: MilvusKLStore) -> float:
        hits = store.search_batch(queries, k=k)
        return float(np.mean([len({h.id for h in row} & t) / k for row, t in zip(hits, truth, strict=True)]))

    uri = str(tmp_path / "kl.db")
    old = MilvusKLStore(uri=uri, collection_name="docs", index_type="flat")
    old.add(gaussians=first, ids=ids[:4], texts=["first"] * 4)
    old.add(gaussians=rest, ids=ids[4:], texts=[f"t{i}" for i in range(n)], metadatas=[{"y": i % 3} for i in range(n)])
    assert recall(old) < 0.9  # centred on the first four documents' mean: float32 cannot rank the rest

    # the workaround of docs/milvus.md, *No rebuild()*
    stored_ids = old.ids
    stored, gaussians = old.get_by_ids(stored_ids), old.get_gaussians(stored_ids)
    new = MilvusKLStore(uri=uri, collection_name="docs_v2", index_type=old.index_type, metric=old.metric)
    texts: list[Any] = [d.text for d in stored]  # None for a document without text (add takes it)
    new.add(gaussians=gaussians, ids=stored_ids, texts=texts, metadatas=[d.metadata for d in stored])

    assert recall(new) == 1.0
    assert sorted(new.ids) == sorted(ids)
    assert [d.text for d in new.get_by_ids(["f0", "d0005"])] == ["first", "t5"]
    filtered = new.search(Gaussians(queries.mean[:1], queries.var[:1]), k=5, filter={"y": 2})
    assert len(filtered) == 5 and all(h.metadata == {"y": 2} for h in filtered)
    old.close()
    new.close()
