"""A vanished relative model folder, bm25s' logger level, and the training package's export lists.

1. A model name that is a relative folder which no longer exists (``models/v1/enc``, ``./enc``, a path object,
   or a delta's recorded backbone) asked the hub, or said "the Hugging Face hub is unreachable or does not
   have it" without naming the folder looked for. A name that can only be a folder (more than one ``/``, or
   starting with ``.``, ``~`` or ``/``; a path object) now fails before any hub lookup, naming its absolute path
   and the current directory; a hub id's form (``models/enc``, ``OWNER/NAME``) is still asked of the hub, and
   its error names the missing folder too. Hub ids keep loading.
2. ``bm25_run`` and ``mine_bm25_negatives`` set bm25s' logger to WARNING whatever its level; a level the user
   set on it (e.g. INFO) is now kept (only bm25s' own import default, DEBUG, is quieted).
3. The training package's lazy export map names only what each submodule exports (its ``__all__``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import fake_hub, make_tiny_encoder
from kl_retrievers import GaussianEncoder, load_model
from kl_retrievers.hub import ModelNotFoundError
from kl_retrievers.pretrained import Backend


# ---------------------------------------------------------------- 1. a vanished relative model folder
@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("name", ["models/v1/my-gauss", "./models/my-gauss", "~/no-such-kl-folder/my-gauss"])
def test_load_model_path_form_names_the_missing_folder_without_a_hub_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    calls = fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError) as info:
        load_model(name, backend=backend)
    message = str(info.value)
    where = os.path.normpath(os.path.join(tmp_path, os.path.expanduser(name)))
    assert f"no folder {where} exists" in message
    assert f"current directory, {tmp_path})" in message
    assert "hub" not in message  # it was not asked
    assert "Bundled models (load them by name)" in message
    assert calls == []


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_load_model_path_object_never_asks_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.chdir(tmp_path)
    calls = fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError, match=r"no folder .*models/my-gauss exists"):
        load_model(Path("models") / "my-gauss", backend=backend)
    assert calls == []


@pytest.mark.parametrize("backend", ["onnx", "torch", None])
def test_load_model_hub_id_form_is_asked_and_its_error_names_the_missing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend | None
) -> None:
    monkeypatch.chdir(tmp_path)
    calls = fake_hub(monkeypatch, None)  # unreachable
    with pytest.raises(ModelNotFoundError) as info:
        load_model("models/my-gauss", backend=backend)
    message = str(info.value)
    assert calls and set(calls) == {"models/my-gauss"}  # OWNER/NAME: the hub is still asked
    assert "hub is unreachable or does not have it" in message
    assert message.count(f"No folder {tmp_path / 'models' / 'my-gauss'} exists") == 1  # said once, on any backend
    assert f"current directory, {tmp_path})" in message


def test_hub_ids_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = make_tiny_encoder(seed=3).save_pretrained(tmp_path / "hub-snapshot")
    monkeypatch.chdir(tmp_path)
    calls = fake_hub(monkeypatch, served)
    encoder = load_model("some-owner/my-gauss", backend="torch")
    assert calls == ["some-owner/my-gauss"]
    assert isinstance(encoder, GaussianEncoder) and encoder.config.dim == 8
    from kl_retrievers.hub import check_model_folder, is_path_name

    assert is_path_name("BAAI/bge-small-en-v1.5") is False
    check_model_folder("BAAI/bge-small-en-v1.5")  # a hub id's form is never refused as a folder


def test_from_pretrained_path_object_and_path_form_skip_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    calls = fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError, match=r"no folder .*models/my-gauss exists .*current directory"):
        GaussianEncoder.from_pretrained(Path("models") / "my-gauss")  # a path object is a folder
    with pytest.raises(ModelNotFoundError, match=r"no folder .*models/v1/my-gauss exists"):
        GaussianEncoder.from_pretrained("models/v1/my-gauss")
    assert calls == []
    with pytest.raises(ModelNotFoundError, match=r"hub is unreachable.*No folder .*models/my-gauss exists"):
        GaussianEncoder.from_pretrained("models/my-gauss")
    assert calls == ["models/my-gauss"]


def _delta_with_backbone(tmp_path: Path, recorded: str) -> Path:
    """A delta-saved tiny encoder whose config records ``recorded`` as its backbone (which does not exist)."""
    enc = make_tiny_encoder()
    base = tmp_path / "base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    fresh = GaussianEncoder.from_backbone(base, dim=8, max_length=64, query_max_length=32)
    out = fresh.save_pretrained(tmp_path / "delta", include_backbone=False)
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["encoder"]["backbone"] = recorded
    cfg_file.write_text(json.dumps(cfg))
    return out


def test_delta_with_a_vanished_relative_backbone_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _delta_with_backbone(tmp_path, "models/v1/base")
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    calls = fake_hub(monkeypatch, None)
    with pytest.raises(ModelNotFoundError) as info:
        GaussianEncoder.from_pretrained(out)
    message = str(info.value)
    assert "that backbone cannot be found" in message
    assert f"no folder {work / 'models' / 'v1' / 'base'} exists" in message
    assert f"current directory, {work})" in message
    assert calls == []


def test_missing_folder_note_keeps_the_case_of_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.hub import missing_folder_note

    monkeypatch.chdir(tmp_path)
    assert missing_folder_note("Models/MyGauss").startswith(f" No folder {tmp_path / 'Models' / 'MyGauss'} exists")
    assert missing_folder_note("./Models/MyGauss") == ""  # a path: check_model_folder's error says it
    (tmp_path / "Models" / "MyGauss").mkdir(parents=True)
    assert missing_folder_note("Models/MyGauss") == ""  # it exists: nothing is missing


# ---------------------------------------------------------------- 2. bm25s' logger level
@pytest.fixture
def bm25s_logger() -> Iterator[logging.Logger]:
    """bm25s' logger (bm25s imported), its level restored afterwards."""
    importlib.import_module("bm25s")
    log = logging.getLogger("bm25s")
    before = log.level
    yield log
    log.setLevel(before)


def _tiny_dataset(root: Path) -> object:
    from kl_retrievers.datasets import BeirDataset

    corpus = {
        "d1": {"title": "", "text": "green tea and bread"},
        "d2": {"title": "", "text": "a dog in the park"},
        "d3": {"title": "", "text": "black tea at sunrise"},
    }
    return BeirDataset(root, "test", corpus, {"q1": "green tea"}, {"q1": {"d1": 1}})


def test_bm25_run_keeps_a_level_the_user_set(tmp_path: Path, bm25s_logger: logging.Logger) -> None:
    from kl_retrievers.baselines import bm25_run

    bm25s_logger.setLevel(logging.INFO)
    run = bm25_run(_tiny_dataset(tmp_path), 2, show_progress=False)  # type: ignore[arg-type]
    assert next(iter(run["q1"])) == "d1"
    assert bm25s_logger.level == logging.INFO


def test_bm25_run_quiets_bm25s_import_default(tmp_path: Path, bm25s_logger: logging.Logger) -> None:
    from kl_retrievers.baselines import bm25_run

    bm25s_logger.setLevel(logging.DEBUG)  # what bm25s sets at its import
    bm25_run(_tiny_dataset(tmp_path), 2, show_progress=False)  # type: ignore[arg-type]
    assert bm25s_logger.level == logging.WARNING


def test_mine_bm25_negatives_keeps_a_level_the_user_set(bm25s_logger: logging.Logger) -> None:
    from kl_retrievers.training.data import TrainingSet, mine_bm25_negatives

    rows = [
        {"query": "green tea", "positives": ["green tea and bread"]},
        {"query": "a dog", "positives": ["a dog in the park"]},
        {"query": "sunrise", "positives": ["black tea at sunrise"]},
    ]
    ts = TrainingSet.from_rows(rows)
    bm25s_logger.setLevel(logging.ERROR)
    mine_bm25_negatives(ts, k=1)
    assert bm25s_logger.level == logging.ERROR
    assert [ts.docs[i] for i in ts.examples[0].negatives] == ["black tea at sunrise"]  # it mined
    bm25s_logger.setLevel(logging.DEBUG)
    mine_bm25_negatives(ts, k=1)
    assert bm25s_logger.level == logging.WARNING


# ---------------------------------------------------------------- 3. the training package's export lists
def test_training_lazy_names_are_their_submodules_exports() -> None:
    from kl_retrievers import training

    for name, module in training._LAZY.items():
        assert name in importlib.import_module(module).__all__, (name, module)
