"""A KLStore remembers how its documents were encoded: weights, output-relevant config and tokenizer.

A save keeps the documents' record when the attached encoder encodes otherwise (the same weights re-saved with
another pooling, or behind another tokenizer), so the next load still warns; the tokenizer's SHA-256 is recorded
and compared; an ONNX encoder is compared by the token budgets it uses now; the model a store loads lazily (no
``encoder=``) is compared by config too; and another name for the very same model is not warned about.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import BertTokenizer

from conftest import WORDS, make_tiny_encoder
from kl_retrievers import GaussianEncoder
from kl_retrievers.index import KLStore
from kl_retrievers.store._format import TOKENIZER_FIELD, encoder_tokenizer

TEXTS = ["the cat sat on the mat", "a dog in the sun", "green tea and bread"]
IDS = ["a", "b", "c"]


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    """The warnings the package logged (not, e.g., onnxruntime's during an export)."""
    return " ".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("kl_retrievers")
    )


def _record(folder: Path) -> dict[str, object]:
    record = json.loads((folder / "config.json").read_text(encoding="utf-8"))["encoder"]
    assert isinstance(record, dict)
    return record


def _indexed(tmp_path: Path) -> GaussianEncoder:
    """A store at tmp_path/store indexed with the model folder tmp_path/X (CLS pooling); that model, loaded."""
    make_tiny_encoder().save_pretrained(tmp_path / "X")
    first = GaussianEncoder.from_pretrained(tmp_path / "X")
    store = KLStore(first)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "store")
    return first


def _resaved_with_mean_pooling(tmp_path: Path) -> GaussianEncoder:
    first = _indexed(tmp_path)
    first.config.pooling = "mean"
    first.save_pretrained(tmp_path / "X")
    return GaussianEncoder.from_pretrained(tmp_path / "X")


@pytest.mark.parametrize("add_more", [False, True])
def test_a_save_with_a_reconfigured_encoder_keeps_the_documents_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, add_more: bool
) -> None:
    again = _resaved_with_mean_pooling(tmp_path)
    assert again.weights_sha256 == _record(tmp_path / "store")["weights_sha256"]  # the same weights
    store = KLStore.load(tmp_path / "store", encoder=again)
    if add_more:  # a mixed store: the first documents are still CLS-encoded
        store.add(["black rock and water"], ids=["d"])
    store.save(tmp_path / "resaved")
    config = _record(tmp_path / "resaved")["config"]
    assert isinstance(config, dict) and config["pooling"] == "cls"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "resaved", encoder=again)
    assert "pooling 'cls' vs 'mean'" in _messages(caplog)


def test_the_same_encoder_records_its_own_config_on_resave(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = _indexed(tmp_path)
    KLStore.load(tmp_path / "store", encoder=first).save(tmp_path / "resaved")
    assert _record(tmp_path / "resaved") == _record(tmp_path / "store")
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "resaved", encoder=GaussianEncoder.from_pretrained(tmp_path / "X"))
    assert _messages(caplog) == ""


def _swap_vocabulary(encoder: GaussianEncoder, folder: Path) -> GaussianEncoder:
    """``encoder``'s weights saved to ``folder`` behind a tokenizer with two vocabulary entries swapped."""
    words = list(WORDS)
    i, j = words.index("cat"), words.index("tea")
    words[i], words[j] = words[j], words[i]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    encoder.tokenizer = BertTokenizer(vocab={t: k for k, t in enumerate(vocab)})
    encoder.save_pretrained(folder)
    return GaussianEncoder.from_pretrained(folder)


def test_another_tokenizer_with_the_same_weights_warns_and_the_record_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _indexed(tmp_path)
    recorded = _record(tmp_path / "store")[TOKENIZER_FIELD]
    assert isinstance(recorded, str) and recorded == encoder_tokenizer(first)
    swapped = _swap_vocabulary(first, tmp_path / "X")
    assert swapped.weights_sha256 == _record(tmp_path / "store")["weights_sha256"]
    with caplog.at_level(logging.WARNING):
        store = KLStore.load(tmp_path / "store", encoder=swapped)
    assert "tokenizer (vocabulary, normalisation, added tokens) SHA-256" in _messages(caplog)
    store.save(tmp_path / "resaved")  # the documents' tokenizer stays recorded
    assert _record(tmp_path / "resaved")[TOKENIZER_FIELD] == recorded
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "resaved", encoder=swapped)
    assert "tokenizer (vocabulary" in _messages(caplog)


def test_an_onnx_encoder_is_compared_by_the_token_budget_it_uses_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    enc = make_tiny_encoder()
    enc.config.max_length = 40
    enc.save_pretrained(tmp_path / "t")
    export_onnx(GaussianEncoder.from_pretrained(tmp_path / "t"), tmp_path / "o", quantize=None)
    onnx = OnnxGaussianEncoder(tmp_path / "o")
    store = KLStore(onnx)
    store.add(TEXTS, ids=IDS)
    store.save(tmp_path / "store")
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "store", encoder=onnx)
    assert _messages(caplog) == ""
    onnx.config.max_length = 5  # what its documents' encodings now use (its export-time record says 40)
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "store", encoder=onnx)
    assert "max_length 40 vs 5" in _messages(caplog)


def test_the_model_loaded_lazily_by_name_is_compared_by_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _resaved_with_mean_pooling(tmp_path)  # the recorded name, tmp_path/X, now holds a mean-pooling config
    store = KLStore.load(tmp_path / "store")
    assert store.encoder is None
    with caplog.at_level(logging.WARNING):
        store.search("cat", k=1)  # loads tmp_path/X now
    assert store.encoder is not None
    assert "pooling 'cls' vs 'mean'" in _messages(caplog)


def test_another_name_for_the_same_model_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = _indexed(tmp_path)
    first.save_pretrained(tmp_path / "copy")  # the same weights, config and tokenizer under another path
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "store", encoder=GaussianEncoder.from_pretrained(tmp_path / "copy"))
    assert _messages(caplog) == ""
    make_tiny_encoder(seed=1).save_pretrained(tmp_path / "other")  # another model: other weights
    with caplog.at_level(logging.WARNING):
        KLStore.load(tmp_path / "store", encoder=GaussianEncoder.from_pretrained(tmp_path / "other"))
    assert "was built with encoder" in _messages(caplog)
    caplog.clear()
    cfg = tmp_path / "store" / "config.json"  # a store saved before the tokenizer was recorded: the name still counts
    config = json.loads(cfg.read_text())
    del config["encoder"][TOKENIZER_FIELD]
    cfg.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        KLStore.load(
            tmp_path / "store", encoder=GaussianEncoder.from_pretrained(tmp_path / "copy"), verify_checksums=False
        )
    assert "was built with encoder" in _messages(caplog)


def test_a_document_budget_difference_alone_says_searches_are_unaffected(caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.store._format import warn_if_other_weights

    own = {"dim": 8, "pooling": "mean", "beta": 1.0, "max_length": 64, "query_max_length": 32}

    class Enc:
        weights_sha256 = "a" * 64
        config = own

    recorded = dict(own, max_length=120)
    with caplog.at_level(logging.WARNING):
        assert warn_if_other_weights("a" * 64, Enc(), "the store at /s", config=recorded)
    assert "searches are unaffected" in caplog.text and "max_length 120 vs 64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_if_other_weights("a" * 64, Enc(), "the store at /s", config=dict(recorded, query_max_length=16))
    assert "search results will be wrong" in caplog.text
