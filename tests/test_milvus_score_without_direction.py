"""A Milvus collection whose stored ``score`` lacks its name or its direction is refused.

Every collection has recorded both parts of its ``score`` (``{"name": "neg_kl", "direction": "higher_is_better"}``)
since the field was written, so a score with only a name (``{"name": "neg_kl"}``) is an edited or foreign config:
it attached silently, where a ``KLStore``'s ``config.json`` is refused without either field
(:func:`kl_retrievers._score.check_score_fields` with ``required=True``). A config with no ``score`` at all
(written before the field was) still attaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import random_gaussians

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore

K = 4


def _with_score(tmp_path: Path, score: object) -> str:
    """A flat collection of 5 Gaussians whose stored config's ``score`` is ``score`` (``...``: no score)."""
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    store.add(gaussians=random_gaussians(5, K, seed=1), ids=[f"d{i}" for i in range(5)])
    config = json.loads(store.client.describe_collection("c")["properties"][milvus_mod._CONFIG_KEY])
    if score is ...:
        del config["score"]
    else:
        config["score"] = score
    store.client.alter_collection_properties("c", properties={milvus_mod._CONFIG_KEY: json.dumps(config)})
    store.close()
    return uri


@pytest.mark.parametrize(
    ("score", "field"),
    [
        ({"name": "neg_kl"}, "score.direction"),
        ({"direction": "higher_is_better"}, "score.name"),
        ({}, "score.name"),
    ],
)
def test_a_stored_score_missing_a_part_is_refused(tmp_path: Path, score: object, field: str) -> None:
    uri = _with_score(tmp_path, score)
    with pytest.raises(ValueError) as caught:
        MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    assert str(caught.value) == (
        f"Milvus collection 'c': field {field!r} is missing; this library serves 'neg_kl' ('higher_is_better')"
    )


@pytest.mark.parametrize("score", [..., {"name": "neg_kl", "direction": "higher_is_better"}])
def test_a_complete_score_or_none_at_all_attaches(tmp_path: Path, score: object) -> None:
    uri = _with_score(tmp_path, score)
    store = MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    try:
        assert len(store.search(random_gaussians(1, K, seed=2), k=3)) == 3
    finally:
        store.close()
