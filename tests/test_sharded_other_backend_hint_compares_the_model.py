"""The hint to resume an encoded-shards folder on its other backend compares the models as ``iter_encoded`` does.

Resuming a folder encoded on torch without ``model_backend`` (ONNX, the default here) is refused, naming
``--model-backend torch`` where the folder holds the same model's shards. That hint compared only the weights both
manifests record, so a folder whose encoder config (``beta``, pooling, ...) or tokenizer differs, which
``iter_encoded`` refuses to read with this model, was told to resume with the flag. Both now ask one comparison
(``_compare_models``: weights, the config fields both backends share, tokenizer); a folder that records no weights
gets the hint worded "if it is the same model".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.sharded import encode_corpus

pytest.importorskip("onnxruntime")


@pytest.fixture
def torch_folder(tmp_path: Path, shipping_folder: Path) -> Path:
    """Eight documents encoded on torch into three shards."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"word {i} cat sat"}) + "\n" for i in range(8)))
    out = tmp_path / "out"
    encode_corpus(corpus, out, model_backend="torch", **_kw(shipping_folder))
    return out


def _kw(model: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(model), "shard_size": 3, "show_progress_bar": False, **extra}


def _edit_manifest(out: Path, **changes: Any) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _resume_refusal(out: Path, model: Path) -> str:
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError) as info:
        encode_corpus(out.parent / "c.jsonl", out, **_kw(model))  # the default backend: ONNX
    assert (out / "manifest.json").read_text() == before
    return str(info.value)


def test_a_folder_of_the_same_weights_with_another_encoder_config_gets_no_backend_hint(
    torch_folder: Path, shipping_folder: Path
) -> None:
    config = json.loads((torch_folder / "manifest.json").read_text())["model_config"]
    assert config["beta"] == 1.0
    _edit_manifest(torch_folder, model_config={**config, "beta": 2.0})  # the same weights, another beta
    message = _resume_refusal(torch_folder, shipping_folder)
    assert "holds shards made with other settings" in message and "--model-backend" not in message, message


def test_a_folder_of_the_same_weights_with_another_tokenizer_gets_no_backend_hint(
    torch_folder: Path, shipping_folder: Path
) -> None:
    recorded = json.loads((torch_folder / "manifest.json").read_text())["model_tokenizer_sha256"]
    assert isinstance(recorded, str)
    _edit_manifest(torch_folder, model_tokenizer_sha256="f" * 64)
    message = _resume_refusal(torch_folder, shipping_folder)
    assert "holds shards made with other settings" in message and "--model-backend" not in message, message


def test_a_folder_without_recorded_weights_gets_the_hint_if_it_is_the_same_model(
    torch_folder: Path, shipping_folder: Path
) -> None:
    _edit_manifest(torch_folder, model_weights_sha256=None)
    message = _resume_refusal(torch_folder, shipping_folder)
    assert "The folder's manifest records no weights identity" in message, message
    assert "if it is, pass --model-backend torch (model_backend='torch'" in message, message
    assert "if not, use another --out folder (nothing was overwritten)" in message, message
    report = encode_corpus(torch_folder.parent / "c.jsonl", torch_folder, **_kw(shipping_folder, model_backend="torch"))
    assert report.reused == [0, 1, 2] and report.encoded == []  # it is: the advice resumes it


def test_a_folder_of_the_same_model_gets_the_plain_hint(torch_folder: Path, shipping_folder: Path) -> None:
    message = _resume_refusal(torch_folder, shipping_folder)
    assert "Pass --model-backend torch (model_backend='torch'" in message and "if it is" not in message, message
