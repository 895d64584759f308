"""A bundled model whose files an installer laid as links into its cache (uv's ``link-mode=symlink``, Bazel
runfiles, ``cp -rs``) loads on both backends; a user's folder still may not link out of itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kl_retrievers import encoder as encoder_module
from kl_retrievers import hub, pretrained
from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError
from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path, load_default_model, load_model


def _linked_copy(source: Path, target: Path) -> None:
    """``cp -rs source target``: real folders, every file a symbolic link to the original."""
    if shutil.which("cp") is not None:
        subprocess.run(["cp", "-rs", os.fspath(source.resolve()), os.fspath(target)], check=True)
        return
    for folder, _, files in os.walk(source):  # pragma: no cover - no cp
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            (out / name).symlink_to((Path(folder) / name).resolve())


@pytest.fixture
def linked_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package's bundled-model folder, as an installer that links files lays it (the default model only)."""
    root = tmp_path / "site-packages" / "kl_retrievers" / "pretrained"
    root.mkdir(parents=True)
    _linked_copy(bundled_model_path(DEFAULT_MODEL), root / DEFAULT_MODEL)
    assert (root / DEFAULT_MODEL / "onnx-int8" / "model.onnx").is_symlink()
    assert (root / DEFAULT_MODEL / "delta.safetensors").is_symlink()
    for module, name in ((pretrained, "_HERE"), (hub, "BUNDLED_DIR"), (encoder_module, "BUNDLED_DIR")):
        monkeypatch.setattr(module, name, root)
    return root


def test_a_linked_bundled_model_loads_on_onnx(linked_package: Path) -> None:
    enc = load_default_model(backend="onnx")
    assert isinstance(enc, OnnxGaussianEncoder) and enc.name_or_path == f"kl_retrievers:{DEFAULT_MODEL}"
    assert enc.path == linked_package / DEFAULT_MODEL / "onnx-int8"
    assert enc.weights_sha256 is not None  # known as the bundled model's shipped graph
    assert enc.encode_queries(["a query"]).mean.shape == (1, 384)
    # its shipped graph folder by path too: the package's own files
    assert isinstance(OnnxGaussianEncoder(linked_package / DEFAULT_MODEL / "onnx-int8"), OnnxGaussianEncoder)


def test_a_linked_bundled_model_loads_on_torch(linked_package: Path) -> None:
    pytest.importorskip("torch")
    enc = load_model(DEFAULT_MODEL, backend="torch")
    assert enc.name_or_path == f"kl_retrievers:{DEFAULT_MODEL}"
    assert enc.encode_queries(["a query"]).mean.shape == (1, 384)


def test_a_linked_copy_in_a_users_folder_is_still_refused(tmp_path: Path) -> None:
    linked = tmp_path / "linked"  # the same files, linked from a folder of the user's: not the package's
    _linked_copy(bundled_model_path(DEFAULT_MODEL) / "onnx-int8", linked)
    with pytest.raises(OnnxModelError, match=r"tokenizer\.json resolves to .*not to a file directly in its folder"):
        OnnxGaussianEncoder(linked)


def test_a_linked_copy_of_a_bundled_folder_in_a_users_folder_is_refused_on_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from kl_retrievers._config import NotAnEncoderError

    linked = tmp_path / "linked"
    _linked_copy(bundled_model_path(DEFAULT_MODEL), linked)
    with pytest.raises(NotAnEncoderError, match=r"delta\.safetensors resolves to .*not to a file directly in the"):
        load_model(str(linked), backend="torch")
