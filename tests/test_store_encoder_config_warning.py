"""A store's weights check also compares the output-relevant encoder config it records (same weights, other
pooling / beta / query prefix ...): :func:`kl_retrievers.store._format.warn_if_other_weights` with ``config``."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.store._format import config_differences, warn_if_other_weights


def _reconfigured(tmp_path: Path) -> tuple[dict[str, object], GaussianEncoder]:
    """The config a store recorded for a saved encoder, and the same weights re-saved with other settings."""
    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "X")
    first = GaussianEncoder.from_pretrained(tmp_path / "X")
    recorded = first.config.to_dict()
    first.config.pooling = "mean"
    first.config.beta = 5.0
    first.config.extra["query_prefix"] = "query: "
    first.save_pretrained(tmp_path / "X")
    return recorded, GaussianEncoder.from_pretrained(tmp_path / "X")


def test_same_weights_other_config_warns_naming_the_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorded, now = _reconfigured(tmp_path)
    weights = now.weights_sha256
    assert isinstance(weights, str)  # the re-save kept the identity: the weights are the same
    log = logging.getLogger("test.store")
    with caplog.at_level(logging.WARNING, logger="test.store"):
        assert warn_if_other_weights(weights, now, "the store at /s", log, config=recorded)
    message = " ".join(r.getMessage() for r in caplog.records)
    for field in ("pooling 'cls' vs 'mean'", "beta 1.0 vs 5.0", "query_prefix '' vs 'query: '"):
        assert field in message
    assert "the store at /s" in message


def test_same_config_or_unknown_config_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "X")
    loaded = GaussianEncoder.from_pretrained(tmp_path / "X")
    weights = loaded.weights_sha256
    with caplog.at_level(logging.WARNING):
        assert not warn_if_other_weights(weights, loaded, "s", config=loaded.config.to_dict())
        assert not warn_if_other_weights(weights, loaded, "s", config=None)
        assert not warn_if_other_weights(weights, loaded, "s")
    assert not caplog.records


def test_onnx_record_is_compared_by_its_source_config(tmp_path: Path) -> None:
    recorded, now = _reconfigured(tmp_path)
    onnx_record = {"backend": "onnx", "dim": 8, "encoder": recorded}
    assert "pooling 'cls' vs 'mean'" in config_differences(onnx_record, now)
    assert config_differences({"backend": "onnx", "encoder": now.config.to_dict()}, now) == []


def test_klstore_load_with_the_reconfigured_encoder_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.index import KLStore

    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "X")
    enc.save_pretrained(tmp_path / "Y")
    first = GaussianEncoder.from_pretrained(tmp_path / "X")
    store = KLStore(first)
    store.add(["alpha beta", "gamma delta"], ids=["a", "b"])
    store.save(tmp_path / "store")
    first.config.pooling = "mean"
    first.save_pretrained(tmp_path / "X")
    again = GaussianEncoder.from_pretrained(tmp_path / "X")
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "store", encoder=again)
    assert "pooling 'cls' vs 'mean'" in " ".join(r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the settings the documents were encoded with: nothing to say
        KLStore.load(tmp_path / "store", encoder=GaussianEncoder.from_pretrained(tmp_path / "Y"))
    assert "pooling" not in " ".join(r.getMessage() for r in caplog.records)


def test_a_recorded_tokenizer_is_compared_when_both_are_known(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.store._format import encoder_tokenizer

    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "X")
    loaded = GaussianEncoder.from_pretrained(tmp_path / "X")
    weights, own = loaded.weights_sha256, encoder_tokenizer(loaded)
    assert isinstance(own, str) and len(own) == 64
    with caplog.at_level(logging.WARNING):
        assert not warn_if_other_weights(weights, loaded, "s", tokenizer=own)
        assert not warn_if_other_weights(weights, loaded, "s", tokenizer=None)  # not recorded: not compared
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert warn_if_other_weights(weights, loaded, "the store at /s", tokenizer="0" * 64)
    assert f"tokenizer (vocabulary, normalisation, added tokens) SHA-256 {'0' * 16}... vs {own[:16]}..." in (
        caplog.records[-1].getMessage()
    )


def test_an_onnx_config_is_compared_by_its_own_token_budgets(tmp_path: Path) -> None:
    recorded, _ = _reconfigured(tmp_path)
    source = {**recorded, "max_length": 40, "query_max_length": 12}

    onnx_config = {"backend": "onnx", "dim": 8, "max_length": 5, "query_max_length": 12, "encoder": source}
    onnx = SimpleNamespace(config=onnx_config)

    # the export-time section says 40; the ONNX encoder encodes documents with its own max_length, 5
    assert config_differences(source, onnx) == ["max_length 40 vs 5"]
    assert config_differences(onnx_config, onnx) == []
    assert config_differences({**onnx_config, "max_length": 40}, onnx) == ["max_length 40 vs 5"]
