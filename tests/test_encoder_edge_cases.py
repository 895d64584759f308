"""Encoder fixes of stop 38: position limits read from the backbone, thread-safe eval mode during encoding,
float32 variances of half-precision models, bare-string text checks, ONNX exports above ``max_tokens`` and
``init_variance`` checks. Tiny random models only (no download)."""

from __future__ import annotations

import copy
import logging
import math
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder, make_tokenizer
from kl_retrievers import GaussianEncoder, GaussianEncoderConfig
from kl_retrievers.encoder import _inverse_softplus


def _tiny_mpnet() -> GaussianEncoder:
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    cfg = MPNetConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=20,
        pad_token_id=0,
    )
    backbone = MPNetModel(cfg, add_pooling_layer=False)
    return GaussianEncoder(backbone, tokenizer, GaussianEncoderConfig(dim=8), name_or_path="tiny-mpnet").eval()


def test_mpnet_positions_after_padding_idx_are_clamped(caplog: pytest.LogCaptureFixture) -> None:
    enc = _tiny_mpnet()
    padding_idx = enc.backbone.embeddings.position_embeddings.padding_idx
    assert padding_idx is not None
    assert enc.max_tokens == 20 - (padding_idx + 1)
    text = "hello world " * 50
    ref = enc.encode_documents([text], max_length=enc.max_tokens)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        for asked in (19, 20):
            g = enc.encode_documents([text], max_length=asked)
            np.testing.assert_array_equal(g.mean, ref.mean)
            np.testing.assert_array_equal(g.var, ref.var)
    assert "max_length 19 is above" in caplog.text and "max_length 20 is above" in caplog.text


def test_bert_keeps_every_position() -> None:
    assert make_tiny_encoder().max_tokens == 128  # no padding_idx on BERT's position embeddings


def test_concurrent_encodings_of_a_training_encoder_run_in_eval_mode_and_restore_it() -> None:
    enc = make_tiny_encoder()  # BERT dropout 0.1
    texts = ["the cat sat on the mat", "a dog in the sun"] * 8
    ref = enc.encode_documents(texts, batch_size=2)
    enc.train()
    errors: list[float] = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(4):
            g = enc.encode_documents(texts, batch_size=2)
            errors.append(float(np.abs(g.mean - ref.mean).max()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 16
    assert max(errors) <= 1e-5
    assert enc.training and all(m.training for m in enc.modules())
    # No per-encoder state that would stop copies: a copy encodes in eval mode too and keeps its own mode.
    clone = pickle.loads(pickle.dumps(copy.deepcopy(enc)))
    assert clone.training
    np.testing.assert_allclose(clone.encode_documents(texts, batch_size=2).mean, ref.mean, atol=1e-5)
    assert clone.training


def test_float16_variances_stay_positive_with_a_tiny_floor() -> None:
    enc = make_tiny_encoder(var_floor=1e-10)
    with torch.no_grad():
        enc.var_head.bias.fill_(-40.0)
    enc.half()
    g = enc.encode_documents(["the cat", "a dog"])
    assert g.var.dtype == np.float32 and g.mean.dtype == np.float32
    assert (g.var > 0).all()
    assert np.allclose(g.var, 1e-10)
    batch = enc.tokenize(["the cat"], 16)
    with torch.no_grad():
        mean, var = enc(**batch)
    assert mean.dtype == torch.float16 and var.dtype == torch.float32


def test_a_bare_string_gets_the_lone_surrogate_check() -> None:
    enc = make_tiny_encoder()
    for fn in (enc.encode_queries, enc.encode_documents):
        with pytest.raises(ValueError) as from_list:
            fn(["\ud800"])
        with pytest.raises(ValueError) as from_str:
            fn("\ud800")
        assert str(from_str.value) == str(from_list.value)
        assert "lone surrogate" in str(from_str.value)


def test_onnx_export_of_an_encoder_whose_max_length_is_above_max_tokens(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import OnnxGaussianEncoder

    tiny = make_tiny_encoder()  # 128 positions
    base = tmp_path / "base"
    tiny.backbone.save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    enc = GaussianEncoder.from_backbone(base, dim=8, max_length=200)
    assert enc.max_tokens == 128 and enc.config.max_length == 200
    folder = enc.export_onnx(tmp_path / "onnx", quantize=None)
    onnx_enc = OnnxGaussianEncoder(folder)
    texts = ["the cat sat on the mat " * 40, "a dog"]
    want = enc.encode_documents(texts)  # max_length 200, clamped to 128
    got = onnx_enc.encode_documents(texts)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-4)
    np.testing.assert_allclose(got.var, want.var, atol=1e-4)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0, 1e-9, 1e39, "1.0", True])
def test_reset_heads_refuses_an_invalid_init_variance(bad: object) -> None:
    enc = make_tiny_encoder()
    with pytest.raises(ValueError, match=r"init_variance must be a finite number > var_floor \(1e-06\)") as err:
        enc.reset_heads(init_variance=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)


def test_from_backbone_refuses_an_invalid_init_variance(tmp_path: Path) -> None:
    tiny = make_tiny_encoder()
    tiny.backbone.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"init_variance must be a finite number .*; got inf"):
        GaussianEncoder.from_backbone(tmp_path, dim=8, init_variance=float("inf"))


@pytest.mark.parametrize(("beta", "init_variance"), [(1.0, 800.0), (10.0, 100.0), (1.0, 1e-5), (0.5, 1e30)])
def test_reset_heads_takes_large_and_small_variances(beta: float, init_variance: float) -> None:
    enc = make_tiny_encoder(beta=beta, var_floor=1e-9)
    enc.reset_heads(init_variance=init_variance)
    var = enc.encode_documents(["the cat", "a dog"]).var
    np.testing.assert_allclose(var, init_variance, rtol=1e-5)


def test_inverse_softplus_inverts_softplus() -> None:
    for beta in (0.5, 1.0, 10.0):
        for v in (1e-8, 1e-3, 1.0, 50.0, 800.0):
            x = _inverse_softplus(v, beta)
            assert math.isfinite(x)
            back = float(torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float64), beta=beta))
            assert back == pytest.approx(v, rel=1e-9)
