from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kl_retrievers.encoder as encoder_module
from conftest import WORDS, make_tiny_encoder
from kl_retrievers import GaussianEncoder, GaussianEncoderConfig, NotAnEncoderError
from kl_retrievers.encoder import VAR_TOKEN

TEXTS = ["the cat sat on the mat", "hello world", "a long text " * 3, "gaussian query", "sea"]


def test_encode_shapes_dtype_and_positive_variance(tiny_encoder: GaussianEncoder) -> None:
    g = tiny_encoder.encode_documents(TEXTS)
    assert g.mean.shape == (5, 8) and g.var.shape == (5, 8)
    assert g.mean.dtype == np.float32
    assert (g.var >= tiny_encoder.config.var_floor).all()
    assert np.isfinite(g.mean).all()
    t = tiny_encoder.encode_queries(TEXTS, convert_to="torch")
    assert isinstance(t.mean, torch.Tensor)


def test_batching_and_length_sorting_keep_input_order(tiny_encoder: GaussianEncoder) -> None:
    together = tiny_encoder.encode_documents(TEXTS, batch_size=2)
    for i, text in enumerate(TEXTS):
        alone = tiny_encoder.encode_documents([text])
        np.testing.assert_allclose(together.mean[i], alone.mean[0], atol=1e-5)
        np.testing.assert_allclose(together.var[i], alone.var[0], rtol=1e-5)


def test_var_token_added_after_cls(tiny_encoder: GaussianEncoder) -> None:
    tok = tiny_encoder.tokenizer
    assert VAR_TOKEN in tok.get_vocab()
    batch = tiny_encoder.tokenize(["hello world"], max_length=16)
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tok.cls_token_id and ids[1] == tiny_encoder.var_token_id and ids[-1] == tok.sep_token_id
    assert tiny_encoder.backbone.get_input_embeddings().num_embeddings == len(tok)


def test_variance_is_softplus_beta_of_var_head() -> None:
    enc = make_tiny_encoder(beta=2.5)
    batch = enc.tokenize(["hello world"], 16)
    with torch.no_grad():
        hidden = enc.backbone(**batch).last_hidden_state
        x = enc.var_head(hidden[:, 1])
        _, var = enc(**batch)
    expected = torch.log1p(torch.exp(2.5 * x)) / 2.5
    torch.testing.assert_close(var, expected.clamp_min(enc.config.var_floor))


def test_variance_floor_applies() -> None:
    enc = make_tiny_encoder(var_floor=0.5)
    with torch.no_grad():
        enc.var_head.bias.fill_(-50.0)
    g = enc.encode_queries(["hello"])
    assert np.allclose(g.var, 0.5)


def test_mean_pooling_ignores_var_token_and_padding() -> None:
    enc = make_tiny_encoder(pooling="mean")
    batch = enc.tokenize(["hello world", "the cat sat on the mat"], 16)
    with torch.no_grad():
        hidden = enc.backbone(**batch).last_hidden_state
        mean, _ = enc(**batch)
    mask = batch["attention_mask"][0].clone().float()
    mask[1] = 0  # the [VAR] position
    pooled = (hidden[0] * mask[:, None]).sum(0) / mask.sum()
    torch.testing.assert_close(mean[0], enc.mean_head(pooled))


def test_without_var_token_the_variance_reads_the_pooled_state() -> None:
    enc = make_tiny_encoder(var_token=False)
    assert enc.var_token_id is None
    ids = enc.tokenize(["hello"], 16)["input_ids"][0].tolist()
    assert enc.tokenizer.convert_tokens_to_ids(VAR_TOKEN) not in ids or VAR_TOKEN not in enc.tokenizer.get_vocab()
    assert enc.encode_documents(["hello"]).var.shape == (1, 8)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_and_whitespace_texts_encode(tiny_encoder: GaussianEncoder, text: str) -> None:
    g = tiny_encoder.encode_queries([text, "hello"])
    assert len(g) == 2 and np.isfinite(g.mean).all()


def test_long_texts_are_truncated(tiny_encoder: GaussianEncoder) -> None:
    long_text = "hello world " * 5000
    batch = tiny_encoder.tokenize([long_text], max_length=20)
    assert batch["input_ids"].shape[1] == 20
    g = tiny_encoder.encode_documents([long_text])  # default max_length 64 < 128 positions
    assert np.isfinite(g.mean).all()


def test_bad_inputs(tiny_encoder: GaussianEncoder) -> None:
    with pytest.raises(TypeError, match="got None"):
        tiny_encoder.encode_queries(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tiny_encoder.encode_documents(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        tiny_encoder.encode_documents(["ok"], batch_size=0)
    with pytest.raises(ValueError, match="convert_to"):
        tiny_encoder.encode_documents(["ok"], convert_to="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be"):
        tiny_encoder.encode_documents(["ok"], device="tpu")
    empty = tiny_encoder.encode_documents([])
    assert empty.mean.shape == (0, 8)
    single = tiny_encoder.encode_queries("hello")
    assert single.mean.shape == (1, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be"),
        ({"dim": 4, "beta": 0}, "beta must be"),
        ({"dim": 4, "pooling": "max"}, "pooling must be one of"),
        ({"dim": 4, "var_floor": 0.0}, "var_floor"),
        ({"dim": 4, "max_length": 2}, "max_length"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GaussianEncoderConfig(**kwargs)


def test_config_round_trip_keeps_unknown_keys() -> None:
    cfg = GaussianEncoderConfig(dim=4, beta=5.0)
    data = cfg.to_dict() | {"future_option": 1}
    again = GaussianEncoderConfig.from_dict(data)
    assert again.beta == 5.0 and again.extra["future_option"] == 1


def test_save_load_round_trip_is_bit_exact(tmp_path: Path, tiny_encoder: GaussianEncoder) -> None:
    out = tiny_encoder.save_pretrained(tmp_path / "enc")
    meta = json.loads((out / "config.json").read_text())
    assert meta["library"] == "kl_retrievers" and meta["score"] == {"name": "neg_kl", "direction": "higher_is_better"}
    assert "library_version" in meta and (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))
    loaded = GaussianEncoder.from_pretrained(out)
    a, b = tiny_encoder.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    g1, g2 = tiny_encoder.encode_documents(TEXTS), loaded.encode_documents(TEXTS)
    np.testing.assert_array_equal(g1.mean, g2.mean)
    np.testing.assert_array_equal(g1.var, g2.var)
    assert loaded.config == tiny_encoder.config


def test_delta_save_loads_on_top_of_its_backbone(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    # The "pinned backbone": the random BERT saved as a plain Hugging Face folder.
    base = tmp_path / "base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    # Re-create from that backbone (embedding resized and [VAR] row set), then change a head and one layer.
    fresh = GaussianEncoder.from_backbone(base, dim=8, max_length=64, query_max_length=32)
    with torch.no_grad():
        fresh.mean_head.weight.add_(0.1)
        fresh.backbone.encoder.layer[1].output.dense.bias.add_(0.05)
        fresh.backbone.get_input_embeddings().weight[fresh.var_token_id].add_(0.2)
    out = fresh.save_pretrained(tmp_path / "delta", include_backbone=False)
    from safetensors.torch import load_file

    delta = load_file(out / "delta.safetensors")
    assert "var_token_embedding" in delta
    assert "backbone.encoder.layer.1.output.dense.bias" in delta
    assert "backbone.encoder.layer.0.output.dense.bias" not in delta  # unchanged tensors are not stored
    loaded = GaussianEncoder.from_pretrained(out)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_delta_refuses_a_different_backbone(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    base = tmp_path / "base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    fresh = GaussianEncoder.from_backbone(base, dim=8, max_length=64, query_max_length=32)
    out = fresh.save_pretrained(tmp_path / "delta", include_backbone=False)
    make_tiny_encoder(seed=1).backbone.save_pretrained(base)  # the backbone changes under it
    with pytest.raises(NotAnEncoderError, match="SHA-256"):
        GaussianEncoder.from_pretrained(out)


def test_loading_a_plain_folder_or_garbage_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(NotAnEncoderError, match="config.json is missing"):
        GaussianEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(NotAnEncoderError, match="from_backbone"):
        GaussianEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(NotAnEncoderError, match="not valid JSON"):
        GaussianEncoder.from_pretrained(tmp_path)


def test_missing_weights_fail_clearly(tmp_path: Path, tiny_encoder: GaussianEncoder) -> None:
    out = tiny_encoder.save_pretrained(tmp_path / "enc")
    (out / "model.safetensors").unlink()
    with pytest.raises(NotAnEncoderError, match="missing its weights"):
        GaussianEncoder.from_pretrained(out)


def test_newer_version_warns_and_newer_format_refuses(tmp_path: Path, tiny_encoder: GaussianEncoder) -> None:
    out = tiny_encoder.save_pretrained(tmp_path / "enc")
    meta = json.loads((out / "config.json").read_text())
    meta["library_version"] = "999.0.0"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="newer"):
        GaussianEncoder.from_pretrained(out)
    meta["format_version"] = 99
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version"):
        GaussianEncoder.from_pretrained(out)


def test_interrupted_save_keeps_the_previous_copy(
    tmp_path: Path, tiny_encoder: GaussianEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tiny_encoder.save_pretrained(tmp_path / "enc")
    before = (out / "model.safetensors").read_bytes()
    other = make_tiny_encoder(seed=3)

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(encoder_module, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temporary folder left behind
    GaussianEncoder.from_pretrained(out)


def test_identity_heads_start_at_constant_variance() -> None:
    enc = make_tiny_encoder(dim=32)
    enc.reset_heads(init_variance=2.0, identity_mean=True)
    batch = enc.tokenize(["hello world"], 16)
    with torch.no_grad():
        mean, var = enc(**batch)
        pooled = enc.backbone(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(mean, pooled)
    assert torch.allclose(var, torch.full_like(var, 2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="identity_mean needs"):
        make_tiny_encoder(dim=8).reset_heads(identity_mean=True)
    with pytest.raises(ValueError, match="init_variance"):
        enc.reset_heads(init_variance=-1.0)
    assert math.isclose(float(var.mean()), 2.0, rel_tol=1e-5)


def test_threads_with_different_token_budgets_get_their_own() -> None:
    """A fast tokenizer keeps its truncation setting in shared state: concurrent calls must not swap budgets."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    enc = make_tiny_encoder()
    enc.eval()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(2, 60)))) for _ in range(32)]
    budgets = (8, 16, 32, 64)
    ref = {b: enc.encode_documents(texts, max_length=b).mean for b in budgets}
    wrong: list[int] = []

    def work(seed: int) -> int:
        r, calls, end = np.random.default_rng(seed), 0, time.monotonic() + 4.0
        while time.monotonic() < end:
            b = int(r.choice(budgets))
            if not np.allclose(enc.encode_documents(texts, max_length=b).mean, ref[b], atol=1e-5):
                wrong.append(b)
            calls += 1
        return calls

    with ThreadPoolExecutor(4) as pool:
        calls = sum(f.result(timeout=120) for f in [pool.submit(work, s) for s in range(4)])
    assert calls > 20 and wrong == []
