"""A review of the sharded encodings of b3205ab (findings 2-5; finding 1 is in
test_sharded_backends_and_cache_fingerprints).

2. ``iter_encoded(encoder=)`` accepted another model on the same backend whose weights were the manifest's.
3. Without ``flock``, a folder holding only a manifest was taken over while its run could still be encoding.
4. Shards missing after a Ray job (node-local ``--out``) read as "another encode run", a ``BlockingIOError``.
5. A folder written before fingerprints, read with the model that wrote it, said "another model".
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded

WORDS = "the cat sat on mat tea bread sun moon rock sea water green black star".split()
KW: dict[str, Any] = {"shard_size": 2, "show_progress_bar": False}


def _corpus(path: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    lines = [json.dumps({"_id": f"doc{i}", "text": " ".join(rng.choice(WORDS, size=4))}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny torch model, its float32 ONNX export, the same weights with another pooling and beta (torch and
    ONNX), and another model."""
    from kl_retrievers.encoder import GaussianEncoder

    root = tmp_path_factory.mktemp("models")
    make_tiny_encoder().save_pretrained(root / "torch")
    GaussianEncoder.from_pretrained(root / "torch").export_onnx(root / "onnx", quantize=None)
    GaussianEncoder.from_pretrained(root / "torch").export_onnx(root / "onnx-int8", quantize="int8")
    other_config = GaussianEncoder.from_pretrained(root / "torch")
    other_config.config.pooling = "mean"
    other_config.config.beta = 5.0
    other_config.save_pretrained(root / "torch-mean")
    GaussianEncoder.from_pretrained(root / "torch-mean").export_onnx(root / "onnx-mean", quantize=None)
    make_tiny_encoder(seed=1).save_pretrained(root / "other")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def torch_shards(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    """Shards of ``models["torch"]`` encoded on the torch backend."""
    root = tmp_path_factory.mktemp("shards")
    encode_corpus(_corpus(root / "c.jsonl"), root / "out", model=str(models["torch"]), device="cpu", **KW)
    return root / "out"


# ---------------------------------------------------------------- 2. the weights alone do not make the model
def test_the_same_weights_with_another_config_on_the_same_backend_are_refused(
    torch_shards: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    mine = load_model(str(models["torch"]), backend="torch", device="cpu")
    twin = load_model(str(models["torch-mean"]), backend="torch", device="cpu")
    assert twin.weights_sha256 == mine.weights_sha256 == _manifest(torch_shards)["model_weights_sha256"]
    with pytest.raises(
        ValueError, match=r"the settings differ \(shards vs encoder\): beta 1\.0 vs 5\.0; pooling 'cls'"
    ):
        load_encoded(torch_shards, encoder=twin, kind="document")
    with pytest.raises(ValueError, match=r"torch backend\), but the given encoder is .*torch-mean.*torch backend"):
        next(iter_encoded(torch_shards, encoder=twin))
    assert len(load_encoded(torch_shards, encoder=mine, kind="document")[1]) == 4


def test_the_same_weights_with_another_config_on_the_other_backend_are_refused(
    torch_shards: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    onnx_twin = load_model(str(models["onnx-mean"]))
    assert type(onnx_twin).__name__ == "OnnxGaussianEncoder"
    assert onnx_twin.weights_sha256 == _manifest(torch_shards)["model_weights_sha256"]
    with pytest.raises(ValueError, match=r"settings differ .*pooling 'cls' vs 'mean'"):
        load_encoded(torch_shards, encoder=onnx_twin, kind="document")
    # the model's own export, with the same config and tokenizer, is still read as that model's
    assert len(load_encoded(torch_shards, encoder=load_model(str(models["onnx"])), kind="document")[1]) == 4


def test_another_tokenizer_on_the_other_backend_is_refused(
    tmp_path: Path, torch_shards: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    out = tmp_path / "out"
    shutil.copytree(torch_shards, out)
    manifest = _manifest(out)
    assert isinstance(manifest["model_config"], dict) and manifest["model_config"]["pooling"] == "cls"
    manifest["model_tokenizer_sha256"] = "0" * 64  # for information only: the run key does not cover it
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"settings differ .*tokenizer SHA-256 000000000000\.\.\. vs"):
        load_encoded(out, encoder=load_model(str(models["onnx"])))


def test_the_same_weights_quantised_otherwise_on_the_same_backend_are_refused_naming_it(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    out = tmp_path / "out"
    encode_corpus(_corpus(tmp_path / "c.jsonl"), out, model=str(models["onnx"]), **KW)
    int8 = load_model(str(models["onnx-int8"]))
    assert int8.weights_sha256 == _manifest(out)["model_weights_sha256"] and _manifest(out)["model_backend"] == "onnx"
    with pytest.raises(
        ValueError, match=r"onnx backend\).*settings differ \(shards vs encoder\): .*quantize None vs 'int8'"
    ):
        load_encoded(out, encoder=int8)
    assert len(load_encoded(out, encoder=load_model(str(models["onnx"])))[1]) == 4


# ---------------------------------------------------------------- 3. no takeover without a lock
def _manifest_only(tmp_path: Path, models: dict[str, Path]) -> tuple[Path, Path, str]:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(models["torch"]), device="cpu", **KW)
    for shard in out.glob("shard-*"):  # as a run that wrote its manifest and is encoding its first shard
        shutil.rmtree(shard)
    return corpus, out, (out / "manifest.json").read_text()


def test_without_flock_a_manifest_only_folder_is_not_taken_over(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, out, before = _manifest_only(tmp_path, models)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: no flock
    with pytest.raises(
        ValueError, match=r"holds only the manifest of a run with other settings \(max_length diff.*"
    ) as e:
        encode_corpus(corpus, out, model=str(models["torch"]), device="cpu", max_length=16, **KW)
    assert "cannot be locked" in str(e.value) and f"delete {out / 'manifest.json'}" in str(e.value)
    assert (out / "manifest.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    monkeypatch.delitem(sys.modules, "fcntl")  # locked again: the stopped run's manifest is replaced
    report = encode_corpus(corpus, out, model=str(models["torch"]), device="cpu", max_length=16, **KW)
    assert report.encoded == [0, 1] and _manifest(out)["max_length"] == 16


def test_a_file_system_without_flock_does_not_count_as_locked(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fcntl = pytest.importorskip("fcntl")
    corpus, out, before = _manifest_only(tmp_path, models)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")  # ENOLCK: some network or FUSE mounts

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ValueError, match=r"holds only the manifest .*cannot be locked"):
        encode_corpus(corpus, out, model=str(models["other"]), device="cpu", **KW)
    assert (out / "manifest.json").read_text() == before
    with sharded._folder_lock(out) as locked:
        assert locked is False


def test_the_folder_lock_says_when_it_is_held(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    with sharded._folder_lock(tmp_path) as locked:
        assert locked is True


# ---------------------------------------------------------------- 4. shards lost after the run: not "busy"
def test_shards_a_ray_job_wrote_out_of_sight_name_shared_storage(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    corpus = _corpus(tmp_path / "c.jsonl")
    # workers on other nodes: every shard reported done, written on their own disks
    monkeypatch.setattr(sharded, "_run_ray", lambda todo, **kw: None)
    with pytest.raises(OSError, match=r"shards \[0, 1\] failed their check after encoding") as e:
        encode_corpus(corpus, tmp_path / "out", model=str(models["torch"]), backend="ray", device="cpu", **KW)
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, BlockingIOError)
    message = str(e.value)
    assert "--out must be on storage every node shares" in message and "deleted or replaced files" in message
    assert "another encode run wrote into it" not in message  # this run held the folder's lock
    argv = ["encode", "--input", str(corpus), "--out", str(tmp_path / "cli"), "--shard-size", "2", "--no-progress"]
    status = main([*argv, "--model", str(models["torch"]), "--backend", "ray", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "every node shares" in err and "internal error" not in err


# ---------------------------------------------------------------- 5. a folder without a fingerprint
def _before_fingerprints(tmp_path: Path, models: dict[str, Path]) -> tuple[Path, Path]:
    """A folder as a kl-retrievers from before fingerprints (and run keys) wrote it."""
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(models["torch"]), device="cpu", **KW)
    manifest = _manifest(out)
    for key in ("model_fingerprint", "model_backend", "model_weights_sha256", "model_config", "model_tokenizer_sha256"):
        manifest.pop(key, None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    for meta_path in out.glob("shard-*/shard.json"):
        meta = json.loads(meta_path.read_text())
        del meta["run"]
        meta_path.write_text(json.dumps(meta))
    return corpus, out


def test_a_folder_without_a_fingerprint_says_it_cannot_be_verified_and_the_way_out(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    corpus, out = _before_fingerprints(tmp_path, models)
    mine = load_model(str(models["torch"]), backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"recorded no model fingerprint.*cannot be verified") as e:
        load_encoded(out, encoder=mine)
    assert "another model" not in str(e.value)
    assert "encode command again" in str(e.value) and "encoder=None" in str(e.value)
    assert len(load_encoded(out)[1]) == 4  # unchecked
    # the way out the message gives: the encode command again with that model reuses every shard, recording its
    # fingerprint, after which the folder is checked
    report = encode_corpus(corpus, out, model=str(models["torch"]), device="cpu", **KW)
    assert report.encoded == [] and report.reused == [0, 1] and "model_fingerprint" in _manifest(out)
    assert len(load_encoded(out, encoder=mine, kind="document")[1]) == 4


def test_a_folder_without_a_fingerprint_is_not_resumed_by_another_model_name(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    corpus, out = _before_fingerprints(tmp_path, models)
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(model differ\)"):  # its name is all it knows
        encode_corpus(corpus, out, model=str(models["other"]), device="cpu", **KW)
    assert (out / "manifest.json").read_text() == before
