"""The CLI without torch, safe ONNX export targets, batch (in)variance, chunked tokenization, lone surrogates,
the ONNX CLI's messages and verbosity, and unavailable torch devices."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import WORDS, make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers._encoding import check_texts
from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx, is_onnx_folder

REPO = Path(__file__).resolve().parents[1]
#: Blocks torch and transformers in a fresh interpreter, as tests/test_onnx.py does (the core install).
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"


def _texts(n: int, seed: int = 0, longest: int = 90) -> list[str]:
    """``n`` texts of the tiny vocabulary with varied lengths (empty ones and truncated ones included)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(0, longest)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny encoder saved as a torch folder, and its float32 and int8 exports."""
    root = tmp_path_factory.mktemp("tiny")
    enc = make_tiny_encoder()
    saved = enc.save_pretrained(root / "model")
    return {
        "saved": saved,
        "float32": export_onnx(enc, root / "f32", quantize=None, verify=False),
        "int8": export_onnx(enc, root / "i8", quantize="int8", verify=False),
    }


# ---------------------------------------------------------------- 1. the CLI without torch
def test_every_cli_command_but_train_runs_without_torch(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    code = f"""
import contextlib, io
from kl_retrievers.cli import main
def run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # --help
        return exc.code
print("help", run(["--help"]))
print("train-help", run(["train", "--help"]))
print("encode", run(["encode", "aspirin", "--out", {str(out)!r}]))
print("demo", run(["demo", "why does bread rise"]))
print("train", run(["train", "--data", "d", "--out", {str(tmp_path / "trained")!r}]))
print("torch", sys.modules.get("torch"))
"""
    env = {**os.environ, "KL_RETRIEVERS_ONNX_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    status = dict(re.findall(r"^(help|train-help|encode|demo|train|torch) (\S+)$", done.stdout, re.M))
    assert status == {"help": "0", "train-help": "0", "encode": "0", "demo": "0", "train": "2", "torch": "None"}, (
        done.stdout,
        done.stderr,
    )
    assert "usage: kl-retrievers" in done.stdout and "[cook-1] Bread" in done.stdout
    assert out.is_file() and not (tmp_path / "cache").exists()  # the shipped graph answered
    error = [line for line in done.stderr.splitlines() if line.startswith("kl-retrievers train: error:")]
    assert len(error) == 1 and 'pip install "kl-retrievers[train]"' in error[0], done.stderr


def test_the_training_package_is_lazy_and_keeps_its_names() -> None:
    import kl_retrievers.training as training

    assert sorted(training._LAZY) == sorted(training.__all__)
    assert set(training.__all__) <= set(dir(training))
    for name in training.__all__:
        assert getattr(training, name).__name__ == name
    assert training.losses.__name__ == "kl_retrievers.training.losses"  # submodules, as when imported eagerly
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = training.nope  # type: ignore[attr-defined]  # mypy flags it too: its __getattr__ is hidden from it
    code = (
        "import kl_retrievers.training.cli, kl_retrievers.training as t\n"
        "try:\n    t.TrainConfig\nexcept ModuleNotFoundError as exc:\n    print('refused', exc.name)\n"
    )
    done = subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["refused", "torch"], done.stderr


# ---------------------------------------------------------------- 2. export targets
def test_export_never_deletes_what_is_not_an_earlier_export(tmp_path: Path, tiny: dict[str, Path]) -> None:
    enc = GaussianEncoder.from_pretrained(tiny["saved"])
    saved_files = sorted(p.name for p in tiny["saved"].iterdir())
    # the encoder's own folder, and a folder that holds it: always refused, overwrite or not
    for target in (tiny["saved"], tiny["saved"].parent):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="the encoder being exported"):
                export_onnx(enc, target, quantize=None, verify=False, overwrite=overwrite)
    assert sorted(p.name for p in tiny["saved"].iterdir()) == saved_files
    # a folder of the user's
    user = tmp_path / "project"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"project: it is not empty \(notes.txt\) and is not an ONNX export"):
        export_onnx(enc, user, quantize=None, verify=False)
    assert (user / "notes.txt").read_text() == "precious"
    # an earlier export is replaced; one that also holds other files needs overwrite
    out = export_onnx(enc, tmp_path / "out", quantize=None, verify=False)
    assert export_onnx(enc, out, quantize=None, verify=False) == out and is_onnx_folder(out)
    (out / "README.md").write_text("mine")
    with pytest.raises(ValueError, match=r"an earlier ONNX export but also holds README.md"):
        export_onnx(enc, out, quantize=None, verify=False)
    assert (out / "README.md").is_file()
    # an empty folder, and overwrite=True for a folder of the user's
    (tmp_path / "empty").mkdir()
    assert is_onnx_folder(export_onnx(enc, tmp_path / "empty", quantize=None, verify=False))
    export_onnx(enc, user, quantize=None, verify=False, overwrite=True)
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "model.onnx", "tokenizer.json"]
    # a file is not a folder
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export_onnx(enc, tmp_path / "afile", quantize=None, verify=False)


def test_the_load_model_export_cache_still_exports_and_re_exports(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", str(tmp_path / "cache"))
    first = load_model(str(tiny["saved"]), backend="onnx", quantize=None)
    (cached,) = list((tmp_path / "cache").iterdir())
    with open(cached / "model.onnx", "ab") as fh:  # the cached graph no longer matches its config: export again
        fh.write(b"\0")
    again = load_model(str(tiny["saved"]), backend="onnx", quantize=None)
    assert isinstance(again, OnnxGaussianEncoder) and again.path == cached
    np.testing.assert_array_equal(again.encode_documents(["a dog"]).mean, first.encode_documents(["a dog"]).mean)
    # a cache entry whose config.json is damaged (so it is no longer recognised as an export) is re-exported
    (cached / "config.json").write_text("{not json")
    (cached / "leftover.txt").write_text("x")
    third = load_model(str(tiny["saved"]), backend="onnx", quantize=None)
    np.testing.assert_array_equal(third.encode_documents(["a dog"]).mean, first.encode_documents(["a dog"]).mean)


def test_the_encoders_export_method_passes_overwrite(tmp_path: Path, tiny: dict[str, Path]) -> None:
    enc = GaussianEncoder.from_pretrained(tiny["saved"])
    user = tmp_path / "project"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an ONNX export"):
        enc.export_onnx(user, quantize=None)
    assert is_onnx_folder(enc.export_onnx(user, quantize=None, overwrite=True))


# ---------------------------------------------------------------- 3. batch (in)variance
def test_batch_invariant_says_whether_the_batch_changes_encodings(tiny: dict[str, Path]) -> None:
    texts = _texts(40, seed=1)
    f32, i8 = OnnxGaussianEncoder(tiny["float32"]), OnnxGaussianEncoder(tiny["int8"])
    assert f32.batch_invariant is True and i8.batch_invariant is False
    assert GaussianEncoder.from_pretrained(tiny["saved"]).batch_invariant is True
    with pytest.raises(AttributeError):
        f32.batch_invariant = False  # type: ignore[misc]  # read-only
    # what the documentation says: int8 encodings change with the batch, float32 ones do not
    one = i8.encode_documents(texts, batch_size=1).mean
    together = i8.encode_documents(texts, batch_size=40).mean
    assert not np.array_equal(one, together)
    assert np.abs(one - together).max() > 1e-4
    np.testing.assert_allclose(
        f32.encode_documents(texts, batch_size=1).mean, f32.encode_documents(texts, batch_size=40).mean, atol=1e-6
    )


# ---------------------------------------------------------------- 4. chunked tokenization
def _reference(enc: OnnxGaussianEncoder, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Encodings with the whole input tokenized at once, sorted by token count and cut every batch_size."""
    rows = enc._token_ids(texts, max_length)
    order = np.argsort([-len(ids) for ids, _ in rows], kind="stable")
    mean = np.empty((len(texts), enc.config.dim), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        mean[idx] = enc._run_batch(enc._batch_arrays([rows[i] for i in idx]))[0]
    return mean


@pytest.mark.parametrize("which", ["float32", "int8"])
def test_chunked_tokenization_keeps_the_batches_and_the_outputs(
    tiny: dict[str, Path], which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = OnnxGaussianEncoder(tiny[which])
    texts = _texts(300, seed=2)
    calls: list[int] = []
    token_ids = enc._token_ids

    def spy(chunk: list[str], max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
        calls.append(len(chunk))
        return token_ids(chunk, max_length)

    monkeypatch.setattr(enc, "_token_ids", spy)
    for batch_size, max_length in ((3, 64), (8, 16), (500, 64)):
        calls.clear()
        got = enc.encode_documents(texts, batch_size=batch_size, max_length=max_length).mean
        assert max(calls) <= max(batch_size, min(16 * batch_size, 2048)) and sum(calls) == len(texts)
        np.testing.assert_array_equal(got, _reference(enc, texts, max_length, batch_size))  # same batches, same bits
    if which == "float32":  # and the input order is kept
        alone = np.concatenate([enc.encode_documents([t], max_length=16).mean for t in texts[:30]])
        np.testing.assert_allclose(enc.encode_documents(texts, batch_size=8, max_length=16).mean[:30], alone, atol=1e-6)


def test_tokenizing_takes_no_lock_and_threads_get_their_own_budgets(tiny: dict[str, Path]) -> None:
    enc = OnnxGaussianEncoder(tiny["float32"])
    texts = _texts(400, seed=3)
    queries = enc.encode_queries(texts[:5], max_length=8).mean
    docs = enc.encode_documents(texts, batch_size=16, max_length=64).mean
    got: dict[str, np.ndarray] = {}

    def query() -> None:
        got["query"] = enc.encode_queries(texts[:5], max_length=8).mean

    with enc._lock:  # as if another thread were tokenizing a bulk input: a query does not wait for it
        thread = threading.Thread(target=query, daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "encode_queries waited for the encoder's lock"
    np.testing.assert_array_equal(got["query"], queries)
    results: list[tuple[str, np.ndarray]] = []

    def work(kind: str) -> None:
        for _ in range(3):
            if kind == "docs":
                results.append((kind, enc.encode_documents(texts, batch_size=16, max_length=64).mean))
            else:
                results.append((kind, enc.encode_queries(texts[:5], max_length=8).mean))

    threads = [threading.Thread(target=work, args=(kind,)) for kind in ("docs", "queries", "docs", "queries")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 12
    for kind, value in results:  # two token budgets at once, in four threads: each gets its own truncation
        np.testing.assert_array_equal(value, docs if kind == "docs" else queries)
    # one tokenizer per budget ([VAR] takes one token), and the untruncated one (key None) that finds where a long
    # text may be cut before tokenizing
    assert sorted(k for k in enc._tokenizers if k is not None) == [7, 63]
    assert set(enc._tokenizers) <= {7, 63, None}


# ---------------------------------------------------------------- 5. lone surrogates
def test_a_lone_surrogate_is_refused_by_name(tiny: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate '\\ud800' at character 2"):
        check_texts(["ok", "ab\ud800c"])
    assert check_texts(["caf\u00e9", "\U0001f41d"]) == ["caf\u00e9", "\U0001f41d"]  # real non-ASCII text is fine
    bad = json.loads('["fine", "x\\udce9"]')  # JSON can hold one
    for enc in (OnnxGaussianEncoder(tiny["float32"]), GaussianEncoder.from_pretrained(tiny["saved"])):
        for encode in (enc.encode_documents, enc.encode_queries):
            with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate '\\udce9' at character 1"):
                encode(bad)


# ---------------------------------------------------------------- 6 and 7. the ONNX CLI
def test_onnx_cli_export_refuses_an_onnx_export_and_its_own_folder(
    tmp_path: Path, tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.onnx_cli import main

    assert main(["export", str(tiny["float32"]), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is already an ONNX export" in err and "export from the torch model it came from" in err, err
    assert "not written by kl_retrievers" not in err and not (tmp_path / "out").exists()
    assert main(["export", str(tiny["saved"]), str(tiny["saved"]), "--overwrite"]) == 2
    assert "it is the folder of the encoder being exported" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert main(["export", str(tiny["saved"]), str(tmp_path / "mine"), "--quantize", "float32"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "mine" / "a.txt").is_file()
    assert main(["export", str(tiny["saved"]), str(tmp_path / "mine"), "--quantize", "float32", "--overwrite"]) == 0
    assert is_onnx_folder(tmp_path / "mine") and not (tmp_path / "mine" / "a.txt").exists()


def test_onnx_cli_logs_warnings_only_unless_verbose(tmp_path: Path, tiny: dict[str, Path]) -> None:
    def export(*extra: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "kl_retrievers.onnx_cli", *extra, "export", str(tiny["saved"]), str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()

    quiet, verbose = export(), export("-v")
    assert len(quiet) <= 2, quiet  # ONNX Runtime's optimiser and quantiser say nothing at WARNING level
    assert len(verbose) > len(quiet) + 5 and any("exported" in line for line in verbose), verbose


# ---------------------------------------------------------------- 7. torch devices that are not there
def test_an_unavailable_device_is_one_clear_line(
    tmp_path: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    enc = GaussianEncoder.from_pretrained(tiny["saved"])
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available: this torch .* was built without CUDA"):
        enc.encode_documents(["a"], device="cuda")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(
        ValueError, match=r"device 'cuda:1' is not available: no CUDA GPU is visible; available here: cpu"
    ):
        GaussianEncoder.from_pretrained(tiny["saved"], device="cuda:1")
    with pytest.raises(ValueError, match=r"device 'mps' is not available: MPS is not available on this machine"):
        enc.encode_queries("a", device="mps")
    assert enc.encode_documents(["a"], device="cpu").mean.shape == (1, 8)
    out = tmp_path / "x.safetensors"
    args = ["encode", "a", "--out", str(out), "--model", str(tiny["saved"]), "--model-backend", "torch"]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kl-retrievers encode: error: device 'cuda' is not available"), err
    assert "internal error" not in err[-1] and not out.exists()
