"""CLI nits (J2): ``demo`` refuses a blank query as ``search`` does; ``encode -o y.npy`` warns that it writes a
folder; ``--backend ray`` takes ``--device cpu:0`` as every other path does (checked before Ray starts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import cli_error_line, make_tiny_encoder
from kl_retrievers import cli, sharded
from kl_retrievers.cli import main
from kl_retrievers.sharded import encode_corpus


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder().save_pretrained(tmp_path_factory.mktemp("j2") / "model")


def _no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded")


@pytest.mark.parametrize(
    ("queries", "named"), [([""], "query ''"), (["  "], "query '  '"), (["why does bread rise", "\t"], "query 2")]
)
def test_demo_refuses_a_blank_query_like_search(
    queries: list[str], named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_load_encoder", _no_model)  # refused before the model loads
    assert main(["demo", *queries]) == 2
    line = cli_error_line(capsys, "demo")
    assert f"{named}" in line and "is blank (empty or whitespace only" in line and "give a query with words" in line


# ---------------------------------------------------------------- encode --out with a file's suffix
class _Run:
    def __init__(self, model: Path, tmp_path: Path) -> None:
        self.model, self.tmp = model, tmp_path

    def encode(self, out: Path, *extra: str) -> int:
        return main(["encode", "cat", "tea", "-o", str(out), "--model", str(self.model), "--no-progress", *extra])


@pytest.mark.parametrize("name", ["y.npy", "y.NPZ", "y.json", "y.txt"])
def test_encode_out_with_a_file_suffix_warns_that_it_is_a_folder(
    model: Path, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / name
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert _Run(model, tmp_path).encode(out) == 0  # a warning only: the folder is still written
    assert out.is_dir() and f"--out {out}: the output is a FOLDER" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert _Run(model, tmp_path).encode(out) == 0  # replacing the earlier output: known to be a folder by now
    assert "FOLDER" not in caplog.text


def test_encode_streaming_out_with_a_file_suffix_warns(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(["cat", "tea"])))
    out = tmp_path / "y.npy"
    argv = ["encode", "-i", str(corpus), "-o", str(out), "--model", str(model), "--no-progress", "--shard-size", "1"]
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert main(argv) == 0
    assert (out / "manifest.json").is_file() and "the output is a FOLDER" in caplog.text, caplog.text


@pytest.mark.parametrize("name", ["y", "y.safetensors", "y.v2"])
def test_encode_out_without_a_file_suffix_does_not_warn(
    model: Path, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.cli"):
        assert _Run(model, tmp_path).encode(tmp_path / name) == 0
    assert "FOLDER" not in caplog.text


# ---------------------------------------------------------------- --backend ray --device cpu:N
class _RayReached(Exception):
    pass


def _ray_reached(*args: object, **kwargs: object) -> None:
    raise _RayReached(kwargs.get("device"))


@pytest.mark.parametrize("device", ["cpu:0", "cpu:1", "cpu", "cuda", "cuda:0"])
def test_ray_accepts_cpu_n_before_starting(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    monkeypatch.setattr(sharded, "_run_ray", _ray_reached)  # Ray is never started: the device check came first
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "d0", "text": "cat"}) + "\n")
    with pytest.raises(_RayReached, match=device):
        encode_corpus(corpus, tmp_path / "out", model=str(model), backend="ray", device=device, show_progress_bar=False)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("CPU", r"device must be cpu, cuda or mps; got 'CPU'"),
        ("tpu", r"device must be cpu, cuda or mps; got 'tpu'"),
        ("cpu:01", r"device must be cpu, cuda or mps; got 'cpu:01'"),
        ("mps", r"device 'mps' cannot run backend='ray'"),
        ("cuda:1", r"'cuda:1'.*use device 'cuda'"),
    ],
)
def test_ray_refuses_other_devices_before_starting(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, device: str, message: str
) -> None:
    monkeypatch.setattr(sharded, "_run_ray", _ray_reached)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "d0", "text": "cat"}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        encode_corpus(corpus, out, model=str(model), backend="ray", device=device, show_progress_bar=False)
    assert not out.exists()


def test_cli_backend_ray_takes_device_cpu_0(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sharded, "_run_ray", _ray_reached)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "d0", "text": "cat"}) + "\n")
    argv = ["encode", "-i", str(corpus), "-o", str(tmp_path / "out"), "--model", str(model), "--no-progress"]
    main([*argv, "--backend", "ray", "--device", "cpu:0"])  # the CLI reports the stub's exception as an error line
    line = cli_error_line(capsys, "encode")
    assert "_RayReached: cpu:0" in line, line  # Ray's turn came, with the device as given
