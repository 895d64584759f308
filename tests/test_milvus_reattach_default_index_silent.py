"""Reattaching to a Milvus collection with the constructor's default index (``index_type="hnsw"``, no compression)
adopts the collection's index without a warning: the caller asked for none (probe P3: every plain reopen of a flat
collection warned "this client asked for index_type='hnsw'"). An index the caller did give still warns, as the
build settings (``hnsw_m``, ``ef_construction``, ``nlist``) already did."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kl_retrievers.store.milvus import MilvusKLStore

LOGGER = "kl_retrievers.store.milvus"
ASKED = "this client asked for"


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ASKED in r.getMessage()]


def test_reattaching_with_the_default_index_adopts_the_collections_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made = MilvusKLStore(uri=str(tmp_path / "kl.db"), collection_name="flat", index_type="flat", dim=4)
    try:
        client = made.client
        MilvusKLStore(client=client, collection_name="sq8", index_type="hnsw", compression="sq8", dim=4)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            flat = MilvusKLStore(client=client, collection_name="flat")  # nothing asked: the collection's index
            sq8 = MilvusKLStore(client=client, collection_name="sq8")
            same = MilvusKLStore(client=client, collection_name="sq8", compression="sq8")  # what it has
        assert flat.index_type == "flat" and (sq8.index_type, sq8.compression) == ("hnsw", "sq8")
        assert (same.index_type, same.compression) == ("hnsw", "sq8")
        assert _warned(caplog) == []
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            asked = MilvusKLStore(client=client, collection_name="flat", index_type="ivf")
            compressed = MilvusKLStore(client=client, collection_name="flat", compression="sq8")
        assert asked.index_type == compressed.index_type == "flat" and compressed.compression is None
        messages = _warned(caplog)
        assert len(messages) == 2, messages
        assert "index_type='ivf', compression=None" in messages[0]
        assert "index_type='hnsw', compression='sq8'" in messages[1]
    finally:
        made.close()
