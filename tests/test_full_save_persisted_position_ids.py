"""A full save holding a ``position_ids`` buffer (earlier transformers persisted it) loads when the buffer holds
the positions 0, 1, 2, ...; any other unexpected tensor, or other values, are refused as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_encoder
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.hub import sha256_file


def _save_with(tmp_path: Path, extra: dict[str, torch.Tensor]) -> tuple[GaussianEncoder, Path]:
    """A tiny full save whose weights file also holds ``extra`` (its recorded SHA-256 updated to match)."""
    enc = make_tiny_encoder()
    out = Path(enc.save_pretrained(tmp_path / "enc"))
    weights = out / "model.safetensors"
    save_file({**load_file(weights), **extra}, weights, metadata={"format": "pt"})
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["weights_sha256"] = {"model.safetensors": sha256_file(weights)}
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    return enc, out


@pytest.mark.parametrize("shape", [(1, 128), (128,)])
def test_a_persisted_default_position_ids_buffer_loads(tmp_path: Path, shape: tuple[int, ...]) -> None:
    positions = torch.arange(128).reshape(shape)
    enc, out = _save_with(tmp_path, {"backbone.embeddings.position_ids": positions})
    loaded = GaussianEncoder.from_pretrained(out)
    texts = ["the cat sat on the mat"]
    assert torch.allclose(
        torch.as_tensor(loaded.encode_queries(texts).mean), torch.as_tensor(enc.encode_queries(texts).mean)
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"backbone.embeddings.position_ids": torch.arange(128).flip(0).unsqueeze(0)},  # not the positions
        {"backbone.embeddings.position_ids": torch.arange(128, dtype=torch.float32).unsqueeze(0)},
        {"backbone.extra.weight": torch.zeros(2)},
    ],
    ids=["shuffled", "float", "other-tensor"],
)
def test_other_unexpected_tensors_are_still_refused(tmp_path: Path, extra: dict[str, torch.Tensor]) -> None:
    _, out = _save_with(tmp_path, extra)
    with pytest.raises(NotAnEncoderError, match=r"does not match its config: missing \[\], unexpected \['backbone\."):
        GaussianEncoder.from_pretrained(out)
