"""Sharded encoding: resuming an int8 encoding with another batch size, Ray's devices, resume/merge defects."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.pretrained import Backend
from kl_retrievers.sharded import encode_corpus, load_encoded

WORDS = "the cat sat on mat tea bread sun moon rock sea water green black star".split()


def _corpus(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        lines.append(json.dumps({"_id": f"doc{i}", "text": words}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny torch encoder folder and its int8 ONNX export (not batch-invariant)."""
    root = tmp_path_factory.mktemp("models")
    enc = make_tiny_encoder()
    enc.save_pretrained(root / "torch")
    enc.export_onnx(root / "int8", quantize="int8")
    return {"torch": root / "torch", "int8": root / "int8"}


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("shard-*/*"))}


def test_resuming_an_int8_encoding_with_another_batch_size_is_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    from kl_retrievers.pretrained import load_model

    assert load_model(str(models["int8"])).batch_invariant is False
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"model": str(models["int8"]), "shard_size": 5, "show_progress_bar": False}
    encode_corpus(corpus, out, batch_size=4, **kw)
    before = _shard_bytes(out)
    with pytest.raises(ValueError, match=r"batch_size 4.*batch_size 2.*--batch-size 4") as info:
        encode_corpus(corpus, out, batch_size=2, **kw)
    assert "nothing was overwritten" in str(info.value)
    assert _shard_bytes(out) == before and json.loads((out / "manifest.json").read_text())["batch_size"] == 4
    report = encode_corpus(corpus, out, batch_size=4, **kw)  # the same batch size resumes
    assert report.encoded == [] and report.reused == [0, 1, 2]
    assert len(load_encoded(out)[1]) == 12


def test_a_batch_invariant_encoder_resumes_with_any_batch_size(tmp_path: Path, models: dict[str, Path]) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"model": str(models["torch"]), "shard_size": 5, "show_progress_bar": False}
    encode_corpus(corpus, out, batch_size=4, **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "batch_size" not in manifest  # torch: the batch does not change a text's encoding
    report = encode_corpus(corpus, out, batch_size=2, **kw)
    assert report.reused == [0, 1, 2] and report.encoded == []


def test_an_int8_folder_written_before_batch_sizes_were_recorded_resumes_with_a_warning(
    tmp_path: Path, models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    kw: dict[str, Any] = {"model": str(models["int8"]), "shard_size": 5, "show_progress_bar": False}
    encode_corpus(corpus, out, batch_size=4, **kw)
    # as an older kl-retrievers wrote it: no batch_size in the manifest, nor in the shards' run key
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["batch_size"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    run = sharded._run_key(manifest)
    for meta_path in out.glob("shard-*/shard.json"):
        meta = json.loads(meta_path.read_text())
        meta["run"] = run
        meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.sharded"):
        report = encode_corpus(corpus, out, batch_size=2, **kw)
    assert report.reused == [0, 1, 2] and "written without its batch_size" in caplog.text
    assert "batch_size" not in json.loads((out / "manifest.json").read_text())
    assert len(load_encoded(out)[1]) == 12


def _no_ray(*args: object, **kwargs: object) -> None:
    raise AssertionError("Ray was started")


@pytest.mark.parametrize(
    ("device", "message"),
    [("mps", r"device 'mps' cannot run backend='ray'.*backend='local'"), ("cuda:1", r"'cuda:1'.*use device 'cuda'")],
)
def test_ray_refuses_a_device_its_actors_cannot_use_before_starting(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, device: str, message: str
) -> None:
    monkeypatch.setattr(sharded, "_run_ray", _no_ray)
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        encode_corpus(corpus, out, model=str(models["torch"]), backend="ray", device=device, show_progress_bar=False)
    assert not out.exists()  # refused before anything was written


def test_ray_manifest_names_the_backend_the_workers_run(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver picks the workers' backend for their device (``cpu``), not for its own (a CUDA GPU here)."""
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: True)  # the driver sees a GPU
    workers: list[Any] = []

    def local_ray(
        todo: list[sharded.ShardSpec],
        *,
        model: str | None,
        device: str | None,
        job: dict[str, Any],
        model_backend: Backend | None = None,
        onnx_options: dict[str, Any] | None = None,
        **_: object,
    ) -> None:
        worker = sharded._RayShardWorker(model, device, job, model_backend, onnx_options)  # as a Ray actor would
        workers.append(worker)
        for spec in todo:
            done = worker({k: np.asarray([v]) for k, v in sharded.asdict(spec).items()})
            assert not done["error"][0], done["error"][0]

    monkeypatch.setattr(sharded, "_run_ray", local_ray)
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(models["int8"]), backend="ray", device="cpu", shard_size=5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_backend"] == "onnx" and type(workers[0].encoder).__name__ == "OnnxGaussianEncoder"
    assert len(load_encoded(out)[1]) == 12


def test_an_input_rewritten_during_the_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"cat {i}"}) + "\n" for i in range(6)))
    real = sharded.encode_shard

    def rewriting(encoder: object, *, spec: sharded.ShardSpec, **kw: Any) -> int:
        n = real(encoder, spec=spec, **kw)
        if spec.index == 0:  # the file is rewritten while the run goes on: same size and records, other texts
            corpus.write_text(corpus.read_text().replace("cat", "sea"))
        return n

    monkeypatch.setattr(sharded, "encode_shard", rewriting)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"changed while it was being encoded: shard 1"):
        encode_corpus(corpus, out, encoder=make_tiny_encoder(), shard_size=2, show_progress_bar=False)
    assert not (out / "shard-00001").exists()


def test_shard_digests_cover_blank_lines_and_a_byte_order_mark(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"\xef\xbb\xbf\n one\n\n two\r\n  \nthree\n\n\nfour\n\n")
    specs, _, digests = sharded._plan(corpus, 2, "auto")
    assert [s.rows for s in specs] == [2, 2] and len(digests) == 2
    for spec, digest in zip(specs, digests, strict=True):
        sharded.read_shard(corpus, spec, sha256=digest)  # the planned bytes match
    report = encode_corpus(corpus, tmp_path / "out", encoder=make_tiny_encoder(), shard_size=2, show_progress_bar=False)
    assert report.encoded == [0, 1] and load_encoded(tmp_path / "out")[1] == ["0", "1", "2", "3"]


class _ShortEncoder:
    """Returns one row fewer than it is given texts (a broken encoder)."""

    name_or_path = "short"

    def __init__(self) -> None:
        self.inner = make_tiny_encoder()

    def encode_documents(self, texts: list[str], **kw: Any) -> Any:
        return self.inner.encode_documents(texts[:-1], **kw)


def test_an_encoder_returning_too_few_rows_writes_no_shard(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "c.jsonl", n=4)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"shard-00000: the encoder returned mean \(1, 8\).*2 texts"):
        encode_corpus(corpus, out, encoder=_ShortEncoder(), shard_size=2, show_progress_bar=False)
    assert not (out / "shard-00000").exists()


def test_a_shard_replaced_by_a_concurrent_run_is_named_with_its_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl", n=4)
    real = sharded.encode_shard

    def raced(encoder: object, *, spec: sharded.ShardSpec, **kw: Any) -> int:
        n = real(encoder, spec=spec, **kw)
        if spec.index == 1:  # another run, with other settings, writes the same shard right after this one
            meta_path = Path(kw["out"]) / spec.name / "shard.json"
            meta = json.loads(meta_path.read_text())
            meta["run"] = "f" * 64
            meta_path.write_text(json.dumps(meta))
        return n

    monkeypatch.setattr(sharded, "encode_shard", raced)
    with pytest.raises(RuntimeError, match=r"shards \[1\].*another encode run \(its run key ffffffffffff.*one at a"):
        encode_corpus(corpus, tmp_path / "out", encoder=make_tiny_encoder(), shard_size=2, show_progress_bar=False)


def test_resume_bookkeeping_is_linear_in_the_shard_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which shards to reuse was a list membership test per shard: quadratic (10,000 shards took seconds)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"text {i}\n" for i in range(60)))
    out = tmp_path / "out"
    compared = 0
    real_eq = sharded.ShardSpec.__eq__

    def counting_eq(self: sharded.ShardSpec, other: object) -> bool:
        nonlocal compared
        compared += 1
        return real_eq(self, other)

    monkeypatch.setattr(sharded.ShardSpec, "__eq__", counting_eq)
    report = encode_corpus(corpus, out, encoder=make_tiny_encoder(), shard_size=1, show_progress_bar=False)
    assert report.encoded == list(range(60))
    assert compared < 60, compared  # old code: 60 * 61 / 2 comparisons in each of two passes


def test_a_shard_with_too_few_rows_but_valid_checksums_is_encoded_again(tmp_path: Path) -> None:
    """As an older kl-retrievers wrote it from a broken encoder: every resume kept it, every read refused it."""
    corpus = _corpus(tmp_path / "c.jsonl", n=6)
    out = tmp_path / "out"
    enc = make_tiny_encoder()
    encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)
    shard = out / "shard-00001"
    np.save(shard / "mean.npy", np.load(shard / "mean.npy")[:1], allow_pickle=False)
    np.save(shard / "var.npy", np.load(shard / "var.npy")[:1], allow_pickle=False)
    meta = json.loads((shard / "shard.json").read_text())
    meta["sha256"] = {name: sharded._sha256(shard / name) for name in ("mean.npy", "var.npy", "ids.json")}
    (shard / "shard.json").write_text(json.dumps(meta))
    corrupt = r"shard-00001 is corrupt \(\S*shard-00001: mean.npy \(1, 8\).*rerun the encode command"
    with pytest.raises(ValueError, match=corrupt):
        load_encoded(out)
    report = encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)
    assert report.encoded == [1] and report.reused == [0, 2]
    g, ids = load_encoded(out)
    assert g.mean.shape == (6, 8) and len(ids) == 6


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    corpus = _corpus(tmp_path / "c.jsonl", n=4)
    out = tmp_path / "out"
    enc = make_tiny_encoder()
    encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)
    gone = out / "shard-00001"
    for name in ("mean.npy", "var.npy", "ids.json", "shard.json"):
        (gone / name).unlink()
    gone.rmdir()
    fd = os.open(out, os.O_RDONLY)  # another encode run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=r"another encode run is writing into \S*out"):
            encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)
        assert not (out / "shard-00001").exists()
    finally:
        os.close(fd)
    report = encode_corpus(corpus, out, encoder=enc, shard_size=2, show_progress_bar=False)  # released: resumes
    assert report.encoded == [1] and report.reused == [0]


def test_an_unlockable_folder_warns_and_does_not_chain_the_runs_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sharded.os, "open", refuse)
    with (
        caplog.at_level(logging.WARNING, logger="kl_retrievers.sharded"),
        pytest.raises(ValueError, match="the run's own error") as caught,
        sharded._folder_lock(tmp_path),
    ):
        raise ValueError("the run's own error")
    assert caught.value.__context__ is None  # not "during handling of the above exception"
    assert "encoding unlocked" in caplog.text and "not guarded" in caplog.text
