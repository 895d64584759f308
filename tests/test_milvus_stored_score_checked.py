"""A Milvus collection's config records the score it serves (``"score": {"name", "direction"}``), and a client
attaching to one that records another score refuses it, as every other saved format does
(:func:`kl_retrievers._score.check_score`); a collection whose config records no score (created before the field
was written) attaches as before.

Every collection has recorded both parts of its ``score`` since the field was written, so a score with only a name
(``{"name": "neg_kl"}``) is an edited or foreign config: it attached silently, where a ``KLStore``'s
``config.json`` is refused without either field (:func:`kl_retrievers._score.check_score_fields` with
``required=True``); it is refused too.
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
        ({"name": "neg_kl"}, "score.direction", "missing"),
        ({"direction": "higher_is_better"}, "score.name", "missing"),
        ({}, "score.name", "missing"),
    ],
)
def test_a_collection_recording_another_or_a_partial_score_is_refused(
    tmp_path: Path, score: object, field: str, found: str
) -> None:
    uri = _made(tmp_path, score)
    with pytest.raises(ValueError) as caught:
        MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    assert str(caught.value) == (
        f"Milvus collection 'c': field {field!r} is {found}; this library serves 'neg_kl' ('higher_is_better')"
    )


def test_a_score_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    uri = _made(tmp_path, "neg_kl")
    with pytest.raises(ValueError, match="Milvus collection 'c': field 'score' must be a JSON object"):
        MilvusKLStore(uri=uri, index_type="flat", collection_name="c")


@pytest.mark.parametrize(
    "score",
    [..., {"name": "neg_kl", "direction": "higher_is_better"}],  # ...: created before the field was written
    ids=["no-score", "complete-score"],
)
def test_a_collection_recording_no_score_or_a_complete_one_attaches_and_searches(tmp_path: Path, score: object) -> None:
    uri = _made(tmp_path, score)
    store = MilvusKLStore(uri=uri, index_type="flat", collection_name="c")
    try:
        assert len(store.search(random_gaussians(1, K, seed=2), k=3)) == 3
        assert [len(row) for row in store.search_batch(random_gaussians(2, K, seed=4), k=5)] == [5, 5]
    finally:
        store.close()
