"""Persistence faults in ``kl_retrievers._io`` and the loading of ONNX model folders.

- ``load_gaussians`` reads a folder again when a save swaps it in meanwhile (never the means of one save with the
  variances of another), and restores a folder that a save killed mid-swap left missing.
- ``save_gaussians("X.safetensors")`` on a full disk is an ``OSError`` naming the file (safetensors raises its own
  error type); the conversion lives in ``_io`` (torch-free) and the torch encoder uses the same one.
- A write that fails inside ``atomic_dir`` / ``atomic_file`` (a full disk) names what was being saved, keeping the
  file name (in the target, not the temporary copy); a nested save's message names the target too; a failed read
  of a file elsewhere (a source the save copies) keeps its own error. The bge cache on a full disk is an ``OSError``.
- ``recover_dir`` where the previous copy cannot be put back (a read-only place) says that a copy exists, and where.
- ``read_json_object`` never waits on a named pipe and turns JSON nested too deep into ``None``.
- ``OnnxGaussianEncoder(folder)`` and ``load_model(folder, backend="onnx")`` restore a folder a killed export left
  missing and read the folder again when an export swaps it mid-load (``load_model`` without a retry loop inside
  another: one session per attempt).
- An ONNX graph whose weights are external data: the encoder's fingerprint covers those files.
- The LlamaIndex adapter expands ``~`` in persist / from_persist_path / from_persist_dir paths.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import SafetensorError

from conftest import random_gaussians
from kl_retrievers import _io
from kl_retrievers._io import atomic_dir, atomic_file, load_gaussians, read_json_object, recover_dir, save_gaussians

FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


# ------------------------------------------------------------------ load_gaussians under a concurrent save
def test_load_gaussians_reads_again_when_a_save_swaps_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "g"
    first, second = random_gaussians(3, 4, seed=0), random_gaussians(3, 4, seed=1)
    save_gaussians(folder, first, ids=["a", "b", "c"])
    real_load = np.load
    calls: list[Any] = []

    def load_then_resave(file: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(file)
        result = real_load(file, *args, **kwargs)
        if len(calls) == 1:  # another process saves the folder after mean.npy was read, before var.npy
            save_gaussians(folder, second, ids=["a", "b", "c"])
        return result

    monkeypatch.setattr(np, "load", load_then_resave)
    loaded, ids = load_gaussians(folder)
    assert len(calls) == 4  # read again, whole
    np.testing.assert_array_equal(loaded.mean, second.mean)
    np.testing.assert_array_equal(loaded.var, second.var)
    assert ids == ["a", "b", "c"]


def test_load_gaussians_restores_a_folder_a_killed_save_left_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = random_gaussians(2, 3, seed=2)
    folder = save_gaussians(tmp_path / "g", g)
    aside = tmp_path / ".g.old-0123abcd"  # what a save without an atomic swap renames the previous copy to
    folder.rename(aside)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        loaded, _ = load_gaussians(folder)
    np.testing.assert_array_equal(loaded.mean, g.mean)
    assert folder.is_dir() and not aside.exists()
    assert any("restored the previous copy" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ full disks
def test_save_gaussians_safetensors_on_a_full_disk_is_an_oserror_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.numpy

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(FULL_DISK)

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    target = tmp_path / "g.safetensors"
    with pytest.raises(OSError) as info:
        save_gaussians(target, random_gaussians(2, 3))
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert isinstance(info.value.__cause__, SafetensorError)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_the_torch_encoder_uses_the_torch_free_conversion() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import kl_retrievers.encoder as encoder_module

    assert encoder_module.safetensors_write_error is _io.safetensors_write_error


def test_a_full_disk_in_a_folder_save_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "g"

    def full(file: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError) as info:
        save_gaussians(target, random_gaussians(2, 3))
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(target) in message and "mean.npy" in message and "No space left on device" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_in_atomic_dir_and_atomic_file_names_the_target(tmp_path: Path) -> None:
    folder, file = tmp_path / "store", tmp_path / "a.json"
    with pytest.raises(OSError) as info, atomic_dir(folder):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and str(folder) in str(info.value)
    with pytest.raises(PermissionError) as denied, atomic_file(file):  # the class is kept too
        raise PermissionError(errno.EACCES, "Permission denied")
    assert denied.value.errno == errno.EACCES and str(file) in str(denied.value)
    assert list(tmp_path.iterdir()) == []


def test_an_error_already_naming_the_target_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    original = OSError(f"cannot save {folder}: writing x failed")
    with pytest.raises(OSError) as info, atomic_dir(folder):
        original.errno = errno.ENOSPC
        raise original
    assert info.value is original


# ------------------------------------------------------------------ recover_dir in a read-only place
def test_recover_dir_in_a_read_only_place_names_the_previous_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "store"
    aside = tmp_path / ".store.old-0123abcd"
    aside.mkdir()
    (aside / "config.json").write_text("{}")

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(_io.os, "replace", read_only)
    with pytest.raises(OSError) as info:
        recover_dir(folder, required="config.json")
    message = str(info.value)
    assert info.value.errno == errno.EROFS
    assert "previous copy exists at" in message and str(aside) in message and "read-only" in message
    assert aside.is_dir()


# ------------------------------------------------------------------ read_json_object
def test_read_json_object_turns_deep_nesting_into_none(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    assert read_json_object(path) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_read_json_object_does_not_wait_on_a_named_pipe(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    fifo = folder / "config.json"
    os.mkfifo(fifo)
    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(read_json_object(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): let it go (a writer that closes at once), then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(10)
        pytest.fail("read_json_object waited for a writer on a named pipe")
    assert results == [None]
    assert not _io.is_gaussians_folder(folder)


# ------------------------------------------------------------------ ONNX folders
onnx_needs = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("torch", "transformers", "onnxruntime")),
    reason="needs torch, transformers and onnxruntime",
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    from conftest import make_tiny_encoder
    from kl_retrievers.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx-exports")
    first = export_onnx(make_tiny_encoder(seed=0), root / "first", quantize=None)
    second = export_onnx(make_tiny_encoder(seed=1), root / "second", quantize=None)
    return first, second


def _sha(folder: Path) -> str:
    return str(json.loads((folder / "config.json").read_text())["onnx"]["model_sha256"])


@onnx_needs
@pytest.mark.parametrize("loader", ["OnnxGaussianEncoder", "load_model"])
def test_onnx_load_restores_a_folder_a_killed_export_left_missing(
    tmp_path: Path, exports: tuple[Path, Path], caplog: pytest.LogCaptureFixture, loader: str
) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.onnx import OnnxGaussianEncoder

    folder = tmp_path / "model-onnx"
    aside = tmp_path / ".model-onnx.old-0123abcd"
    shutil.copytree(exports[0], aside)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers"):
        if loader == "load_model":
            enc: Any = load_model(folder, backend="onnx")
        else:
            enc = OnnxGaussianEncoder(folder)
    assert enc.config.model_sha256 == _sha(exports[0])
    assert folder.is_dir() and not aside.exists()
    assert any("restored the previous copy" in r.getMessage() for r in caplog.records)


@onnx_needs
def test_onnx_load_reads_again_when_an_export_swaps_the_folder(
    tmp_path: Path, exports: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kl_retrievers.onnx as onnx_module

    folder = tmp_path / "model-onnx"
    shutil.copytree(exports[0], folder)
    real = onnx_module.check_tokenizer_sha256
    calls: list[Path] = []

    def check_then_swap(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 1:  # an export of the same folder lands after config.json was read, before model.onnx
            with atomic_dir(folder) as tmp:
                for file in exports[1].iterdir():
                    shutil.copy2(file, tmp / file.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_module, "check_tokenizer_sha256", check_then_swap)
    enc = onnx_module.OnnxGaussianEncoder(folder)
    assert len(calls) == 2  # read again, whole
    assert enc.config.model_sha256 == _sha(exports[1])
    reference = onnx_module.OnnxGaussianEncoder(exports[1]).encode_documents(["a small test"])
    np.testing.assert_allclose(enc.encode_documents(["a small test"]).mean, reference.mean, rtol=1e-6)


@onnx_needs
def test_onnx_fingerprint_covers_external_data(tmp_path: Path, exports: tuple[Path, Path]) -> None:
    onnx = pytest.importorskip("onnx")
    from kl_retrievers.encoding_cache import model_fingerprint
    from kl_retrievers.hub import sha256_file
    from kl_retrievers.onnx import OnnxGaussianEncoder, OnnxModelError

    folder = tmp_path / "external"
    shutil.copytree(exports[0], folder)
    model = onnx.load(str(folder / "model.onnx"))
    (folder / "data").mkdir()
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="data/weights.bin",
        size_threshold=0,
    )
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "data" / "weights.bin"
    config["onnx"]["model_sha256"] = sha256_file(folder / "model.onnx")
    config["onnx"]["external_data_sha256"] = {"data/weights.bin": sha256_file(weights)}  # pinned as model.onnx is
    (folder / "config.json").write_text(json.dumps(config))

    before = OnnxGaussianEncoder(folder)
    pickled = pickle.dumps(before)
    data = np.frombuffer(weights.read_bytes(), dtype=np.float32).copy()
    weights.write_bytes((data * 1.5).tobytes())  # other weights, same graph file
    with pytest.raises(OnnxModelError, match="external-data files"):  # not the pinned weights
        OnnxGaussianEncoder(folder)
    config["onnx"]["external_data_sha256"] = {"data/weights.bin": sha256_file(weights)}  # pinned again
    (folder / "config.json").write_text(json.dumps(config))
    after = OnnxGaussianEncoder(folder)
    assert model_fingerprint(after) != model_fingerprint(before)
    assert after.config.external_data_sha256 == {"data/weights.bin": sha256_file(weights)}
    with pytest.raises(OnnxModelError, match="external-data files"):  # a copy made before would run other weights
        pickle.loads(pickled)

    plain = OnnxGaussianEncoder(exports[0])
    assert plain.config.external_data_sha256 == {}
    assert "external_data_sha256" not in plain.config.to_dict()  # unchanged fingerprints for usual exports


def test_external_data_locations_of_a_graph_without_any_is_empty() -> None:
    pytest.importorskip("onnxruntime")
    from kl_retrievers.onnx import _external_data_locations

    tensor = b"\x4a\x03abc"  # TensorProto.raw_data only
    graph = b"\x2a" + bytes([len(tensor)]) + tensor
    assert _external_data_locations(b"\x3a" + bytes([len(graph)]) + graph) == []


# ------------------------------------------------------------------ LlamaIndex persist paths with "~"
def test_llama_index_persist_paths_expand_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode

    from kl_retrievers import kl_document_vectors
    from kl_retrievers.llama_index import KLVectorStore

    monkeypatch.setenv("HOME", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    vectors = kl_document_vectors(random_gaussians(3, 4, seed=4))
    nodes = [TextNode(id_=f"n{i}", text=f"t{i}", embedding=[float(x) for x in v]) for i, v in enumerate(vectors)]
    store = KLVectorStore()
    store.add(nodes)
    store.persist("~/storage/default__vector_store.json")
    assert (tmp_path / "storage" / "default__vector_store.json").is_file()
    assert not (work / "~").exists()
    for loaded in (
        KLVectorStore.from_persist_path("~/storage/default__vector_store.json"),
        KLVectorStore.from_persist_path("~/storage"),
        KLVectorStore.from_persist_dir("~/storage"),
    ):
        assert sorted(n.node_id for n in loaded.get_nodes()) == ["n0", "n1", "n2"]


# ------------------------------------------------------------------ which errors a save names as its own
def test_a_failed_read_of_another_file_in_a_save_keeps_its_error(tmp_path: Path) -> None:
    source = tmp_path / "elsewhere" / "config.json"  # a missing source the body reads: not the save's failure
    with pytest.raises(FileNotFoundError) as info, atomic_dir(tmp_path / "store") as tmp:
        (tmp / "config.json").write_text(source.read_text())
    with pytest.raises(FileNotFoundError) as in_file, atomic_file(tmp_path / "a.json") as tmp:
        tmp.write_text(source.read_text())
    for error in (info.value, in_file.value):
        assert error.filename == str(source) and error.strerror == "No such file or directory"
        assert "cannot save" not in str(error) and error.__cause__ is None
    with pytest.raises(PermissionError) as denied, atomic_dir(tmp_path / "store"):
        raise PermissionError(errno.EACCES, "the token file cannot be read: fix its mode", "/etc/token-kl")
    assert str(denied.value) == "[Errno 13] the token file cannot be read: fix its mode: '/etc/token-kl'"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_in_a_save_keeps_its_file_name_in_the_target(tmp_path: Path) -> None:
    folder, file = tmp_path / "store", tmp_path / "a.json"
    with pytest.raises(OSError) as info, atomic_dir(folder) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(tmp / "mean.npy"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == os.fspath(folder / "mean.npy")
    assert info.value.strerror is not None and info.value.strerror.startswith(f"cannot save {folder}: No space")
    assert ".store.tmp-" not in str(info.value)
    with pytest.raises(OSError) as written, atomic_file(file) as tmp:
        raise OSError(errno.EIO, "Input/output error", os.fspath(tmp))
    assert written.value.errno == errno.EIO and written.value.filename == os.fspath(file)
    assert str(written.value).startswith(f"[Errno 5] cannot save {file}: Input/output error")
    assert list(tmp_path.iterdir()) == []


def test_a_nested_save_names_the_target_not_the_temporary_copy(tmp_path: Path) -> None:
    folder = tmp_path / "hybrid"  # KLHybridStore.save saves its KL half into its own temporary copy
    with pytest.raises(OSError) as info, atomic_dir(folder) as tmp, atomic_dir(tmp / "kl") as inner:
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(inner / "mean.npy"))
    message = str(info.value)
    assert message.startswith(f"[Errno 28] cannot save {folder / 'kl'}: No space left on device"), message
    assert ".tmp-" not in message and info.value.filename == os.fspath(folder / "kl" / "mean.npy")
    written = OSError(f"cannot save {tmp_path / '.x.tmp-0'}: never")  # a message naming another path is kept
    written.errno = errno.ENOSPC
    with pytest.raises(OSError) as kept, atomic_dir(tmp_path / "x"):
        raise written
    assert kept.value is written
    with pytest.raises(OSError) as safetensors_error, atomic_dir(folder) as tmp:  # safetensors_write_error's
        raise _io.safetensors_write_error(ValueError(FULL_DISK), tmp / "w.safetensors", tmp)
    assert str(safetensors_error.value).startswith(f"cannot save {folder}: writing w.safetensors failed")
    assert list(tmp_path.iterdir()) == []


def test_the_bge_cache_on_a_full_disk_is_an_oserror_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    import onnx
    import safetensors.numpy

    from kl_retrievers.backbones import bge

    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(b"not read: onnx.load is replaced")

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError(FULL_DISK)

    monkeypatch.setattr(onnx, "load", lambda *args, **kwargs: object())
    monkeypatch.setattr(bge, "dequantized_bert_state", lambda model, config: {"w": np.zeros(2, np.float32)})
    monkeypatch.setattr(bge, "_check_vocab", lambda folder, size: None)
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    target = tmp_path / "bge-f32"
    with pytest.raises(OSError) as info:
        bge.convert_int8_bert_onnx(source, target, expected_sha256=None, tokenizer_sha256={})
    assert info.value.errno == errno.ENOSPC and str(info.value).startswith(f"cannot save {target}: writing")
    assert isinstance(info.value.__cause__, SafetensorError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@onnx_needs
def test_load_model_of_an_onnx_folder_that_keeps_changing_tries_each_attempt_once(
    tmp_path: Path, exports: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.onnx import OnnxGaussianEncoder

    folder = tmp_path / "model-onnx"
    shutil.copytree(exports[0], folder)
    looks = iter(range(10_000))
    monkeypatch.setattr(_io, "folder_identity", lambda path: next(looks))  # every look sees another save
    setups: list[Any] = []
    real = OnnxGaussianEncoder._setup

    def setup(self: Any, *args: Any, **kwargs: Any) -> Any:
        setups.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OnnxGaussianEncoder, "_setup", setup)
    with pytest.raises(OSError, match="replaced by other saves"):
        load_model(folder, backend="onnx")
    assert len(setups) == _io.LOAD_ATTEMPTS  # not LOAD_ATTEMPTS ** 2 (a retry loop inside another)
