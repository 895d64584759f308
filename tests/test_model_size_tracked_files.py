"""docs/choosing-a-model.md's size column counts the files git tracks in a model's folder, not a stray file.

An untracked file in ``kl_retrievers/pretrained/<model>/`` (a local export, a leftover) is no part of the
shipped model; counted, it made ``python benchmarks/results.py --check`` fail on the machine that had it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results_choosing  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder in a git checkout: 1,000,000 tracked bytes, 400,000 of them an ONNX graph."""
    _git(tmp_path, "init", "-q")
    folder = tmp_path / "pretrained" / "tiny"
    (folder / "onnx-int8").mkdir(parents=True)
    (folder / "delta.safetensors").write_bytes(b"\0" * 600_000)
    (folder / "onnx-int8" / "model.onnx").write_bytes(b"\0" * 400_000)
    _git(tmp_path, "add", ".")
    monkeypatch.setattr(results_choosing, "bundled_model_path", lambda name: folder)
    return folder


def test_an_untracked_file_in_the_folder_is_not_counted(model: Path) -> None:
    assert results_choosing.folder_size("tiny") == "1.0 MB (0.4 MB of it the ONNX graph)"
    (model / "stray.bin").write_bytes(b"\0" * 3_000_000)  # e.g. a local export left in the folder
    (model / "onnx-int8" / "old.onnx").write_bytes(b"\0" * 2_000_000)
    assert results_choosing.folder_size("tiny") == "1.0 MB (0.4 MB of it the ONNX graph)"


def test_a_tracked_file_deleted_from_the_disk_is_not_counted(model: Path) -> None:
    (model / "delta.safetensors").unlink()
    assert results_choosing.folder_size("tiny") == "0.4 MB (0.4 MB of it the ONNX graph)"


def test_a_folder_outside_git_stops_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    folder = tmp_path / "plain"
    folder.mkdir()
    monkeypatch.setattr(results_choosing, "bundled_model_path", lambda name: folder)
    with pytest.raises(SystemExit, match="its size is read from `git ls-files`, which failed"):
        results_choosing.folder_size("plain")
