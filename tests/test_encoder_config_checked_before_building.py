"""A saved encoder folder's ``config.json`` is checked against its weights file before the model is built.

``GaussianEncoder.from_pretrained`` builds the backbone from ``backbone_config``: a 100 KB folder whose config claims
``vocab_size=4_000_000`` had the whole model (1.4 GB) built and initialised before the weights' shapes refused it.
The tensor names and shapes are now compared on a model built on the meta device (nothing allocated), a layer
count above the file's number of tensors is refused before any module is built, and a config that cannot be
built at all (a negative size: a ``RuntimeError`` from torch) is a ``NotAnEncoderError`` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

import kl_retrievers.encoder as encoder_module
from conftest import make_tiny_encoder
from kl_retrievers.encoder import GaussianEncoder, NotAnEncoderError


def _saved(tmp_path: Path, **backbone_config: Any) -> Path:
    """A tiny saved encoder whose ``backbone_config`` is then given ``backbone_config``'s values."""
    folder = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["backbone_config"].update(backbone_config)
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def _record_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the device of each backbone built from a config; one built anywhere but on meta fails the test
    (before it allocates what the config claims)."""
    devices: list[str] = []
    build = encoder_module._backbone_from_config

    def recording(config_dict: dict[str, Any]) -> Any:
        device = torch.get_default_device().type
        devices.append(device)
        claimed = {k: config_dict.get(k, 0) for k in ("vocab_size", "num_hidden_layers")}
        if device != "meta" and (claimed["vocab_size"] > 10_000 or claimed["num_hidden_layers"] > 100):
            pytest.fail(f"a backbone of {claimed} was built on {device} before any check")
        return build(config_dict)

    monkeypatch.setattr(encoder_module, "_backbone_from_config", recording)
    return devices


@pytest.mark.parametrize("hidden_size", [32, 64])
def test_a_config_claiming_a_far_larger_backbone_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hidden_size: int
) -> None:
    folder = _saved(tmp_path, vocab_size=4_000_000, hidden_size=hidden_size)
    devices = _record_builds(monkeypatch)
    with pytest.raises(NotAnEncoderError, match=r"model\.safetensors: tensor backbone\..* has shape") as info:
        GaussianEncoder.from_pretrained(folder)
    assert "backbone_config" in str(info.value)
    assert devices == ["meta"]


def test_a_config_counting_more_layers_than_the_file_holds_tensors_is_refused_unbuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _saved(tmp_path, num_hidden_layers=1_000_000)
    devices = _record_builds(monkeypatch)
    with pytest.raises(NotAnEncoderError, match=r"field 'backbone_config' counts 1000000 layers \(num_hidden_layers\)"):
        GaussianEncoder.from_pretrained(folder)
    assert devices == []


def test_a_config_with_other_layers_than_the_weights_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _saved(tmp_path, num_hidden_layers=3)
    devices = _record_builds(monkeypatch)
    with pytest.raises(NotAnEncoderError, match=r"does not match its config: missing \['backbone\.encoder\.layer\.2"):
        GaussianEncoder.from_pretrained(folder)
    assert devices == ["meta"]


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size"])
def test_a_backbone_config_that_cannot_be_built_is_a_format_error_naming_the_field(tmp_path: Path, field: str) -> None:
    folder = _saved(tmp_path, **{field: -5})
    with pytest.raises(NotAnEncoderError, match=r"config\.json: field 'backbone_config' is invalid: .*-5"):
        GaussianEncoder.from_pretrained(folder)


def test_a_matching_folder_is_built_once_for_real_and_loads_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_tiny_encoder()
    folder = original.save_pretrained(tmp_path / "enc")
    devices = _record_builds(monkeypatch)
    loaded = GaussianEncoder.from_pretrained(folder)
    assert devices == ["meta", "cpu"]
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert all(b.device.type == "cpu" for b in loaded.buffers())
    texts = ["a first passage", "another one"]
    want, got = original.encode_documents(texts), loaded.encode_documents(texts)
    assert torch.allclose(torch.as_tensor(want.mean), torch.as_tensor(got.mean))
    assert torch.allclose(torch.as_tensor(want.var), torch.as_tensor(got.var))
    assert loaded.weights_sha256 is not None
