"""A Milvus collection's config records the score it serves (``"score": {"name", "direction"}``), and a client
attaching to one that records another score refuses it, as every other saved format does
(:func:`kl_retrievers._score.check_score`); a collection whose config records no score (created before the field
was written) attaches as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import random_gaussians

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore

K = 8


def _made(tmp_path: Path, score: object) -> str:
    """A flat collection holding 20 Gaussians whose stored config's ``score`` is ``score`` (absent: ``...``)."""
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    store.add(gaussians=random_gaussians(20, K, seed=3), ids=[f"d{i}" for i in range(20)])
    config = json.loads(store.client.describe_collection("c")["properties"][milvus_mod._CONFIG_KEY])
    assert config["score"] == {"name": "neg_kl", "direction": "higher_is_better"}  # what a collection records
    if score is ...:
        del config["score"]
    else:
        config["score"] = score
    store.client.alter_collection_properties("c", properties={milvus_mod._CONFIG_KEY: json.dumps(config)})
    store.close()
    return uri


@pytest.mark.parametrize(
    ("score", "field", "found"),
    [
        ({"name": "cosine", "direction": "higher_is_better"}, "score.name", "'cosine'"),
        ({"name": "neg_kl", "direction": "lower_is_better"}, "score.direction", "'lower_is_better'"),
    ],
)
def test_a_collection_recording_another_score_is_refused(tmp_path: Path, score: object, field: str, found: str) -> None:
    uri = _made(tmp_path, score)
    with pytest.raises(ValueError) as caught:
        MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    message = str(caught.value)
    assert message.startswith("Milvus collection 'c': ")
    assert f"field {field!r} is {found}; this library serves 'neg_kl' ('higher_is_better')" in message


def test_a_score_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    uri = _made(tmp_path, "neg_kl")
    with pytest.raises(ValueError, match="Milvus collection 'c': field 'score' must be a JSON object"):
        MilvusKLStore(uri=uri, index_type="flat", collection_name="c")


def test_a_collection_recording_no_score_attaches_and_searches(tmp_path: Path) -> None:
    uri = _made(tmp_path, ...)  # as a collection created before the field was written
    store = MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    try:
        assert [len(row) for row in store.search_batch(random_gaussians(2, K, seed=4), k=5)] == [5, 5]
    finally:
        store.close()
