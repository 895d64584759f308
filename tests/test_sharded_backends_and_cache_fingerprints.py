"""Sharded encodings, the encoding cache and datasets: fixes of a probe's findings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.datasets import BeirDataset, DatasetError, load_beir
from kl_retrievers.encoding_cache import EncodingCache, model_fingerprint
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded

WORDS = "the cat sat on mat tea bread sun moon rock sea water green black star".split()


def _corpus(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    lines = [json.dumps({"_id": f"doc{i}", "text": " ".join(rng.choice(WORDS, size=4))}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny torch encoder folder, its int8 and float32 ONNX exports, and another model's folder."""
    root = tmp_path_factory.mktemp("models")
    enc = make_tiny_encoder()
    enc.save_pretrained(root / "torch")
    enc.export_onnx(root / "int8", quantize="int8")
    enc.export_onnx(root / "f32", quantize=None)
    make_tiny_encoder(seed=1).save_pretrained(root / "other")
    return {name: root / name for name in ("torch", "int8", "f32", "other")}


def _rewrite_manifest(out: Path, **changes: Any) -> None:
    """Change fields of a folder's manifest as an older kl-retrievers wrote them, and its shards' run keys with it."""
    manifest = {**_manifest(out), **changes}
    (out / "manifest.json").write_text(json.dumps(manifest))
    run = sharded._run_key(manifest)
    for meta_path in out.glob("shard-*/shard.json"):
        meta = json.loads(meta_path.read_text())
        meta["run"] = run
        meta_path.write_text(json.dumps(meta))


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


# ---------------------------------------------------------------- 1. a held folder lock is a user error
def test_a_held_folder_lock_is_an_expected_error_of_the_command_line(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fcntl = pytest.importorskip("fcntl")
    from kl_retrievers.cli import main

    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # another encode run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError, match=r"another encode run is writing into \S*out") as caught:
            encode_corpus(corpus, out, model=str(models["torch"]), shard_size=2, show_progress_bar=False)
        assert isinstance(caught.value, RuntimeError)  # as it was raised before
        argv = ["encode", "--input", str(corpus), "--out", str(out), "--shard-size", "2", "--model"]
        status = main([*argv, str(models["torch"]), "--no-progress"])
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "another encode run is writing into" in err and "internal error" not in err


def test_a_shard_that_fails_its_check_after_encoding_is_an_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl", n=4)
    monkeypatch.setattr(sharded, "_encode_local", lambda *args: None)  # as if something removed what it wrote
    with pytest.raises(OSError, match=r"shards \[0, 1\] failed their check after encoding.*deleted or replaced") as e:
        encode_corpus(corpus, tmp_path / "out", encoder=make_tiny_encoder(), shard_size=2, show_progress_bar=False)
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, BlockingIOError)  # waiting does not fix it


# ---------------------------------------------------------------- 2. a torch encoder's backend is recorded
def test_a_torch_encoding_records_its_backend_and_resumes_with_model_backend_torch(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from kl_retrievers.pretrained import load_model

    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    enc = load_model(str(models["torch"]), backend="torch", device="cpu")
    encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)
    assert _manifest(out)["model_backend"] == "torch"
    kw: dict[str, Any] = {"shard_size": 2, "show_progress_bar": False, "device": "cpu"}
    report = encode_corpus(corpus, out, model=str(models["torch"]), model_backend="torch", **kw)
    assert report.encoded == [] and report.reused == [0, 1, 2]


def test_a_torch_folder_whose_manifest_recorded_no_backend_still_resumes(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"shard_size": 2, "show_progress_bar": False, "device": "cpu"}
    encode_corpus(corpus, out, model=str(models["torch"]), model_backend="torch", **kw)
    _rewrite_manifest(out, model_backend=None)  # as an older kl-retrievers wrote it, in the run keys too
    report = encode_corpus(corpus, out, model=str(models["torch"]), model_backend="torch", **kw)
    assert report.encoded == [] and report.reused == [0, 1, 2]
    assert len(load_encoded(out)[1]) == 6


def test_a_ray_manifest_names_the_torch_backend_its_workers_run(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backends: list[str | None] = []

    def local_ray(todo: list[sharded.ShardSpec], *, model: str | None, device: str | None, **kw: Any) -> None:
        worker = sharded._RayShardWorker(model, device, kw["job"], kw.get("model_backend"), kw.get("onnx_options"))
        backends.append(kw.get("model_backend"))
        for spec in todo:
            done = worker({k: np.asarray([v]) for k, v in sharded.asdict(spec).items()})
            assert not done["error"][0], done["error"][0]

    monkeypatch.setattr(sharded, "_run_ray", local_ray)
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(models["torch"]), backend="ray", device="cpu", shard_size=2)
    assert _manifest(out)["model_backend"] == "torch" and backends == ["torch"]


# ---------------------------------------------------------------- 3. a refused run's manifest blocks no rerun
class _NoGpuRay(types.ModuleType):
    """Stands in for a started local ``ray`` without GPUs."""

    def __init__(self) -> None:
        super().__init__("ray")

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 4.0}


def test_a_ray_run_refused_before_its_first_shard_does_not_block_the_rerun_it_recommends(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", _NoGpuRay())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"shard_size": 2, "show_progress_bar": False}
    with pytest.raises(ValueError, match=r"fewer than one.*use device 'cpu'"):
        encode_corpus(corpus, out, model=str(models["torch"]), backend="ray", device="cuda", max_length=16, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    # the rerun with other settings (another model and max_length) takes the folder: nothing in it would be lost
    report = encode_corpus(corpus, out, model=str(models["int8"]), device="cpu", **kw)
    assert report.encoded == [0, 1, 2] and _manifest(out)["model_backend"] == "onnx"
    assert _manifest(out)["max_length"] is None
    with pytest.raises(ValueError, match=r"max_length differ"):  # a folder holding shards is still refused
        encode_corpus(corpus, out, model=str(models["int8"]), device="cpu", max_length=16, **kw)


# ---------------------------------------------------------------- 4. shards are checked against their reader
def test_iter_encoded_refuses_shards_of_another_model_or_kind(tmp_path: Path, models: dict[str, Path]) -> None:
    from kl_retrievers.pretrained import load_model

    corpus = _corpus(tmp_path / "c.jsonl")
    kw: dict[str, Any] = {"shard_size": 4, "show_progress_bar": False, "device": "cpu"}
    encode_corpus(corpus, tmp_path / "docs", model=str(models["torch"]), **kw)
    encode_corpus(corpus, tmp_path / "queries", model=str(models["torch"]), kind="query", **kw)
    mine = load_model(str(models["torch"]), device="cpu")
    other = load_model(str(models["other"]), device="cpu")
    g, ids = load_encoded(tmp_path / "docs", encoder=mine, kind="document")
    assert len(ids) == 6 and g.mean.shape[0] == 6
    fingerprints = (model_fingerprint(mine), model_fingerprint(other))
    with pytest.raises(ValueError, match=rf"fingerprint {fingerprints[0]}.*fingerprint {fingerprints[1]}"):
        next(iter_encoded(tmp_path / "docs", encoder=other))
    with pytest.raises(ValueError, match=rf"fingerprint {fingerprints[0]}.*fingerprint {fingerprints[1]}"):
        load_encoded(tmp_path / "docs", encoder=other, kind="document")
    with pytest.raises(ValueError, match=r"holds 'query' encodings.*kind='document'"):
        load_encoded(tmp_path / "queries", encoder=mine, kind="document")
    with pytest.raises(ValueError, match=r"kind must be one of \('document', 'query'\) or None; got 'documents'"):
        iter_encoded(tmp_path / "docs", kind="documents")
    assert len(load_encoded(tmp_path / "queries", kind="query")[1]) == 6  # unchecked without encoder / kind
    assert len(load_encoded(tmp_path / "docs")[1]) == 6


def test_iter_encoded_accepts_the_same_weights_on_the_other_backend(tmp_path: Path, models: dict[str, Path]) -> None:
    from kl_retrievers.pretrained import load_model

    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(models["torch"]), shard_size=4, show_progress_bar=False, device="cpu")
    onnx = load_model(str(models["f32"]))
    assert (
        type(onnx).__name__ == "OnnxGaussianEncoder" and onnx.weights_sha256 == _manifest(out)["model_weights_sha256"]
    )
    assert len(load_encoded(out, encoder=onnx, kind="document")[1]) == 6


# ---------------------------------------------------------------- 5. no torn read from the encoding cache
def test_an_entry_replaced_while_it_is_read_is_a_miss_not_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import encoding_cache

    cache = EncodingCache(tmp_path)
    key, ids = {"model": "m"}, ["a", "b"]
    first = np.full((2, 3), 1.0, np.float32)
    cache.save("documents", key, ids, {"mean": first, "var": first + 1})
    real_read = encoding_cache.read_sha256
    calls: list[Any] = []

    def read_then_replace(source: Any) -> Any:
        calls.append(source)
        if len(calls) == 2:  # the second array is about to be read: another process saves the same key
            second = np.full((2, 3), 5.0, np.float32)
            EncodingCache(tmp_path).save("documents", key, ids, {"mean": second, "var": second + 1})
        return real_read(source)

    monkeypatch.setattr(encoding_cache, "read_sha256", read_then_replace)
    got = cache.load("documents", key, ids)
    monkeypatch.setattr(encoding_cache, "read_sha256", real_read)
    assert len(calls) == 2
    if got is not None:  # a hit must be one save's arrays, never one's means with the other's variances
        assert float(got["var"][0, 0]) == float(got["mean"][0, 0]) + 1, (got["mean"], got["var"])
    again = cache.load("documents", key, ids)  # the entry is intact: the new save's
    assert again is not None and float(again["mean"][0, 0]) == 5.0 and float(again["var"][0, 0]) == 6.0


# ---------------------------------------------------------------- 6. one ONNX graph, one fingerprint
def test_an_onnx_graph_has_one_fingerprint_however_it_is_loaded(tmp_path: Path, models: dict[str, Path]) -> None:
    from kl_retrievers.pretrained import load_model

    by_path = load_model(str(models["int8"]))
    copy = tmp_path / "copy"
    shutil.copytree(models["int8"], copy)
    from_copy = load_model(str(copy))
    assert by_path.name_or_path != from_copy.name_or_path
    assert model_fingerprint(by_path) == model_fingerprint(from_copy)
    # what the graph's SHA-256 does not cover still tells models apart: the quantisation (another graph),
    # the torch model (another class), another model
    others = {model_fingerprint(load_model(str(models[name]))) for name in ("f32", "torch", "other")}
    assert model_fingerprint(by_path) not in others and len(others) == 3


def test_a_bundled_graph_by_name_and_by_path_share_a_fingerprint() -> None:
    from kl_retrievers import load_default_model
    from kl_retrievers.pretrained import load_model

    by_name = load_default_model(backend="onnx")
    by_path = load_model(str(by_name.path), backend="onnx")
    assert model_fingerprint(by_name) == model_fingerprint(by_path)


def test_a_folder_fingerprinted_with_the_graph_path_still_resumes(tmp_path: Path, models: dict[str, Path]) -> None:
    from kl_retrievers.encoding_cache import _legacy_fingerprint
    from kl_retrievers.pretrained import load_model

    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"model": str(models["f32"]), "shard_size": 2, "show_progress_bar": False}
    encode_corpus(corpus, out, **kw)
    legacy = _legacy_fingerprint(load_model(str(models["f32"])))
    assert legacy is not None and legacy != _manifest(out)["model_fingerprint"]
    _rewrite_manifest(out, model_fingerprint=legacy)  # as when the ONNX fingerprint hashed the folder path
    report = encode_corpus(corpus, out, **kw)
    assert report.encoded == [] and report.reused == [0, 1, 2]
    assert len(load_encoded(out, encoder=load_model(str(models["f32"])), kind="document")[1]) == 6


# ---------------------------------------------------------------- 7. datasets: unknown ids, padded ids
def _dataset() -> BeirDataset:
    corpus = {"a": {"text": "x"}, "b": {"text": "y"}}
    return BeirDataset(Path("."), "test", corpus, {"q": "x", "r": "y"}, {"q": {"a": 1}, "r": {"b": 1}})


def test_subset_refuses_unknown_document_ids_naming_them() -> None:
    with pytest.raises(DatasetError, match=r"2 document id\(s\) not in the dataset's corpus.*'zz', 'yy'"):
        _dataset().subset(["q"], ["a", "zz", "yy"])


def test_subset_refuses_unknown_query_ids_naming_them() -> None:
    with pytest.raises(DatasetError, match=r"1 query id\(s\) not in the dataset's queries of split 'test'.*'nope'"):
        _dataset().subset(["q", "nope"], ["a"])
    small = _dataset().subset(["q", "r"], ["a"])  # a known query left without judgements is still dropped
    assert small.query_ids == ["q"] and small.qrels == {"q": {"a": 1}}


def test_sharded_encode_refuses_an_id_with_surrounding_whitespace_as_load_beir_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": "d0", "text": "cat"}, {"_id": "d1 ", "text": "sea"}]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(
        ValueError, match=r"corpus\.jsonl, line 2 \(record 2\): the id 'd1 ' has leading or trailing"
    ) as e:
        sharded.plan_shards(corpus, shard_size=1)
    from kl_retrievers.cli import read_texts

    with pytest.raises(ValueError) as one_shot:  # kl-retrievers encode / index: the same refusal, word for word
        read_texts(corpus)
    assert str(one_shot.value) == str(e.value)
    with pytest.raises(ValueError, match=r"line 2 \(record 2\).*'d1 '"):
        encode_corpus(corpus, tmp_path / "out", encoder=make_tiny_encoder(), shard_size=1, show_progress_bar=False)
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "cat"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td0\t1\n")
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError, match=r"'d1 ' has leading or trailing"):
        load_beir(tmp_path)
