"""The public API on the core install (no torch): introspection works, torch-only names fail only when used.

Each check runs in a fresh interpreter where torch and transformers cannot be imported, as in the core
install (``sys.modules[name] = None``, as in tests/test_onnx.py).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from kl_retrievers import GaussianEncoderConfig, NotAnEncoderError

EXTRA = 'pip install "kl-retrievers[torch]"'


def _run_torch_free(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    prelude = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
    env = {**os.environ, "KL_RETRIEVERS_ONNX_CACHE": str(tmp_path / "onnx-cache")}
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_star_import_help_and_getmembers_work_without_torch(tmp_path: Path) -> None:
    code = """
import contextlib, inspect, io, pydoc, sys
import kl_retrievers
namespace = {}
exec("from kl_retrievers import *", namespace)
print(sorted(set(kl_retrievers.__all__) - set(namespace)))
members = dict(inspect.getmembers(kl_retrievers))
print(sorted(set(kl_retrievers.__all__) - set(members)))
with contextlib.redirect_stdout(io.StringIO()) as out:
    help(kl_retrievers)
print("help", "class GaussianEncoder" in out.getvalue(), "class KLStore" in out.getvalue())
pydoc.render_doc(kl_retrievers.GaussianEncoder)
print("torch", sys.modules.get("torch"))
"""
    lines = _run_torch_free(code, tmp_path).stdout.splitlines()
    assert lines == ["[]", "[]", "help True True", "torch None"]


def test_the_encoder_config_and_its_error_need_no_torch(tmp_path: Path) -> None:
    code = """
import pickle, sys
from kl_retrievers import GaussianEncoderConfig, NotAnEncoderError
config = GaussianEncoderConfig.from_dict({"dim": 8, "pooling": "mean", "unknown": 1})
print(config.dim, config.pooling, config.extra)
print(pickle.loads(pickle.dumps(config)) == config, issubclass(NotAnEncoderError, ValueError))
print(type(pickle.loads(pickle.dumps(NotAnEncoderError("x")))).__name__)
"""
    lines = _run_torch_free(code, tmp_path).stdout.splitlines()
    assert lines == ["8 mean {'unknown': 1}", "True True", "NotAnEncoderError"]


def test_the_torch_encoder_module_reexports_the_same_objects() -> None:
    pytest.importorskip("torch")
    from kl_retrievers import encoder

    assert encoder.NotAnEncoderError is NotAnEncoderError and encoder.GaussianEncoderConfig is GaussianEncoderConfig
    config = encoder.GaussianEncoderConfig(dim=4)
    assert isinstance(pickle.loads(pickle.dumps(config)), GaussianEncoderConfig)
    with pytest.raises(encoder.NotAnEncoderError):  # `except encoder.NotAnEncoderError` catches what _config raises
        raise NotAnEncoderError("x")


def test_gaussian_encoder_without_torch_is_a_placeholder_that_names_the_extra(tmp_path: Path) -> None:
    code = """
import kl_retrievers
from kl_retrievers import GaussianEncoder
print(GaussianEncoder is kl_retrievers.GaussianEncoder, GaussianEncoder.__name__)
print(isinstance(object(), GaussianEncoder), hasattr(GaussianEncoder, "__wrapped__"))
calls = {
    "init": lambda: GaussianEncoder(),
    "from_pretrained": lambda: GaussianEncoder.from_pretrained("x"),
    "from_backbone": lambda: GaussianEncoder.from_backbone("x", dim=8),
    "save_pretrained": lambda: GaussianEncoder.save_pretrained,
    "encode_queries": lambda: GaussianEncoder.encode_queries,
}
for what, call in calls.items():
    try:
        call()
    except ModuleNotFoundError as exc:
        print(what, exc.name, "|", exc)
    else:
        print(what, "no error")
"""
    lines = _run_torch_free(code, tmp_path).stdout.splitlines()
    assert lines[:2] == ["True GaussianEncoder", "False False"]
    assert len(lines) == 7, lines
    for line in lines[2:]:
        head, message = line.split(" | ", 1)
        what, name = head.split()
        assert name == "torch" and message.startswith("GaussianEncoder"), line
        assert what == "init" or f"GaussianEncoder.{what} needs torch" in message, line
        assert EXTRA in message and "minilm-gauss-soup" in message, line  # the extra, and what runs without it


def test_load_model_on_a_folder_that_is_not_an_encoder_says_so_without_torch(tmp_path: Path) -> None:
    empty = tmp_path / "empty-config"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    store = tmp_path / "store"  # a saved KLStore: a config.json, but not an encoder's
    store.mkdir()
    (store / "config.json").write_text(json.dumps({"format": "kl-retrievers/klstore", "format_version": 1}))
    bad_encoder = tmp_path / "bad-encoder"  # written by kl_retrievers, but its encoder field is not a config
    bad_encoder.mkdir()
    (bad_encoder / "config.json").write_text(json.dumps({"library": "kl_retrievers", "encoder": {"dim": 0}}))
    code = f"""
from kl_retrievers import load_model
for folder in {[str(empty), str(store), str(bad_encoder)]!r}:
    try:
        load_model(folder)
    except Exception as exc:
        print(type(exc).__name__, exc)
"""
    lines = _run_torch_free(code, tmp_path).stdout.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"NotAnEncoderError {empty} is not a saved GaussianEncoder"), lines[0]
    assert lines[1].startswith(f"NotAnEncoderError {store} is not a saved GaussianEncoder"), lines[1]
    assert lines[2].startswith(f"NotAnEncoderError {bad_encoder / 'config.json'}: field 'encoder' is invalid"), lines[2]
    assert not (tmp_path / "onnx-cache").exists()
