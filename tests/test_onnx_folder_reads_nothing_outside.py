"""An ONNX export folder from elsewhere (untrusted) makes the ONNX encoder read nothing outside it.

- Each external-data ``location`` its ``model.onnx`` names is checked before ONNX Runtime sees the graph (onnxruntime
  1.18.1, the floor, reads ``../../outside/w.bin`` and hangs on a FIFO; the library's own hashing read the file a
  location named, wherever it lay): a relative path, with no ``..``, drive, anchor or backslash, naming a regular file
  in the folder (no FIFO or device, no symbolic link out). Otherwise :class:`OnnxModelError` names the location, and
  no session is created. A subfolder of the folder, and a link within it, are fine.
- ``model.onnx`` and ``tokenizer.json`` may not be symbolic links out of the folder (as the torch encoder refuses
  them at its weights and tokenizer files); links within it are fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import make_tiny_encoder
from kl_retrievers.hub import sha256_file
from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError, export_onnx


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 export of a tiny encoder, made once: copy it before changing it."""
    root = tmp_path_factory.mktemp("untrusted")
    return export_onnx(make_tiny_encoder(dim=6, seed=3), root / "export", quantize=None, verify=False)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The graphs ONNX Runtime is asked to open (sessions are still created)."""
    import onnxruntime

    opened: list[str] = []
    real = onnxruntime.InferenceSession

    def recording(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return opened


def _with_external_data(plain_export: Path, folder: Path, location: str) -> bytes:
    """Copy the export to ``folder`` with its largest weight moved out of ``model.onnx`` to ``location`` (not written:
    returns its bytes); ``config.json`` pins the new graph, and the external data as the weight's bytes."""
    import onnx
    from onnx.external_data_helper import set_external_data

    shutil.copytree(plain_export, folder)
    graph = onnx.load(os.fspath(folder / "model.onnx"))
    tensor = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    data = tensor.raw_data
    set_external_data(tensor, location=location, offset=0, length=len(data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    (folder / "model.onnx").write_bytes(graph.SerializeToString())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["onnx"]["model_sha256"] = sha256_file(folder / "model.onnx")
    config["onnx"]["external_data_sha256"] = {location: hashlib.sha256(data).hexdigest()}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return data


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../outside/w.bin", "'..' part"),
        ("sub/../../outside/w.bin", "'..' part"),
        ("ABSOLUTE", "not a relative path"),  # the outside file's absolute path
        ("C:w.bin", "not a relative path"),
        ("sub\\w.bin", "not a relative path"),
        ("./w.bin", "'.' or '..' part"),
    ],
)
def test_an_external_data_location_that_is_not_a_path_in_the_folder_is_refused_before_onnx_runtime(
    tmp_path: Path, plain_export: Path, sessions: list[str], location: str, why: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    location = os.fspath(outside / "w.bin") if location == "ABSOLUTE" else location
    folder = tmp_path / "export"
    (outside / "w.bin").write_bytes(_with_external_data(plain_export, folder, location))
    with pytest.raises(OnnxModelError, match="external-data file") as info:
        OnnxGaussianEncoder(folder)
    assert repr(location) in str(info.value) and why in str(info.value)
    assert sessions == []  # ONNX Runtime never saw the graph


@pytest.mark.parametrize("kind", ["link out", "link to /dev/zero", "fifo", "missing", "folder"])
def test_an_external_data_file_in_the_folder_that_is_no_regular_file_of_it_is_refused_before_onnx_runtime(
    tmp_path: Path, plain_export: Path, sessions: list[str], kind: str
) -> None:
    folder = tmp_path / "export"
    data = _with_external_data(plain_export, folder, "w.bin")
    (tmp_path / "w.bin").write_bytes(data)
    if kind == "link out":
        (folder / "w.bin").symlink_to(tmp_path / "w.bin")
    elif kind == "link to /dev/zero":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero")
        (folder / "w.bin").symlink_to("/dev/zero")
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(folder / "w.bin")  # ONNX Runtime 1.18 waits on it forever
    elif kind == "folder":
        (folder / "w.bin").mkdir()
    with pytest.raises(OnnxModelError, match="external-data file 'w.bin'") as info:
        OnnxGaussianEncoder(folder)
    expected = {
        "link out": "outside the folder",
        "link to /dev/zero": "outside the folder",
        "fifo": "not a regular file",
        "missing": "cannot be read",
        "folder": "not a regular file",
    }[kind]
    assert expected in str(info.value)
    assert sessions == []


def test_external_data_in_a_subfolder_or_linked_within_the_folder_loads(
    tmp_path: Path, plain_export: Path, sessions: list[str]
) -> None:
    reference = OnnxGaussianEncoder(plain_export).encode_queries(["hello world"]).mean
    folder = tmp_path / "export"
    data = _with_external_data(plain_export, folder, "data/w.bin")
    (folder / "data").mkdir()
    (folder / "weights.bin").write_bytes(data)
    (folder / "data" / "w.bin").symlink_to(folder / "weights.bin")  # a link that stays in the folder
    loaded = OnnxGaussianEncoder(folder)
    assert loaded.config.external_data_sha256 == {"data/w.bin": sha256_file(folder / "weights.bin")}
    assert (loaded.encode_queries(["hello world"]).mean == reference).all()


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_graph_or_tokenizer_linked_from_outside_the_folder_is_refused(
    tmp_path: Path, plain_export: Path, sessions: list[str], name: str
) -> None:
    folder = Path(shutil.copytree(plain_export, tmp_path / "export"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(folder / name, outside / name)  # the same file: its pinned SHA-256 matches
    (folder / name).symlink_to(outside / name)
    with pytest.raises(OnnxModelError, match=f"{name} resolves to .*not to a file directly in its folder") as info:
        OnnxGaussianEncoder(folder)
    assert os.fspath(outside / name) in str(info.value)
    assert sessions == []

    (folder / name).unlink()  # a link within the folder is fine
    shutil.move(outside / name, folder / f"real-{name}")
    (folder / name).symlink_to(f"real-{name}")
    OnnxGaussianEncoder(folder).encode_queries(["hello world"])
