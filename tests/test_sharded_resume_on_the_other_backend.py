"""Resuming an encoded-shards folder on the other backend (torch or ONNX) of its model names the backend to pass.

A folder encoded on torch (as 324d070 and 4b7bc9f wrote them, before ONNX became the default backend) and
resumed without ``model_backend`` runs ONNX int8 on a CPU: the fingerprint, the backend and the batch size
(recorded for an int8 graph only) differ, all three from the backend alone. The refusal said "other settings
... use another --out folder or delete it"; it now names the recorded backend and ``--model-backend``, and the
rerun it recommends reuses every shard. Another model (other weights) keeps the plain refusal.

A folder written before run keys logs one warning for its shards without a key, not one a shard.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import rewrite_as_release_0_1_0
from kl_retrievers import load_model
from kl_retrievers.onnx import OnnxGaussianEncoder
from kl_retrievers.sharded import encode_corpus, load_encoded


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"word {i} cat sat"}) + "\n" for i in range(8)))
    return path


def _kw(model: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(model), "shard_size": 3, "show_progress_bar": False, **extra}


def _encode(corpus: Path, out: Path, model: Path, **extra: Any) -> dict[str, Any]:
    encode_corpus(corpus, out, **_kw(model, **extra))
    return json.loads((out / "manifest.json").read_text())


def _as_324d070(out: Path) -> None:
    """Rewrite ``out``'s manifest as 324d070 wrote it: the torch backend and fingerprint, no weights, config or
    tokenizer, library version 0.1.0 (its shards carried run keys already)."""
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("model_weights_sha256", "model_config", "model_tokenizer_sha256"):
        del manifest[key]
    manifest["library_version"] = "0.1.0"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("recorded_as", ["head", "324d070"])
def test_a_torch_folder_resumed_on_the_default_onnx_names_the_torch_backend(
    tmp_path: Path, corpus: Path, shipping_folder: Path, recorded_as: str
) -> None:
    assert isinstance(load_model(str(shipping_folder)), OnnxGaussianEncoder)  # the default backend here
    out = tmp_path / "out"
    assert _encode(corpus, out, shipping_folder, model_backend="torch")["model_backend"] == "torch"
    if recorded_as == "324d070":
        _as_324d070(out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"--model-backend torch") as info:
        encode_corpus(corpus, out, **_kw(shipping_folder))
    message = str(info.value)
    assert "encoded on the torch backend" in message and "runs on onnx" in message, message
    assert "model_backend='torch'" in message and "nothing was overwritten" in message, message
    assert "delete" not in message and "--batch-size" not in message, message
    assert (out / "manifest.json").read_text() == before
    # the advice works: every shard is reused
    report = encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch"))
    assert report.reused == [0, 1, 2] and report.encoded == []


def test_an_onnx_folder_resumed_on_torch_names_the_onnx_backend_and_its_batch_size(
    tmp_path: Path, corpus: Path, shipping_folder: Path
) -> None:
    out = tmp_path / "out"
    manifest = _encode(corpus, out, shipping_folder, batch_size=4)
    assert manifest["model_backend"] == "onnx" and manifest["batch_size"] == 4
    with pytest.raises(ValueError, match=r"--model-backend onnx") as info:
        encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch"))
    message = str(info.value)
    assert "encoded on the onnx backend" in message and "runs on torch" in message, message
    assert "--batch-size 4" in message and "delete" not in message, message
    with pytest.raises(ValueError, match=r"--model-backend onnx") as info:  # at its batch size: no batch advice
        encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch", batch_size=4))
    assert "--batch-size" not in str(info.value)
    report = encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="onnx", batch_size=4))
    assert report.reused == [0, 1, 2] and report.encoded == []


def test_another_models_folder_on_the_other_backend_keeps_the_plain_refusal(
    tmp_path: Path, corpus: Path, shipping_folder: Path
) -> None:
    out = tmp_path / "out"
    manifest = _encode(corpus, out, shipping_folder, model_backend="torch")
    manifest["model_weights_sha256"] = "0" * 64  # another model's weights under the same name
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ValueError, match=r"holds shards made with other settings") as info:
        encode_corpus(corpus, out, **_kw(shipping_folder))
    assert "--model-backend" not in str(info.value)


def _old_folder(corpus: Path, out: Path, model: Path) -> None:
    """``corpus`` encoded on torch into ``out`` in 3 shards, its manifest and shard records as release 0.1.0
    wrote them (no fingerprint, no backend, no run keys)."""
    _encode(corpus, out, model, model_backend="torch")
    rewrite_as_release_0_1_0(out)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "kl_retrievers.sharded" and r.levelno >= logging.WARNING
    ]


def test_shards_without_run_keys_log_one_summary_on_resume_and_on_load(
    tmp_path: Path, corpus: Path, shipping_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    _old_folder(corpus, out, shipping_folder)
    caplog.set_level(logging.WARNING, logger="kl_retrievers.sharded")
    encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch"))
    logged = _warnings(caplog)
    assert len(logged) == 2, logged  # the missing fingerprint, and one line for the 3 shards
    assert "without a model fingerprint" in logged[0]
    assert "3 of its 3 shards carry no run key" in logged[1]
    caplog.clear()
    report = encode_corpus(corpus, out, **_kw(shipping_folder, model_backend="torch"))  # fingerprint recorded now
    assert report.reused == [0, 1, 2]
    logged = _warnings(caplog)
    assert len(logged) == 1 and "3 of its 3 shards carry no run key" in logged[0], logged
    caplog.clear()
    assert len(load_encoded(out)[1]) == 8
    logged = _warnings(caplog)
    assert len(logged) == 1 and "3 of its 3 shards carry no run key" in logged[0], logged
