"""A Milvus IVF collection (L2 reduction) refuses a document whose bound M would overflow the index's k-means."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kl_retrievers

pytest.importorskip("milvus_lite")

# Run in child processes: without the check, Milvus Lite's k-means aborts the process (SIGABRT) when the
# index is built at close(), and every later open of the file aborts again.
_WRITE = """
import json, sys
import numpy as np
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import MilvusKLStore

uri = sys.argv[1]
rng = np.random.default_rng(0)
k, n = 16, 600
docs = Gaussians(rng.normal(size=(n, k)), np.exp(rng.normal(size=(n, k))))
extreme = Gaussians(np.zeros((1, k)), np.full((1, k), 1e-19))
ids = [str(i) for i in range(n)]
store = MilvusKLStore(uri=uri, index_type="ivf", nlist=8)
errors = []

def attempt(batch, batch_ids):
    try:
        store.add(gaussians=batch, ids=batch_ids, metadatas=[{"i": -1}] * len(batch_ids))
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))

attempt(Gaussians.concat([docs, extreme]), [*ids, "confident"])  # the collection's first documents
out = {"len_first": len(store)}
store.add(gaussians=docs, ids=ids, metadatas=[{"i": i} for i in range(n)])
bound = store._state.norm_bound
attempt(extreme, ["confident"])  # a new document under the bound in force
attempt(Gaussians.concat([docs[10:12], extreme]), ["10", "new", "11"])  # "11": an upsert of a stored row
out["errors"] = errors
out["len"] = len(store)
out["bound_unchanged"] = store._state.norm_bound == bound
out["meta"] = [d.metadata["i"] for d in store.get_by_ids(["10", "11"])]
out["missing"] = [d.id for d in store.get_by_ids(["confident", "new"])]
stored = store.get_gaussians(["10", "11"])
out["means_kept"] = bool(np.allclose(stored.mean, docs.mean[10:12], atol=1e-5))
out["hits"] = [h.id for h in store.search(docs[:1], k=3)]
store.close()
print(json.dumps(out))
"""

_REOPEN = """
import json, sys
import numpy as np
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import MilvusKLStore

rng = np.random.default_rng(0)
docs = Gaussians(rng.normal(size=(600, 16)), np.exp(rng.normal(size=(600, 16))))
store = MilvusKLStore(uri=sys.argv[1], index_type="ivf", nlist=8)
out = {"len": len(store), "hits": [h.id for h in store.search(docs[:1], k=3)]}
store.close()
print(json.dumps(out))
"""


def _child(code: str, uri: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(Path(kl_retrievers.__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=300, env=env, cwd=Path(uri).parent
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_ivf_collection_refuses_overflowing_bound_and_stays_usable(tmp_path: Path) -> None:
    uri = str(tmp_path / "kl.db")
    out = _child(_WRITE, uri)
    errors = out["errors"]
    assert isinstance(errors, list) and len(errors) == 3
    for error in errors:
        assert isinstance(error, str)
        assert "IVF index" in error and "2.306e+18" in error and "nothing was added" in error
    assert "'confident'" in errors[0] and "'confident'" in errors[1] and "'11'" in errors[2]  # the upsert's extreme row
    assert out["len_first"] == 0  # the refused first batch wrote no row
    assert out["len"] == 600
    assert out["bound_unchanged"] is True
    assert out["meta"] == [10, 11]  # the upserted rows keep their stored copies
    assert out["missing"] == []
    assert out["means_kept"] is True
    hits = out["hits"]
    assert isinstance(hits, list) and hits[0] == "0"
    # the file opens (and its index builds) in a new process
    again = _child(_REOPEN, uri)
    assert again["len"] == 600
    assert again["hits"] == hits


_ADVICE = """
import json, sys
import numpy as np
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.store import MilvusKLStore

uri = sys.argv[1]
rng = np.random.default_rng(0)
k = 16
docs = Gaussians(rng.normal(size=(40, k)), np.exp(rng.normal(size=(40, k))))
extreme = Gaussians(np.zeros((1, k)), np.full((1, k), 1e-19))
out = {}
try:
    MilvusKLStore(uri=uri, index_type="ivf", nlist=8, norm_headroom=1e19)
except ValueError as exc:
    out["headroom"] = str(exc)
store = MilvusKLStore(uri=uri, index_type="ivf", nlist=8, collection_name="first")
try:
    store.add(gaussians=extreme, ids=["x"])
except ValueError as exc:
    out["first"] = str(exc)
out["left_empty"] = [store.client.has_collection("first"), len(store)]
store.drop()  # as the refusal advises, then index_type='flat'
store.close()
flat = MilvusKLStore(uri=uri, index_type="flat", collection_name="first")
flat.add(gaussians=extreme, ids=["x"])
out["flat"] = [flat.index_type, len(flat)]
flat.close()
ivf = MilvusKLStore(uri=uri, index_type="ivf", nlist=8, collection_name="second")
ivf.add(gaussians=docs, ids=[str(i) for i in range(40)])
try:
    ivf.add(gaussians=extreme, ids=["x"])
except ValueError as exc:
    out["later"] = str(exc)
out["len_later"] = len(ivf)
ivf.close()
print(json.dumps(out))
"""


def test_ivf_refusals_give_advice_that_works_and_name_the_headroom(tmp_path: Path) -> None:
    out = _child(_ADVICE, str(tmp_path / "kl.db"))
    headroom = out["headroom"]
    assert isinstance(headroom, str) and "norm_headroom must be a finite number >= 1 and <= 1e+06" in headroom
    first, later = out["first"], out["later"]
    assert isinstance(first, str) and isinstance(later, str)
    for message in (first, later):
        assert "'x'" in message and "times norm_headroom=1.1 gives the bound M=" in message
        assert "nothing was added" in message and "re-encode the document" in message
        assert "delete or re-encode it" not in message  # the document was never stored
        assert "index_type='flat'" in message
    # the first add left an empty IVF collection: a flat client of the same name would get its IVF index
    assert out["left_empty"] == [True, 0]
    assert "use another collection_name, or drop() this one, then index_type='flat'" in first
    assert "another collection (another collection_name) created with index_type='flat'" in later
    assert out["flat"] == ["flat", 1]  # the advice works: dropped, then created flat, the document is stored
    assert out["len_later"] == 40
