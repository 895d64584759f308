"""``evaluate_model`` (the Python API) records what measured its run, as ``kl-retrievers evaluate --json`` does.

Its result's ``info`` (so ``summary()``) carries ``backend`` (``torch``, ``onnx-int8`` or ``onnx-float32``) and
the model's ``weights_sha256``: a per-query file saved from the API with ``meta=result.summary()`` then makes
``evaluate --compare`` warn when the two runs were measured on other backends (the default model loads as ONNX
int8 in Python and as torch on the command line, under one label).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_evaluate_records_backend import _beir  # the same tiny BEIR folder

from conftest import make_tiny_encoder
from kl_retrievers.cli import main
from kl_retrievers.datasets import load_beir
from kl_retrievers.evaluation import evaluate_model, model_backend, save_per_query
from kl_retrievers.pretrained import load_model


def test_evaluate_model_records_the_torch_backend_and_weights(tmp_path: Path) -> None:
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), backend="torch")
    result = evaluate_model(loaded, load_beir(_beir(tmp_path / "data")), k=3, show_progress=False, use_cache=False)
    summary = result.summary()
    assert summary["backend"] == "torch" and result.info["backend"] == "torch"
    assert summary["weights_sha256"] == enc.weights_sha256


@pytest.mark.parametrize(("quantize", "backend"), [("int8", "onnx-int8"), (None, "onnx-float32")])
def test_evaluate_model_records_an_onnx_graphs_precision(tmp_path: Path, quantize: str | None, backend: str) -> None:
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(tmp_path / "graph", quantize=quantize)  # type: ignore[arg-type]
    graph = load_model(str(tmp_path / "graph"), backend="onnx")
    assert model_backend(graph) == backend
    result = evaluate_model(graph, load_beir(_beir(tmp_path / "data")), k=3, show_progress=False, use_cache=False)
    assert result.summary()["backend"] == backend
    assert result.summary()["weights_sha256"] == enc.weights_sha256  # the export reports the float32 weights'


def test_compare_warns_about_a_per_query_file_saved_from_the_api_on_another_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(tmp_path / "model" / "onnx-int8", quantize="int8")  # the folder ships its int8 graph
    data = _beir(tmp_path / "data")
    graph = load_model(str(tmp_path / "model" / "onnx-int8"), backend="onnx")
    result = evaluate_model(graph, load_beir(data), k=3, show_progress=False, use_cache=False)
    pq = tmp_path / "api.json"
    save_per_query(pq, result.per_query, meta=result.summary())
    argv = ["evaluate", str(data), "--model", str(tmp_path / "model"), "--no-progress", "--no-cache", "--depth", "3"]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        assert main([*argv, "--json", "--compare", str(pq)]) == 0
    warned = [r.getMessage() for r in caplog.records if "measured on another backend" in r.getMessage()]
    assert warned and "onnx-int8 there, torch in this run" in warned[0], caplog.text
    assert json.loads(capsys.readouterr().out)["compare"]["backend"] == "onnx-int8"


def test_a_duck_typed_encoder_records_no_backend() -> None:
    """An encoder of neither package class has no backend to record (and the result says nothing false)."""
    assert model_backend(object()) is None
