"""Devices on the ONNX backend (one rule and message with torch's), and ``onnx_cli``'s ``-v`` and not-found message.

- ``--device tpu`` (or ``CPU``) on the default (ONNX) backend said "the ONNX backend runs on cpu only ... (use
  backend='torch')", though ``tpu`` is no device at all: the torch backend says "device must be cpu, cuda or
  mps". ``load_model(device="cpu:0")`` on ONNX was refused while the ONNX encoder's ``encode(device="cpu:0")``
  took it; and the CLI advised the Python keyword ``backend='torch'``, not its ``--model-backend torch``.
- ``python -m kl_retrievers.onnx_cli`` took ``-v`` only before the subcommand, and its model-not-found error did
  not name the bundled models as ``kl-retrievers``' does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import cli_error_line
from kl_retrievers import load_model
from kl_retrievers.cli import main as cli_main

NOT_A_DEVICE = ["tpu", "CPU", "Cuda", "cpu:01", " cpu", "cpu:", "cpu:-1", "cpu:x", "xla", "meta", "cuda:0x1", "cpu:١"]
CPU = ["cpu", "cpu:0", "cpu:1", "cpu:12"]
GPU = ["cuda", "cuda:0", "cuda:3", "mps", "mps:0"]


@pytest.fixture(scope="module")
def onnx_encoder() -> Any:
    return load_model(backend="onnx")  # the default model's shipped int8 graph: no torch needed


@pytest.mark.parametrize("device", NOT_A_DEVICE)
def test_device_type_refuses_what_torch_refuses_in_the_torch_backends_words(device: str) -> None:
    from kl_retrievers._encoding import device_type

    with pytest.raises(ValueError) as caught:
        device_type(device)
    assert str(caught.value) == f"device must be cpu, cuda or mps; got {device!r}"


def test_device_type_reads_each_kind_and_agrees_with_the_torch_backend() -> None:
    from kl_retrievers._encoding import device_type

    assert [device_type(d) for d in CPU] == ["cpu"] * len(CPU)
    assert [device_type(d) for d in GPU] == ["cuda"] * 3 + ["mps"] * 2
    torch = pytest.importorskip("torch")
    from kl_retrievers.encoder import _pick_device

    assert device_type(torch.device("cpu")) == "cpu" and device_type(torch.device("cuda", 1)) == "cuda"
    for device in NOT_A_DEVICE:  # the torch backend's own check: the same words
        with pytest.raises(ValueError, match="^device must be cpu, cuda or mps; got "):
            _pick_device(device)
    for device in CPU:
        assert _pick_device(device).type == "cpu"


@pytest.mark.parametrize("device", ["tpu", "CPU"])
def test_onnx_encoder_and_load_model_refuse_a_non_device_as_the_torch_backend_does(
    onnx_encoder: Any, device: str
) -> None:
    """They said "the ONNX backend runs on cpu only ... (use backend='torch')", which torch does not run either."""
    message = f"^device must be cpu, cuda or mps; got {device!r}$"
    with pytest.raises(ValueError, match=message):
        onnx_encoder.encode_documents(["a"], device=device)
    with pytest.raises(ValueError, match=message):
        load_model(device=device)
    with pytest.raises(ValueError, match=message):
        load_model(device=device, backend="onnx")


def test_load_model_on_onnx_takes_cpu_n_as_the_encoder_does(onnx_encoder: Any) -> None:
    """``load_model(device="cpu:0")`` was refused while ``encode(device="cpu:0")`` and ``to("cpu:0")`` took it."""
    assert onnx_encoder.encode_documents(["a"], device="cpu:0").mean.shape[0] == 1
    loaded = load_model(device="cpu:0", backend="onnx")
    assert type(loaded).__name__ == "OnnxGaussianEncoder"
    assert load_model(device="cpu:1").encode_queries(["a"], device="cpu:1").mean.shape[0] == 1


@pytest.mark.parametrize("device", ["cuda", "mps", "cuda:1"])
def test_a_gpu_on_onnx_still_says_to_use_the_torch_backend_in_python(onnx_encoder: Any, device: str) -> None:
    message = f"the ONNX backend runs on cpu only; got device={device!r} \\(use backend='torch'\\)"
    with pytest.raises(ValueError, match=message):
        onnx_encoder.encode_documents(["a"], device=device)
    with pytest.raises(ValueError, match=message):
        load_model(device=device, backend="onnx")


@pytest.mark.parametrize("command", ["encode", "index"])
@pytest.mark.parametrize("device", ["tpu", "CPU"])
def test_cli_refuses_a_non_device_in_the_torch_backends_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, device: str
) -> None:
    assert cli_main([command, "a", "-o", str(tmp_path / "out"), "--device", device]) == 2
    line = cli_error_line(capsys, command)
    assert line.endswith(f"device must be cpu, cuda or mps; got {device!r}"), line
    assert cli_main([command, "a", "-o", str(tmp_path / "out"), "--device", device, "--model-threads", "1"]) == 2
    line = cli_error_line(capsys, command)  # was "...which runs on cpu; got --device tpu (... to run on tpu)"
    assert line.endswith(f"device must be cpu, cuda or mps; got {device!r}"), line


@pytest.mark.parametrize("command", ["encode", "index"])
def test_cli_names_its_own_flag_for_a_gpu_on_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv = [command, "a", "-o", str(tmp_path / "out"), "--device", "cuda", "--model-backend", "onnx"]
    assert cli_main(argv) == 2
    line = cli_error_line(capsys, command)
    assert "--model-backend torch" in line and "backend='torch'" not in line, line
    assert "--device cuda" in line, line
    assert not (tmp_path / "out").exists()


def test_cli_runs_cpu_0_on_onnx_with_or_without_session_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, extra in enumerate(([], ["--model-backend", "onnx"], ["--model-threads", "1"])):
        out = tmp_path / f"out{i}"
        assert cli_main(["encode", "a", "-o", str(out), "--device", "cpu:0", *extra]) == 0, capsys.readouterr().err
        assert out.is_dir()


# ---------------------------------------------------------------------- onnx_cli


@pytest.mark.parametrize(
    "argv",
    [["-v", "export", "a", "b"], ["export", "a", "b", "-v"], ["export", "--verbose", "a", "b"], ["bundle", "-v"]],
)
def test_onnx_cli_takes_verbose_before_or_after_the_subcommand(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    from kl_retrievers import onnx_cli

    monkeypatch.setattr(onnx_cli, "_run", lambda args: 40 + int(args.verbose))
    assert onnx_cli.main(argv) == 41
    assert onnx_cli.main([a for a in argv if a not in ("-v", "--verbose")]) == 40


@pytest.mark.parametrize("model", ["no-such-model", "minilm-gauss-sop", "missing/folder/enc"])
def test_onnx_cli_not_found_names_the_bundled_models_as_kl_retrievers_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    from conftest import fake_hub
    from kl_retrievers import onnx_cli
    from kl_retrievers.pretrained import bundled_models

    fake_hub(monkeypatch, None)  # the hub unreachable: no network
    monkeypatch.chdir(tmp_path)
    assert onnx_cli.main(["export", model, str(tmp_path / "out")]) == 2
    ours = capsys.readouterr().err.strip()
    assert ours.startswith("python -m kl_retrievers.onnx_cli: error: "), ours
    assert ours.endswith(f"Bundled models (load them by name): {', '.join(bundled_models())}."), ours
    assert ("Did you mean 'minilm-gauss-soup'?" in ours) == (model == "minilm-gauss-sop"), ours
    assert cli_main(["encode", "a", "-o", str(tmp_path / "o"), "--model", model]) == 2
    theirs = cli_error_line(capsys, "encode")
    assert ours.split(": error: ", 1)[1] == theirs.split(": error: ", 1)[1]


def test_onnx_cli_reads_a_bundled_name_with_blanks_as_load_model_does() -> None:
    from kl_retrievers.onnx_cli import _source_folder
    from kl_retrievers.pretrained import bundled_model_path

    assert _source_folder(" minilm-gauss-soup\n") == bundled_model_path("minilm-gauss-soup")
