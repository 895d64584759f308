"""A saved encoder's artifacts are checked: its backbone pin (also sharded or .bin backbones), its tokenizer files
(recorded SHA-256, damaged files named), the names ``extra_files`` may take, ``~`` in save paths, and a blank
``KL_RETRIEVERS_CACHE``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder, make_tokenizer
from kl_retrievers import GaussianEncoder, NotAnEncoderError
from kl_retrievers.encoding_cache import CACHE_ENV, default_cache_dir


def _write_backbone(folder: Path, seed: int, form: str = "single") -> None:
    """A tiny random BERT backbone folder (weights and tokenizer), as transformers saves it: one
    ``model.safetensors`` (``form="single"``), shards (``"sharded"``) or ``pytorch_model.bin`` (``"bin"``)."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    if form == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
    else:
        model.save_pretrained(folder)
    tok.save_pretrained(folder)  # type: ignore[attr-defined]
    if form == "bin":  # a PyTorch checkpoint (transformers now always writes safetensors)
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()


def _delta_over(backbone: Path, out: Path) -> GaussianEncoder:
    enc = GaussianEncoder.from_backbone(str(backbone), dim=8, pooling="cls")
    enc.save_pretrained(out, include_backbone=False)
    return enc


# ------------------------------------------------------------------ 1. backbone pins
def test_single_file_pin_refuses_a_backbone_resaved_as_shards(tmp_path: Path) -> None:
    bb = tmp_path / "bb"
    _write_backbone(bb, seed=0)
    enc = _delta_over(bb, tmp_path / "enc")
    assert enc.config.backbone_sha256 is not None
    shutil.rmtree(bb)
    _write_backbone(bb, seed=1, form="sharded")  # other weights, no model.safetensors
    assert not (bb / "model.safetensors").exists()
    with pytest.raises(NotAnEncoderError, match="backbone_sha256") as info:
        GaussianEncoder.from_pretrained(tmp_path / "enc")
    assert str(bb) in str(info.value) and enc.config.backbone_sha256 in str(info.value)


@pytest.mark.parametrize("form", ["sharded", "bin"])
def test_sharded_or_bin_backbone_is_pinned_and_checked(tmp_path: Path, form: str) -> None:
    bb = tmp_path / "bb"
    _write_backbone(bb, seed=0, form=form)
    assert not (bb / "model.safetensors").exists()
    enc = _delta_over(bb, tmp_path / "enc")
    pin = enc.config.backbone_sha256
    assert isinstance(pin, str) and len(pin) == 64
    # the same backbone loads, with the same outputs
    again = GaussianEncoder.from_pretrained(tmp_path / "enc")
    texts = ["the cat sat on the mat"]
    np.testing.assert_array_equal(enc.encode_documents(texts).mean, again.encode_documents(texts).mean)
    shutil.rmtree(bb)
    _write_backbone(bb, seed=1, form=form)  # same name and form, other weights
    with pytest.raises(NotAnEncoderError, match="backbone_sha256") as info:
        GaussianEncoder.from_pretrained(tmp_path / "enc")
    assert pin in str(info.value) and str(bb) in str(info.value)


def test_pin_refuses_a_backbone_without_weight_files(tmp_path: Path) -> None:
    bb = tmp_path / "bb"
    _write_backbone(bb, seed=0)
    _delta_over(bb, tmp_path / "enc")
    (bb / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(NotAnEncoderError, match="no weights that can be checked") as info:
        GaussianEncoder.from_pretrained(tmp_path / "enc")
    assert str(bb) in str(info.value)


# ------------------------------------------------------------------ 3. tokenizer SHA-256
def _swap_two_vocab_entries(tokenizer_json: Path) -> None:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    tokenizer_json.write_text(json.dumps(data), encoding="utf-8")


def test_saved_tokenizer_edit_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    assert "tokenizer.json" in meta["tokenizer_sha256"]
    GaussianEncoder.from_pretrained(folder)  # unchanged: loads
    _swap_two_vocab_entries(folder / "tokenizer.json")
    with pytest.raises(NotAnEncoderError, match="tokenizer.json") as info:
        GaussianEncoder.from_pretrained(folder)
    assert meta["tokenizer_sha256"]["tokenizer.json"] in str(info.value)


def test_folder_without_tokenizer_record_still_loads(tmp_path: Path) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta.pop("tokenizer_sha256", None)  # as saved before the record existed
    (folder / "config.json").write_text(json.dumps(meta))
    assert GaussianEncoder.from_pretrained(folder).config.dim == 8


def test_onnx_export_tokenizer_edit_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError

    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "m")
    export = enc.export_onnx(tmp_path / "onnx", quantize=None)
    assert "tokenizer.json" in json.loads((export / "config.json").read_text())["tokenizer_sha256"]
    OnnxGaussianEncoder(export)  # unchanged: loads
    _swap_two_vocab_entries(export / "tokenizer.json")
    with pytest.raises(OnnxModelError, match="tokenizer.json"):
        OnnxGaussianEncoder(export)


# ------------------------------------------------------------------ 4. damaged tokenizer files named
@pytest.mark.parametrize(
    ("name", "content"),
    [("tokenizer_config.json", '{\n  "a'), ("tokenizer_config.json", "[1, 2]"), ("tokenizer.json", "{}")],
)
def test_damaged_tokenizer_file_is_named(tmp_path: Path, name: str, content: str) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta.pop("tokenizer_sha256", None)  # an older folder: the load itself must name the file
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / name).write_text(content)
    with pytest.raises(NotAnEncoderError) as info:
        GaussianEncoder.from_pretrained(folder)
    assert str(folder) in str(info.value) and "tokenizer" in str(info.value)
    if name == "tokenizer_config.json":
        assert str(folder / name) in str(info.value)


# ------------------------------------------------------------------ 5. extra_files names
@pytest.mark.parametrize(
    "name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "delta.safetensors"]
)
def test_extra_files_refuse_names_the_save_writes(tmp_path: Path, name: str) -> None:
    enc = make_tiny_encoder()
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        enc.save_pretrained(tmp_path / "m", extra_files={name: "x"})
    assert not (tmp_path / "m").exists()
    enc.save_pretrained(tmp_path / "m", extra_files={"README.md": "card"})
    assert (tmp_path / "m" / "README.md").read_text() == "card"


# ------------------------------------------------------------------ 6. ~ in save paths
def test_save_pretrained_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = make_tiny_encoder().save_pretrained("~/enc")
    assert out == tmp_path / "home" / "enc"
    assert (tmp_path / "home" / "enc" / "config.json").is_file()
    assert not (tmp_path / "~").exists()


# ------------------------------------------------------------------ 8. blank cache variable
@pytest.mark.parametrize("value", ["", " ", "  \t"])
def test_blank_cache_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(CACHE_ENV, value)
    assert default_cache_dir() == tmp_path / "xdg" / "kl_retrievers" / "encodings"


@pytest.mark.parametrize("value", ["", " "])
def test_blank_cache_variable_counts_as_unset_for_training_features(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    from kl_retrievers.training.features import CACHE_ENV as FEATURES_ENV
    from kl_retrievers.training.features import default_feature_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(FEATURES_ENV, value)
    assert default_feature_cache_dir() == tmp_path / "xdg" / "kl_retrievers" / "features"


def test_export_onnx_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import export_onnx

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    enc = make_tiny_encoder()
    enc.save_pretrained(tmp_path / "src")
    out = export_onnx(GaussianEncoder.from_pretrained(tmp_path / "src"), "~/exp", quantize=None, verify=False)
    assert out == tmp_path / "home" / "exp"
    assert (tmp_path / "home" / "exp" / "model.onnx").is_file()
    assert not (tmp_path / "~").exists()
