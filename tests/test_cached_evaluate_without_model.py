"""``kl-retrievers evaluate --model`` with every encoding cached loads no model.

Its encodings are keyed by the model's files (``encoding_cache.files_fingerprint``: every file of the model
folder, the backend and its session options, the packages that compute), taken without loading it; a
second run on the same collection finds both sides under that key, does not call ``load_model`` and reports
exactly what the first did. Any change the model's output could follow (a weight byte, the backend, the token
budget, an ONNX session option) is a miss: the model is loaded, as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder, write_tiny_beir
from kl_retrievers.cli import main

_REAL_LOAD_MODEL = pretrained.load_model
#: What differs between two runs of the same evaluation: how long its parts took.
_TIMINGS = ("encode_s", "retrieve_s", "seconds", "qpp_seconds")


class _Loaded(RuntimeError):
    """Raised by the fake load_model: the run needed the model."""


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``load_model`` replaced by one that records its call and stops the run (the command then fails)."""
    calls: list[Any] = []

    def fake(name_or_path: Any = None, **kwargs: Any) -> Any:
        calls.append(name_or_path)
        raise _Loaded(f"load_model({name_or_path!r}) was called")

    monkeypatch.setattr(pretrained, "load_model", fake)
    return calls


def _argv(model: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    return ["evaluate", str(data), "--model", str(model), "--cache-dir", str(cache), "--quiet", "--json", *extra]


def _record(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    record = json.loads(capsys.readouterr().out)
    return {k: v for k, v in record.items() if k not in _TIMINGS}


def _first_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run once with the real model (it encodes and fills the cache); its record without timings."""
    assert main(argv) == 0
    return _record(capsys)


def _with_real_loader(run: Any) -> Any:
    """Call ``run`` with the real load_model in place of the ``loads`` fixture's fake, then put the fake back."""
    fake = pretrained.load_model
    pretrained.load_model = _REAL_LOAD_MODEL
    try:
        return run()
    finally:
        pretrained.load_model = fake


def _needs_the_model(argv: list[str], loads: list[Any]) -> bool:
    """Whether the run called load_model (a miss) rather than finishing from the cache."""
    before = len(loads)
    assert main(argv) != 0  # the fake load_model stops it
    return len(loads) == before + 1


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A saved tiny torch encoder, the tiny BEIR collection and an empty cache folder."""
    make_tiny_encoder(seed=0).save_pretrained(tmp_path / "model")
    return tmp_path / "model", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"


def test_a_fully_cached_run_loads_no_model_and_reports_the_same(
    world: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, cache = world
    pq1, pq2 = tmp_path / "pq1.json", tmp_path / "pq2.json"
    first = _first_run([*_argv(model, data, cache), "--per-query", str(pq1)], capsys)
    assert first["backend"] == "torch" and first["weights_sha256"]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("every encoding is cached: the model must not be loaded")

    monkeypatch.setattr(pretrained, "load_model", refuse)
    assert main([*_argv(model, data, cache), "--per-query", str(pq2)]) == 0
    second = _record(capsys)
    assert second == first  # metrics, model label, backend, weights, QPP: all as the run that loaded the model
    rows1 = json.loads(pq1.read_text(encoding="utf-8"))
    rows2 = json.loads(pq2.read_text(encoding="utf-8"))
    assert rows1["per_query"] == rows2["per_query"]


def test_a_changed_weight_byte_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []  # unchanged: a hit
    capsys.readouterr()
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one bit of the last tensor's last byte
    weights.write_bytes(bytes(blob))
    assert _needs_the_model(_argv(model, data, cache), loads)


def test_another_token_budget_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []
    capsys.readouterr()
    assert _needs_the_model(_argv(model, data, cache, "--max-length", "16"), loads)
    assert _needs_the_model(_argv(model, data, cache, "--query-max-length", "8"), loads)


def test_another_backend_misses(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    model, data, cache = world
    _with_real_loader(lambda: _first_run(_argv(model, data, cache), capsys))
    assert main(_argv(model, data, cache)) == 0 and loads == []
    capsys.readouterr()
    assert _needs_the_model(_argv(model, data, cache, "--model-backend", "onnx"), loads)


def test_an_onnx_graph_is_found_by_its_files_and_its_session_options_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loads: list[Any]
) -> None:
    graph, data, cache = tmp_path / "graph", write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    enc = make_tiny_encoder(seed=0)
    enc.save_pretrained(tmp_path / "model")
    enc.export_onnx(graph, quantize="int8")
    argv = _argv(graph, data, cache, "--model-backend", "onnx")
    first = _with_real_loader(lambda: _first_run(argv, capsys))
    assert first["backend"] == "onnx-int8"
    assert main(argv) == 0 and loads == []
    assert _record(capsys) == first
    assert _needs_the_model([*argv, "--model-threads", "1"], loads)
    assert _needs_the_model([*argv, "--batch-size", "2"], loads)  # an int8 graph's encodings depend on the batch


def test_a_model_that_is_not_what_its_files_say_is_not_keyed_by_them(
    world: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facts read from the files are checked against the loaded model before anything is cached under them."""
    import dataclasses

    import kl_retrievers.evaluate_cli as evaluate_cli

    model, data, cache = world
    real = evaluate_cli._files_plan

    def wrong(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        assert plan is not None, "a saved torch folder is known by its files"
        return dataclasses.replace(plan, facts=dataclasses.replace(plan.facts, similarity="dot"))

    monkeypatch.setattr(evaluate_cli, "_files_plan", wrong)
    first = _first_run(_argv(model, data, cache), capsys)
    assert first["score"] == "neg_kl"  # the loaded model's, not what the (wrong) files plan said
    loads: list[Any] = []
    real_load = pretrained.load_model

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pretrained, "load_model", counting)
    assert _first_run(_argv(model, data, cache), capsys) == first
    assert len(loads) == 1  # nothing was keyed by the files: the model is loaded again


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_default_bundled_model_is_found_by_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """By bundled name, on torch (a delta folder whose backbone its config pins) and on its shipped int8 graph."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, cache = write_tiny_beir(tmp_path / "data"), tmp_path / "cache"
    argv = ["evaluate", str(data), "--model", "minilm-gauss-soup", "--model-backend", backend]
    argv += ["--cache-dir", str(cache), "--quiet", "--json"]
    first = _first_run(argv, capsys)
    assert first["model"] == "kl_retrievers:minilm-gauss-soup"
    loads: list[Any] = []
    monkeypatch.setattr(pretrained, "load_model", lambda *a, **k: loads.append(a))
    assert main(argv) == 0 and loads == []
    assert _record(capsys) == first
