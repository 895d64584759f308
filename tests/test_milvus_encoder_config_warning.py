"""A Milvus collection records its documents' encoder config and tokenizer SHA-256, as a KLStore does, and a client
attaching with the same weights but another pooling / beta / token budget / query prefix or tokenizer is warned
(:func:`kl_retrievers.store._format.warn_if_other_weights` with ``config`` and ``tokenizer``). Collections created
before those fields were recorded attach as before, compared by weights and backbone alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import IDENTITY_IDS, IDENTITY_TEXTS, make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.store._format import encoder_tokenizer

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from kl_retrievers.store import milvus as milvus_mod
from kl_retrievers.store.milvus import MilvusKLStore

QUERIES = ("bees dance", "yeast")


def model_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings that the collection's documents were encoded with another model or settings."""
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "was indexed with" in r.getMessage()
    ]


def _config(store: MilvusKLStore) -> dict[str, object]:
    """The kl-retrievers config the collection stores."""
    raw = store.client.describe_collection(store.collection_name)["properties"][milvus_mod._CONFIG_KEY]
    return dict(json.loads(raw))


def _indexed(tmp_path: Path, metric: str = "IP") -> tuple[str, GaussianEncoder]:
    """A flat collection indexed with a saved tiny encoder (pooling 'cls'); its URI and the encoder."""
    make_tiny_encoder().save_pretrained(tmp_path / "model")
    first = GaussianEncoder.from_pretrained(tmp_path / "model")
    uri = str(tmp_path / "kl.db")
    store = MilvusKLStore(first, uri=uri, index_type="flat", metric=metric)
    store.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)
    store.close()
    return uri, first


def _reconfigured(tmp_path: Path) -> GaussianEncoder:
    """The same weights re-saved (into another folder) with pooling 'mean'."""
    again = GaussianEncoder.from_pretrained(tmp_path / "model")
    again.config.pooling = "mean"
    again.save_pretrained(tmp_path / "mean")
    return GaussianEncoder.from_pretrained(tmp_path / "mean")


def test_the_collection_records_the_encoder_config_and_tokenizer(tmp_path: Path) -> None:
    uri, first = _indexed(tmp_path)
    store = MilvusKLStore(first, uri=uri, index_type="flat")
    config = _config(store)
    store.close()
    assert config["encoder_weights_sha256"] == first.weights_sha256
    assert config["encoder_config"] == first.config.to_dict()
    assert config["encoder_tokenizer_identity_sha256"] == encoder_tokenizer(first)


def test_same_weights_with_another_pooling_warns_naming_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, _ = _indexed(tmp_path)
    other = _reconfigured(tmp_path)
    assert other.weights_sha256 == GaussianEncoder.from_pretrained(tmp_path / "model").weights_sha256
    caplog.set_level(logging.WARNING)
    MilvusKLStore(other, uri=uri, index_type="flat").close()
    warned = model_warnings(caplog)
    assert len(warned) == 1
    assert "Milvus collection 'kl_retrievers'" in warned[0] and "pooling 'cls' vs 'mean'" in warned[0]
    caplog.clear()
    MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"), uri=uri, index_type="flat"
    ).close()  # the recorded settings
    assert model_warnings(caplog) == []


def test_same_weights_behind_another_tokenizer_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, first = _indexed(tmp_path)
    other = GaussianEncoder.from_pretrained(tmp_path / "model")
    other.tokenizer.add_tokens(["zebra"])  # another vocabulary, the same weights
    assert other.weights_sha256 == first.weights_sha256
    assert encoder_tokenizer(other) != encoder_tokenizer(first)
    caplog.set_level(logging.WARNING)
    MilvusKLStore(other, uri=uri, index_type="flat").close()
    warned = model_warnings(caplog)
    assert len(warned) == 1 and "tokenizer (vocabulary, normalisation, added tokens) SHA-256" in warned[0]


def test_a_collection_created_before_the_record_attaches_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, first = _indexed(tmp_path)
    store = MilvusKLStore(first, uri=uri, index_type="flat")
    config = _config(store)
    del config["encoder_config"], config["encoder_tokenizer_identity_sha256"]  # as written before 2026-12-06
    store.client.alter_collection_properties(
        store.collection_name, properties={milvus_mod._CONFIG_KEY: json.dumps(config)}
    )
    store.close()
    caplog.set_level(logging.WARNING)
    old = MilvusKLStore(_reconfigured(tmp_path), uri=uri, index_type="flat")
    assert model_warnings(caplog) == []  # nothing recorded to compare with
    old.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])
    assert old._config()["encoder_config"] is None  # what a later publication writes: still no record
    old.close()
    reader = MilvusKLStore(first, uri=uri, index_type="flat")
    assert sorted(h.id for h in reader.search(QUERIES[0], k=10)) == IDENTITY_IDS
    config = _config(reader)
    reader.close()
    assert config.get("encoder_config") is None and config.get("encoder_tokenizer_identity_sha256") is None
    assert model_warnings(caplog) == []


@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_an_emptied_collection_takes_the_config_of_the_client_that_refills_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metric: str
) -> None:
    uri, _ = _indexed(tmp_path, metric)
    other = _reconfigured(tmp_path)
    caplog.set_level(logging.WARNING)
    refill = MilvusKLStore(other, uri=uri, index_type="flat", metric=metric)
    assert len(model_warnings(caplog)) == 1
    refill.add(IDENTITY_TEXTS[:1], ids=IDENTITY_IDS[:1])  # not empty: the record stays the first model's
    assert _config(refill)["encoder_config"] == GaussianEncoder.from_pretrained(tmp_path / "model").config.to_dict()
    refill.delete(IDENTITY_IDS)
    refill.add(IDENTITY_TEXTS, ids=IDENTITY_IDS)  # re-indexed with the reconfigured model
    assert _config(refill)["encoder_config"] == other.config.to_dict()
    refill.close()
    caplog.clear()
    MilvusKLStore(GaussianEncoder.from_pretrained(tmp_path / "mean"), uri=uri, index_type="flat", metric=metric).close()
    assert model_warnings(caplog) == []
    MilvusKLStore(
        GaussianEncoder.from_pretrained(tmp_path / "model"), uri=uri, index_type="flat", metric=metric
    ).close()
    assert len(model_warnings(caplog)) == 1  # the first settings are now the other ones
