"""An encoded-shards folder written before model fingerprints and backends were recorded counts as torch (float32).

Such a manifest (release 0.1.0) names only the model; its shards are a torch encoder's. Resuming it on the
ONNX backend (the default for a folder shipping ``onnx-int8/``) would record the folder as int8 ONNX and encode
missing shards on it beside the torch ones; it is refused, naming ``--model-backend torch``. Resuming with
torch records the torch fingerprint; ``load_encoded(..., encoder=onnx)`` names the torch backend to use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import rewrite_as_release_0_1_0
from kl_retrievers import load_model
from kl_retrievers.onnx import OnnxGaussianEncoder
from kl_retrievers.sharded import encode_corpus, load_encoded


def _old_folder(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """A corpus and its torch encoding in 3 shards, its manifest and shard records as release 0.1.0 wrote them."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"word {i} cat sat"}) + "\n" for i in range(8)))
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(model), model_backend="torch", shard_size=3, show_progress_bar=False)
    rewrite_as_release_0_1_0(out)
    return corpus, out


def _kw(model: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(model), "shard_size": 3, "show_progress_bar": False, **extra}


def test_resuming_an_old_folder_on_onnx_is_refused_naming_the_torch_backend(
    tmp_path: Path, shipping_folder: Path
) -> None:
    assert isinstance(load_model(str(shipping_folder)), OnnxGaussianEncoder)  # the default backend here
    corpus, out = _old_folder(tmp_path, shipping_folder)
    shutil.rmtree(out / "shard-00001")  # a missing shard, which a resume would encode
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"--model-backend torch") as info:
        encode_corpus(corpus, out, **_kw(shipping_folder))
    message = str(info.value)
    assert "torch (float32)" in message and "onnx" in message and "nothing was overwritten" in message
    assert (out / "manifest.json").read_text() == before
    assert not (out / "shard-00001").exists()


def test_resuming_an_old_folder_on_torch_reuses_its_shards_and_records_torch(
    tmp_path: Path, shipping_folder: Path
) -> None:
    corpus, out = _old_folder(tmp_path, shipping_folder)
    shutil.rmtree(out / "shard-00001")
    report = encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch"))
    assert report.reused == [0, 2] and report.encoded == [1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_backend"] == "torch" and manifest["model_fingerprint"]
    torch_encoder = load_model(str(shipping_folder), backend="torch")
    assert len(load_encoded(out, encoder=torch_encoder, kind="document")[1]) == 8


def test_load_encoded_of_an_old_folder_with_an_onnx_encoder_names_the_torch_backend(
    tmp_path: Path, shipping_folder: Path
) -> None:
    _, out = _old_folder(tmp_path, shipping_folder)
    with pytest.raises(ValueError, match=r"no model fingerprint") as info:
        load_encoded(out, encoder=load_model(str(shipping_folder)), kind="document")
    message = str(info.value)
    assert "--model-backend torch" in message and "backend='torch'" in message and "runs on onnx" in message
    with pytest.raises(ValueError, match=r"on the torch backend") as info:
        load_encoded(out, encoder=load_model(str(shipping_folder), backend="torch"), kind="document")
    assert "runs on" not in str(info.value)
    assert len(load_encoded(out)[1]) == 8  # unchecked
