"""Loading a user's folder that ships ``onnx-int8/`` with the default backend hashes the folder once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import kl_retrievers.pretrained as pretrained
from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx


@pytest.fixture
def shipping_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved tiny encoder shipping its current int8 export in ``onnx-int8/``, on a machine without a GPU."""
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my-enc"
    encoder = make_tiny_encoder()
    encoder.save_pretrained(folder)
    export_onnx(encoder, folder / "onnx-int8", quantize="int8", source_sha256=pretrained.source_sha256(folder))
    return folder


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []
    real = pretrained.source_sha256

    def counting(*args: object, **kwargs: object) -> str:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrained, "source_sha256", counting)
    return calls


@pytest.mark.parametrize("as_text", [True, False])
def test_default_backend_load_of_a_shipping_folder_hashes_it_once(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, as_text: bool
) -> None:
    calls = _count_hashes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(os.fspath(shipping_folder) if as_text else shipping_folder)
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path == shipping_folder / "onnx-int8"
    assert len(calls) == 1, calls
    assert not caplog.records


def test_a_stale_shipped_graph_is_still_not_chosen_and_loads_torch(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = shipping_folder / "config.json"
    config.write_text(config.read_text() + "\n")  # the same model, other bytes: the graph is now stale
    calls = _count_hashes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(shipping_folder)
    assert isinstance(loaded, GaussianEncoder)
    assert len(calls) == 1 and not caplog.records


def test_a_stale_shipped_graph_without_torch_is_still_refused_naming_the_export_command(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = shipping_folder / "config.json"
    config.write_text(config.read_text() + "\n")
    monkeypatch.setattr(pretrained, "_has_torch", lambda: False)
    calls = _count_hashes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"), pytest.raises(ModuleNotFoundError):
        load_model(shipping_folder)
    warning = " ".join(r.getMessage() for r in caplog.records)
    onnx_int8 = shipping_folder / "onnx-int8"
    assert f"python -m kl_retrievers.onnx_cli export {shipping_folder} {onnx_int8} --overwrite" in warning
    assert [len(args) for args in calls] == [1]  # the check's hash, once: the export cache's key reuses it


def test_a_folder_changed_after_the_backend_choice_is_hashed_again_and_its_stale_graph_not_loaded(
    shipping_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = pretrained._onnx_options

    def change_then(*args: object, **kwargs: object) -> object:  # after the backend choice, before the check
        config = shipping_folder / "config.json"
        config.write_text(config.read_text() + "\n")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrained, "_onnx_options", change_then)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(shipping_folder)
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path != shipping_folder / "onnx-int8"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"not using {shipping_folder / 'onnx-int8'}" in warning and "the model changed" in warning
