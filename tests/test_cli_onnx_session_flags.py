"""--model-threads / --model-spinning on the command line, and load_model's OnnxExportOnTorchError."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from kl_retrievers.cli import DATA_DIR, main

DEMO_CORPUS = DATA_DIR / "demo_corpus.jsonl"
CORPUS = [{"_id": "d1", "title": "Bees", "text": "bees make honey"}, {"_id": "d2", "title": "", "text": "rain"}]
QUERIES = [{"_id": "q1", "text": "honey"}, {"_id": "q2", "text": "weather"}]
SPINNING_ENTRY = "session.intra_op.allow_spinning"

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the torch backend needs torch")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "onnx-cache"))


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    return root


def _fake_onnx_export(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not read")
    (folder / "config.json").write_text("{}")
    return folder


class _Stop(ValueError):
    """Raised by the fake load_model once it has recorded its call (the command then exits with 2)."""


def _capture_load_model(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace load_model by a recorder that stops the command; the list receives each call's keywords."""
    import kl_retrievers.pretrained as pretrained

    calls: list[dict[str, Any]] = []

    def fake(name_or_path: Any = None, **kwargs: Any) -> Any:
        calls.append({"name_or_path": name_or_path, **kwargs})
        raise _Stop("stopped after load_model")

    monkeypatch.setattr(pretrained, "load_model", fake)
    return calls


def _refuse_load_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.pretrained as pretrained

    def fake(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the flags should have been refused before loading the model")

    monkeypatch.setattr(pretrained, "load_model", fake)


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """A command line of each model-loading command, without the session flags."""
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\nanother text\n", encoding="utf-8")
    return {
        "encode": ["encode", "a text", "--out", str(tmp_path / "g")],
        "encode-sharded": ["encode", "--input", str(texts), "--shard-size", "1", "--out", str(tmp_path / "shards")],
        "index": ["index", str(DEMO_CORPUS), "--out", str(tmp_path / "store"), "--no-progress"],
        "demo": ["demo", "bees"],
        "evaluate": ["evaluate", str(_beir(tmp_path / "ds")), "--no-progress"],  # its default backend: torch
    }


def _onnx_commands(tmp_path: Path) -> dict[str, list[str]]:
    """:func:`_commands`, evaluate on the ONNX backend (the others choose it for the flags)."""
    commands = _commands(tmp_path)
    commands["evaluate"] = [*commands["evaluate"], "--model-backend", "onnx"]
    return commands


# ---------------------------------------------------------------- the flags reach load_model


@pytest.mark.parametrize("command", ["encode", "encode-sharded", "index", "demo", "evaluate"])
def test_session_flags_reach_load_model_as_onnx_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    calls = _capture_load_model(monkeypatch)
    argv = _onnx_commands(tmp_path)[command]
    assert main([*argv, "--model-threads", "2", "--model-spinning"]) == 2
    assert "stopped after load_model" in capsys.readouterr().err
    assert len(calls) == 1
    assert calls[0]["onnx_options"] == {"num_threads": 2, "allow_spinning": True}


@pytest.mark.parametrize("command", ["encode", "index", "demo", "evaluate"])
def test_without_the_flags_load_model_gets_no_onnx_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    calls = _capture_load_model(monkeypatch)
    assert main(_onnx_commands(tmp_path)[command]) == 2
    assert len(calls) == 1 and "onnx_options" not in calls[0], calls


def test_one_flag_alone_passes_only_its_own_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _capture_load_model(monkeypatch)
    assert main([*_commands(tmp_path)["index"], "--model-spinning"]) == 2
    assert calls[-1]["onnx_options"] == {"allow_spinning": True}
    assert main([*_commands(tmp_path)["index"], "--model-threads", "3"]) == 2
    assert calls[-1]["onnx_options"] == {"num_threads": 3}


def test_index_then_search_run_the_encoder_with_the_session_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run on the bundled demo corpus: the ONNX session holds 1 thread and spinning on."""
    import kl_retrievers.pretrained as pretrained

    real = pretrained.load_model
    loaded: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        encoder = real(*args, **kwargs)
        loaded.append(encoder)
        return encoder

    monkeypatch.setattr(pretrained, "load_model", recording)
    store = tmp_path / "store"
    flags = ["--model-threads", "1", "--model-spinning"]
    assert main(["index", str(DEMO_CORPUS), "--out", str(store), "--no-progress", *flags]) == 0
    assert main(["search", str(store), "honey bees", "-k", "2", "--json", *flags]) == 0
    hits = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert len(hits) == 2
    assert len(loaded) == 2
    for encoder in loaded:
        options = encoder._session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.get_session_config_entry(SPINNING_ENTRY) == "1"
    # without the flags: the library's defaults (spinning off, ONNX Runtime's thread count)
    assert main(["search", str(store), "honey bees", "-k", "2"]) == 0
    assert loaded[-1]._session.get_session_options().get_session_config_entry(SPINNING_ENTRY) == "0"


# ---------------------------------------------------------------- refused: torch, Ray, a GPU device, a baseline


@pytest.mark.parametrize("command", ["encode", "encode-sharded", "index", "demo", "evaluate"])
@pytest.mark.parametrize("flags", [["--model-threads", "2"], ["--model-spinning"]])
def test_the_flags_on_the_torch_backend_are_refused_before_loading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    flags: list[str],
) -> None:
    _refuse_load_model(monkeypatch)
    argv = _commands(tmp_path)[command]  # evaluate: on its default backend, torch
    assert main([*argv, *flags] if command == "evaluate" else [*argv, "--model-backend", "torch", *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} applies to the ONNX backend only" in err, err
    assert "runs on torch" in err and "pass --model-backend onnx" in err, err


def test_both_flags_on_torch_are_named_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*_commands(tmp_path)["index"], "--model-backend", "torch", "--model-threads", "2", "--model-spinning"]
    assert main(argv) == 2
    assert "--model-threads and --model-spinning apply to the ONNX backend only" in capsys.readouterr().err


@needs_torch
def test_search_refuses_the_flags_on_a_store_built_with_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _refuse_load_model(monkeypatch)
    store = tmp_path / "store"
    store.mkdir()
    config = {"format": "kl-retrievers/klstore", "encoder": {"name_or_path": "some-model", "config": {"dim": 4}}}
    (store / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main(["search", str(store), "q", "--model-threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "--model-threads applies to the ONNX backend only" in err, err
    assert "the store was built with it" in err and "pass --model-backend onnx" in err, err


def test_encode_on_ray_passes_the_flags_to_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.sharded as sharded

    seen: dict[str, object] = {}

    def fake_run_ray(todo: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise RuntimeError("stopped before Ray")

    monkeypatch.setattr(sharded, "_run_ray", fake_run_ray)
    texts = tmp_path / "texts.txt"
    texts.write_text("a\nb\n", encoding="utf-8")
    argv = ["encode", "--input", str(texts), "--out", str(tmp_path / "out"), "--backend", "ray", "--model-spinning"]
    main(argv)
    capsys.readouterr()
    assert seen["onnx_options"] == {"allow_spinning": True} and seen["model_backend"] is None

    # each worker loads the model with them
    worker = sharded._RayShardWorker(None, None, {}, None, {"allow_spinning": True})
    from kl_retrievers.onnx import OnnxGaussianEncoder

    assert isinstance(worker.encoder, OnnxGaussianEncoder)
    opts = worker.encoder._session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_encode_corpus_refuses_onnx_options_with_a_loaded_encoder(tmp_path: Path) -> None:
    from kl_retrievers import load_model
    from kl_retrievers.sharded import encode_corpus

    texts = tmp_path / "texts.txt"
    texts.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the given encoder is loaded already"):
        encode_corpus(texts, tmp_path / "out", encoder=load_model(backend="onnx"), onnx_options={"num_threads": 1})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["encode", "index"])
def test_the_flags_with_a_gpu_device_and_no_backend_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    _refuse_load_model(monkeypatch)
    assert main([*_commands(tmp_path)[command], "--device", "cuda", "--model-threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "--model-threads applies to the ONNX backend only, which runs on cpu; got --device cuda" in err, err


def test_evaluate_refuses_the_flags_with_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _beir(tmp_path / "ds")
    assert main(["evaluate", str(ds), "--baseline", "bm25", "--no-progress", "--model-threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "--model-threads does not apply to --baseline bm25, which encodes nothing" in err, err


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "must be >= 1; got 0"), ("-3", "must be >= 1; got -3"), ("two", "got 'two'"), ("1.5", "got '1.5'")],
)
@pytest.mark.parametrize("command", ["encode", "index", "demo", "search", "evaluate"])
def test_bad_thread_counts_are_refused_by_the_parser(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    value: str,
    message: str,
) -> None:
    _refuse_load_model(monkeypatch)
    argv = {
        "encode": ["encode", "a", "--out", str(tmp_path / "g")],
        "index": ["index", str(DEMO_CORPUS), "--out", str(tmp_path / "s")],
        "demo": ["demo"],
        "search": ["search", str(tmp_path / "s"), "q"],
        "evaluate": ["evaluate", str(tmp_path / "ds")],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, f"--model-threads={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --model-threads" in err and message in err, err


def test_spinning_takes_no_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--model-spinning=yes"])
    assert info.value.code == 2
    assert "--model-spinning" in capsys.readouterr().err


def test_help_names_the_flags_and_the_onnx_backend(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("encode", "index", "demo", "search", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--model-threads N" in out and "--model-spinning" in out, command
        assert "ONNX backend only" in out, command


# ---------------------------------------------------------------- OnnxExportOnTorchError


@needs_torch
def test_load_model_on_torch_raises_the_typed_error_with_its_path(tmp_path: Path) -> None:
    from kl_retrievers.pretrained import OnnxExportOnTorchError, load_model

    folder = _fake_onnx_export(tmp_path / "export")
    with pytest.raises(OnnxExportOnTorchError) as info:
        load_model(str(folder), backend="torch")
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(folder)
    assert str(info.value) == (
        f"{folder} holds an ONNX export (model.onnx), which runs on ONNX Runtime only; load it with "
        "backend='onnx' (on the command line: --model-backend onnx)"
    )


def test_the_typed_error_is_said_before_torch_is_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch, installing it would not help: the ONNX advice comes first."""
    import kl_retrievers._encoding as encoding
    from kl_retrievers.pretrained import OnnxExportOnTorchError, load_model

    def no_torch(what: str) -> None:
        raise ModuleNotFoundError(f"{what} needs torch")

    monkeypatch.setattr(encoding, "require_torch", no_torch)
    folder = _fake_onnx_export(tmp_path / "export")
    with pytest.raises(OnnxExportOnTorchError):
        load_model(folder, backend="torch")


def test_the_typed_error_copies_with_its_path() -> None:
    from kl_retrievers.pretrained import OnnxExportOnTorchError

    error = OnnxExportOnTorchError("models/export")
    twin = copy.copy(error)
    assert type(twin) is OnnxExportOnTorchError
    assert twin.path == "models/export" and str(twin) == str(error)


def test_evaluate_catches_the_typed_error_by_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The advice follows the exception's type and path, not a re-check of the folder (here: no such folder)."""
    import kl_retrievers.evaluate_cli as evaluate_cli
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(evaluate_cli, "missing_modules", lambda names: [])  # torch or not: reach load_model

    def refuse(name_or_path: str, **kwargs: Any) -> Any:
        raise pretrained.OnnxExportOnTorchError("/somewhere/export")

    monkeypatch.setattr(pretrained, "load_model", refuse)
    ds = _beir(tmp_path / "ds")
    assert main(["evaluate", str(ds), "--model", str(tmp_path / "not-there"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kl-retrievers evaluate: error: /somewhere/export holds an ONNX export (model.onnx), which runs on ONNX "
        "Runtime only; pass --model-backend onnx (evaluate's default backend is torch, that of the logged figures)"
    )
    assert main(["evaluate", str(ds), "--no-progress"]) == 2  # no --model: the same, no internal error
    assert "/somewhere/export holds an ONNX export" in capsys.readouterr().err


@needs_torch
def test_evaluate_on_a_real_onnx_export_gives_its_own_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds, folder = _beir(tmp_path / "ds"), _fake_onnx_export(tmp_path / "export")
    assert main(["evaluate", str(ds), "--model", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kl-retrievers evaluate: error: {folder} holds an ONNX export (model.onnx), which runs on ONNX Runtime "
        "only; pass --model-backend onnx (evaluate's default backend is torch, that of the logged figures)"
    ), err
