"""``~user`` paths of no user reach no ``RuntimeError``, and a FIFO ``state.json`` in a checkpoint's previous copy.

1. ``Path.expanduser`` raises ``RuntimeError`` ("Could not determine home directory") for ``~nosuchuser/...``
   (and for any ``~`` without a home folder). Every reader now expands ``~`` with ``kl_retrievers._io.user_path``,
   which keeps such a name as given (a folder of that name in the working folder): a missing one gets the
   package's own "not found" error naming it (model loads, saved stores, the calibration lookups, the training
   data, ``kl-retrievers evaluate --model``), an existing one is read, and the features cache takes it as its
   folder.
2. A checkpoint folder that is gone, whose previous copy (``.NAME.old-*`` of an interrupted save, or the legacy
   ``NAME.old``) holds a ``state.json`` that is a FIFO: a resume said "no checkpoint" and started afresh. It is now
   refused, naming the file and that it is a FIFO, not a regular file; the FIFO is never opened.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import cli_error_line, fed_if_opened, make_tiny_encoder, tiny_train_beir, write_tiny_beir

NO_USER = "~nosuchuser-g1"  # a "~user" of no user: a folder of that name in the working folder
MISSING = f"{NO_USER}/m"  # nothing there


def test_no_such_user_cannot_be_expanded_by_pathlib() -> None:
    """What the other tests rely on: ``Path.expanduser`` raises for this name (the old code's failure)."""
    with pytest.raises(RuntimeError):
        Path(MISSING).expanduser()
    assert os.path.expanduser(MISSING) == MISSING


# ------------------------------------------------------------------ 1. a missing "~user" path: "not found"
def _load_model(name: str) -> Any:
    from kl_retrievers import load_model

    return load_model(name)


def _load_model_torch(name: str) -> Any:
    from kl_retrievers import load_model

    return load_model(name, backend="torch")


def _from_pretrained(name: str) -> Any:
    from kl_retrievers import GaussianEncoder

    return GaussianEncoder.from_pretrained(name)


def _kl_embeddings(name: str) -> Any:
    from kl_retrievers.langchain import KLEmbeddings

    return KLEmbeddings(model_name=name)


def _kl_store_load(name: str) -> Any:
    from kl_retrievers import KLStore

    return KLStore.load(name)


def _training_data(name: str) -> Any:
    from kl_retrievers.training import load_training_data

    return load_training_data([f"{name}.jsonl"])


def _recommended_min_confidence(name: str) -> Any:
    from kl_retrievers.calibration import recommended_min_confidence

    return recommended_min_confidence(name)


ENTRY_POINTS: dict[str, tuple[Callable[[str], Any], type[BaseException]]] = {
    "load_model": (_load_model, OSError),  # ModelNotFoundError (an OSError) or FileNotFoundError
    "load_model(backend='torch')": (_load_model_torch, OSError),
    "GaussianEncoder.from_pretrained": (_from_pretrained, OSError),
    "KLEmbeddings(model_name=)": (_kl_embeddings, OSError),
    "KLStore.load": (_kl_store_load, FileNotFoundError),
    "load_training_data": (_training_data, FileNotFoundError),
    "recommended_min_confidence": (_recommended_min_confidence, ValueError),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_missing_tilde_path_of_no_user_is_not_found(
    entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    call, expected = ENTRY_POINTS[entry]
    with pytest.raises(expected) as info:  # never a RuntimeError
        call(MISSING)
    assert MISSING in str(info.value), str(info.value)
    assert "home directory" not in str(info.value)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_missing_tilde_path_without_a_home_folder_is_not_found(
    entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home: None
) -> None:
    monkeypatch.chdir(tmp_path)
    call, expected = ENTRY_POINTS[entry]
    with pytest.raises(expected) as info:  # never a RuntimeError
        call("~/m")
    assert "~/m" in str(info.value), str(info.value)
    assert "home directory" not in str(info.value)


def test_evaluate_cli_names_a_missing_tilde_model_of_no_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    monkeypatch.chdir(tmp_path)
    ds = write_tiny_beir(tmp_path / "ds")
    for backend in ("torch", "onnx"):
        assert main(["evaluate", str(ds), "--model", MISSING, "--model-backend", backend, "--no-progress"]) == 2
        line = cli_error_line(capsys, "evaluate")
        assert repr(MISSING) in line and f"no folder {tmp_path / MISSING} exists" in line, line
        assert "home directory" not in line and "Traceback" not in line


def test_a_store_saved_with_a_missing_tilde_model_of_no_user_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import KLStore

    monkeypatch.chdir(tmp_path)
    encoder = make_tiny_encoder()
    store = KLStore(encoder=encoder)
    store.add(["the cat sat on the mat", "green tea"])
    store.encoder = None
    store.saved_encoder = MISSING  # as a store saved with an encoder loaded from that (since removed) folder
    store.save(tmp_path / "st")
    loaded = KLStore.load(tmp_path / "st")
    assert loaded.saved_encoder == MISSING
    with pytest.raises(ValueError, match=r"~nosuchuser-g1/m.*it names a model folder that no longer exists"):
        loaded.search("cat", k=1)


def test_langchain_default_encoder_check_names_a_tilde_model_of_no_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.langchain import _check_default_encoder_fits

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"has no encoder and was saved with '~nosuchuser-g1/m'"):
        _check_default_encoder_fits(SimpleNamespace(saved_encoder=MISSING))


def test_confidence_scorer_of_an_encoder_named_by_a_tilde_path_of_no_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers._confidence import ConfidenceScorer, encoder_model_names
    from kl_retrievers.calibration import ConfidenceCalibrator

    monkeypatch.chdir(tmp_path)
    encoder = SimpleNamespace(name_or_path=MISSING)
    assert encoder_model_names(encoder) is None  # an unknown model: not checked
    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1], info={"model": "x"})
    assert ConfidenceScorer(cal).calibrator(encoder) is cal
    assert ConfidenceScorer().calibrator(encoder) is None  # its model ships no calibrator


def test_default_backend_of_a_missing_tilde_path_of_no_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.pretrained import default_backend, model_file

    monkeypatch.chdir(tmp_path)
    assert default_backend(MISSING, device="cpu") in ("torch", "onnx")
    assert model_file(MISSING, "config.json") is None


# ------------------------------------------------------------------ 1. an existing "~user" folder: read
def test_an_existing_tilde_folder_of_no_user_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers import GaussianEncoder, load_model

    monkeypatch.chdir(tmp_path)
    make_tiny_encoder().save_pretrained(tmp_path / NO_USER)
    encoder = GaussianEncoder.from_pretrained(NO_USER)
    assert encoder.name_or_path == str(tmp_path / NO_USER)
    assert load_model(NO_USER, backend="torch").name_or_path == str(tmp_path / NO_USER)


def test_a_store_saved_with_a_tilde_model_folder_of_no_user_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import KLStore

    monkeypatch.chdir(tmp_path)
    make_tiny_encoder().save_pretrained(tmp_path / NO_USER)
    store = KLStore(encoder=make_tiny_encoder())
    store.add(["the cat sat on the mat", "green tea"], ids=["a", "b"])
    store.encoder = None
    store.saved_encoder = NO_USER  # the folder of that name (relative), as given
    store.save(tmp_path / "st")
    loaded = KLStore.load(tmp_path / "st")
    assert len(loaded.search("the cat sat on the mat", k=1)) == 1
    assert loaded.encoder is not None and loaded.encoder.name_or_path == str(tmp_path / NO_USER)


def test_training_data_in_a_tilde_folder_of_no_user_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.training import load_training_data

    monkeypatch.chdir(tmp_path)
    tiny_train_beir(tmp_path / NO_USER)
    with caplog.at_level("WARNING", logger="kl_retrievers.training.data"):
        ts = load_training_data([NO_USER, f"./{NO_USER}"])
    assert len(ts.queries) == 5
    assert any("given more than once" in r.getMessage() for r in caplog.records)


def test_retrieval_evaluator_on_a_tilde_folder_of_no_user_describes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.training import evaluator_description, retrieval_evaluator

    monkeypatch.chdir(tmp_path)
    write_tiny_beir(tmp_path / NO_USER)
    evaluator = retrieval_evaluator(NO_USER, split="test", k=10)
    assert evaluator_description(evaluator)["dataset"] == str(tmp_path / NO_USER)


def test_features_cache_env_of_a_tilde_path_of_no_user_is_that_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.encoding_cache import CACHE_ENV
    from kl_retrievers.training.features import default_feature_cache_dir

    monkeypatch.setenv(CACHE_ENV, f"{NO_USER}/cache")
    assert default_feature_cache_dir() == Path(NO_USER) / "cache" / "features"


# ------------------------------------------------------------------ 2. a FIFO state.json in the previous copy
_ROWS = [
    {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog", "sun"]},
    {"query": "dog black", "positives": ["a dog is black"], "negatives": ["the moon", "tea"]},
]


def _resume(folder: Path) -> Any:
    from kl_retrievers.training import TrainConfig, TrainingSet, train_encoder

    cfg = TrainConfig(steps=2, batch_size=2, negatives=2, lr=1e-3, show_progress=False, device="cpu")
    return train_encoder(make_tiny_encoder(), TrainingSet.from_rows(_ROWS), cfg, checkpoint_dir=folder, resume=True)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("copy", [".ck.old-0123abcd", "ck.old"])
@pytest.mark.parametrize("folder_there", [False, True])
def test_a_fifo_state_json_in_the_previous_copy_is_refused_not_a_fresh_start(
    tmp_path: Path, copy: str, folder_there: bool
) -> None:
    folder = tmp_path / "ck"
    if folder_there:  # an incomplete checkpoint folder: no state.json
        folder.mkdir()
    (tmp_path / copy).mkdir()
    fifo = tmp_path / copy / "state.json"
    os.mkfifo(fifo)
    with (
        fed_if_opened(fifo, b"{}") as opened,
        pytest.raises(ValueError, match=rf"{str(fifo).replace('.', '[.]')}, which is a FIFO, not a regular file"),
    ):
        _resume(folder)
    assert opened == []  # never opened (a read would wait for a writer)
    assert not (folder / "state.json").exists()  # no fresh run saved a checkpoint over it


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_train_cli_resume_names_a_fifo_state_json_in_the_previous_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.cli import main

    data = tiny_train_beir(tmp_path / "beir")
    (tmp_path / ".ck.old-0123abcd").mkdir()
    fifo = tmp_path / ".ck.old-0123abcd" / "state.json"
    os.mkfifo(fifo)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    with fed_if_opened(fifo, b"{}") as opened:
        assert main([*argv, "--checkpoint-dir", str(tmp_path / "ck"), "--resume"]) == 2
    line = cli_error_line(capsys, "train")
    assert f"{fifo}, which is a FIFO, not a regular file" in line, line
    assert opened == []


def test_a_previous_copy_without_state_json_is_still_no_checkpoint(tmp_path: Path) -> None:
    from kl_retrievers.training.trainer import _find_checkpoint

    (tmp_path / ".ck.old-0123abcd").mkdir()
    (tmp_path / "ck.old").mkdir()
    assert _find_checkpoint(tmp_path / "ck") is None


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="'~user' and named pipes as on POSIX")
