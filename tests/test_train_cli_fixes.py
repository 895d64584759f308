"""Regression tests for the ``kl-retrievers train`` fixes of the training audit.

Each test fails on the code before the fix: --out replacing unrelated folders or the data, a recipe that
trains nothing, NaN in config.json, late failures of bad flag values, --time-budget 0, the card and loss
file outside the atomic save, resume with a changed recipe, progress bars that ignore --quiet, negative
numbers with exponents, and --init-from ignoring shape flags. Everything runs on a tiny random BERT.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kl_retrievers.encoder as encoder_module
from conftest import TrainWorld, make_tiny_encoder, make_train_world
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, TrainingSet, mine_negatives_from_scores, train_encoder
from kl_retrievers.training import trainer as trainer_module

ROWS = [
    {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]},
    {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock"]},
    {"query": "moon", "positives": ["the moon and the star"], "negatives": ["a train at sea"]},
]


World = TrainWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_train_world(tmp_path_factory.mktemp("train_cli"))


def _argv(w: World, out: Path | str, *extra: str, shape: bool = True) -> list[str]:
    argv = ["train", "--data", str(w.beir), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    argv += ["--cache-dir", str(w.cache), "--no-progress", "--device", "cpu"]
    if shape:
        argv += ["--base", str(w.base), "--dim", "8", "--max-length", "32", "--query-max-length", "16"]
    return [*argv, *extra]


def _training(out: Path) -> dict[str, Any]:
    def no_constants(name: str) -> None:
        raise AssertionError(f"config.json holds {name}, which is not JSON")

    meta = json.loads((out / "config.json").read_text(), parse_constant=no_constants)
    training: dict[str, Any] = meta["encoder"]["extra"]["training"]
    return training


class _Loaded(Exception):
    """Raised by the patched loaders: the check came too late."""


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if the command loads data or a model (the checks must come before)."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise _Loaded("loaded before checking the flags")

    monkeypatch.setattr(GaussianEncoder, "from_backbone", boom)
    monkeypatch.setattr(GaussianEncoder, "from_pretrained", boom)
    monkeypatch.setattr("kl_retrievers.training.data.load_training_data", boom)


# ------------------------------------------------------------------ 1: --out data loss
@pytest.mark.usefixtures("no_loading")
def test_out_with_other_files_is_refused_before_loading(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "thesis-folder"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.txt").write_text("two years of work")
    assert main(_argv(world, out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "not empty" in err and "loaded before" not in err
    assert (out / "notes" / "thesis.txt").read_text() == "two years of work"


def test_out_overwrite_and_earlier_model_folders(world: World, tmp_path: Path) -> None:
    out = tmp_path / "m"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.txt").write_text("old")
    assert main(_argv(world, out, "--overwrite")) == 0
    assert not (out / "notes").exists() and (out / "config.json").is_file()
    assert main(_argv(world, out)) == 0  # an earlier model folder is replaced without --overwrite


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("where", "what"), [(".", "is"), ("..", "holds")])
def test_out_overlapping_data_is_always_refused(
    world: World, tmp_path: Path, where: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    out = data / where
    argv = ["train", "--data", str(data), "--data", str(data / "train.jsonl"), "--out", str(out), "--overwrite"]
    assert main([*argv, "--no-progress", "--base", str(world.base)]) == 2
    err = capsys.readouterr().err
    assert f"it {what} the --data path {data}" in err
    assert (data / "train.jsonl").is_file()


def test_a_new_folder_inside_the_data_folder_is_fine_and_a_data_subfolder_is_not_replaced(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--data d --out d/model`` (notebook 04 does this) saves the model; ``--out d/qrels`` would
    delete data, so it is refused like any other non-empty folder."""
    qrels = sorted(p.name for p in (world.beir / "qrels").iterdir())
    assert qrels
    assert main(_argv(world, world.beir / "model")) == 0 and (world.beir / "model" / "config.json").is_file()
    assert main(_argv(world, world.beir / "qrels")) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (world.beir / "qrels").iterdir()) == qrels


def test_out_dot_is_resolved(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(_argv(world, ".")) == 0
    assert (tmp_path / "here" / "config.json").is_file() and (tmp_path / "here.checkpoint" / "state.json").is_file()


# ------------------------------------------------------------------ 2: a recipe that trains nothing
def test_no_in_batch_without_negatives_is_refused(world: World, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--no-in-batch.*--negatives 0.*--no-full-corpus"):
        TrainConfig(in_batch=False, negatives=0, full_corpus=False)
    TrainConfig(in_batch=False, negatives=0)  # the fast path's full-corpus softmax still has negatives
    cfg = TrainConfig(in_batch=False, negatives=0, steps=2, batch_size=2, show_progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"--no-in-batch.*--negatives 0"):  # train_encoder has no full corpus
        train_encoder(make_tiny_encoder(), TrainingSet.from_rows(ROWS), cfg)


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize("fast", [[], ["--heads-only-cached", "--no-full-corpus"]])
def test_cli_no_in_batch_without_negatives(
    world: World, tmp_path: Path, fast: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(world, tmp_path / "m", "--no-in-batch", "--negatives", "0", *fast)) == 2
    err = capsys.readouterr().err
    assert "--no-in-batch" in err and "--negatives 0" in err and "nothing trains" in err


# ------------------------------------------------------------------ 3, 7: resume, final loss, recipe, history
def test_resume_of_a_finished_checkpoint_keeps_the_final_loss(world: World, tmp_path: Path) -> None:
    ck = str(tmp_path / "ck")
    assert main(_argv(world, tmp_path / "m1", "--checkpoint-dir", ck)) == 0
    assert main(_argv(world, tmp_path / "m2", "--checkpoint-dir", ck, "--resume")) == 0
    first, again = _training(tmp_path / "m1"), _training(tmp_path / "m2")
    assert again["steps_done"] == 2 and again["final_loss"] == first["final_loss"]
    assert isinstance(again["final_loss"], float) and math.isfinite(again["final_loss"])
    losses = json.loads((tmp_path / "m1" / "training_losses.json").read_text())
    assert json.loads((tmp_path / "m2" / "training_losses.json").read_text()) == losses and len(losses) == 2


def test_save_pretrained_refuses_nan_in_the_config(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    enc.config.extra["training"] = {"final_loss": float("nan")}
    with pytest.raises(ValueError, match="NaN"):
        enc.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_resume_refuses_a_changed_recipe_and_keeps_the_history(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ck = str(tmp_path / "ck")
    args = ["--checkpoint-dir", ck, "--steps", "4", "--warmup", "1"]
    assert main(_argv(world, tmp_path / "m1", *args, "--time-budget", "0")) == 0  # one step, then a checkpoint
    capsys.readouterr()
    changed = _argv(world, tmp_path / "m2", *args, "--resume", "--lr", "0.5", "--temperature", "0.1")
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "--lr (" in err and "--temperature (" in err and "--steps (" not in err
    assert main(_argv(world, tmp_path / "m3", *args, "--resume", "--mine-k", "5")) == 2
    assert "--mine-k" in capsys.readouterr().err
    resumed = _argv(world, tmp_path / "m4", *args[:2], "--steps", "6", "--warmup", "1", "--resume")
    resumed[resumed.index(str(world.beir))] = "beir"  # the same data by a relative path, from another folder
    monkeypatch.chdir(world.root)
    with caplog.at_level(logging.INFO, logger="kl_retrievers.training.trainer"):
        assert main(resumed) == 0
    assert any("warm-up 1 steps, linear decay to 0 at step 6" in r.getMessage() for r in caplog.records)
    training = _training(tmp_path / "m4")
    assert training["steps_done"] == 6
    assert len(json.loads((tmp_path / "m4" / "training_losses.json").read_text())) == 6  # the whole history
    state = json.loads((Path(ck) / "state.json").read_text())
    assert state["recipe"]["config"]["lr"] == 2e-5 and state["recipe"]["encoder"]["dim"] == 8
    assert state["recipe"]["data"] and state["recipe"]["cli"]["split"] == "train"


def test_resume_rebuilds_the_schedule_for_new_steps(tmp_path: Path) -> None:
    ts = TrainingSet.from_rows(ROWS)
    ck = tmp_path / "ck"
    base: dict[str, Any] = {"batch_size": 2, "lr": 1e-2, "negatives": 1, "show_progress": False, "device": "cpu"}
    train_encoder(make_tiny_encoder(), ts, TrainConfig(steps=20, time_budget_s=0.0, **base), checkpoint_dir=ck)
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy(self: torch.optim.AdamW, *a: Any, **kw: Any) -> Any:
        seen.append(float(self.param_groups[0]["lr"]))
        return real_step(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        train_encoder(make_tiny_encoder(), ts, TrainConfig(steps=30, **base), checkpoint_dir=ck, resume=True)
    # the warm-up of the first run (2 steps: 10% of 20, not 3), then linear decay to 0 at step 30, from step 1 on
    expected = [1e-2 * ((s + 1) / 2 if s < 2 else (30 - s) / 28) for s in range(1, 30)]
    assert seen == pytest.approx(expected)


# ------------------------------------------------------------------ 4, 5: bad values fail before loading
CASES = [
    (["--device", "foo"], "--device must be 'cpu', 'cuda' or 'cuda:N'"),
    (["--beta", "0"], "--beta must be a finite number > 0; got 0.0"),
    (["--init-variance", "-1"], "--init-variance must be a finite number > 0; got -1.0"),
    (["--loss", "margin_mse"], "--loss margin_mse needs teacher scores"),
    (["--loss", "listwise", "--teacher"], "--loss listwise needs hard negatives"),
    (["--time-budget", "-1"], "--time-budget must be a finite number of minutes >= 0"),
]
if not torch.cuda.is_available():
    CASES.append((["--device", "cuda"], "--device 'cuda': CUDA is not available"))


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize(("flags", "message"), CASES)
def test_bad_values_fail_before_loading(
    world: World, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_argv(world, tmp_path / "m"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "loaded before" not in err


def test_distillation_without_teacher_scores_fails_before_features(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))  # JSONL without teacher_scores

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise _Loaded("loaded before checking the flags")

    monkeypatch.setattr(GaussianEncoder, "from_backbone", boom)
    argv = _argv(world, tmp_path / "m", "--loss", "margin_mse", "--heads-only-cached")
    argv[argv.index(str(world.beir))] = str(rows)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs teacher scores" in err and "loaded before" not in err


def test_time_budget_zero_stops_after_one_step(world: World, tmp_path: Path) -> None:
    assert main(_argv(world, tmp_path / "m", "--steps", "5", "--time-budget", "0")) == 0
    training = _training(tmp_path / "m")
    assert training["steps_done"] == 1 and training["stopped"] == "time_budget"


# ------------------------------------------------------------------ 6: card and losses inside the atomic save
def test_card_and_losses_are_written_inside_the_atomic_save(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = encoder_module.atomic_dir
    inside: list[list[str]] = []

    @contextmanager
    def spy(target: Any, **kwargs: Any) -> Iterator[Path]:
        with real(target, **kwargs) as tmp:
            yield tmp
            inside.append(sorted(p.name for p in tmp.iterdir()))

    monkeypatch.setattr(encoder_module, "atomic_dir", spy)
    out = tmp_path / "m"
    assert main(_argv(world, out)) == 0
    assert "README.md" in inside[-1] and "training_losses.json" in inside[-1] and "config.json" in inside[-1]
    assert "kl-retrievers train" in (out / "README.md").read_text()
    assert len(json.loads((out / "training_losses.json").read_text())) == 2


def test_save_pretrained_extra_files(tmp_path: Path) -> None:
    enc = make_tiny_encoder()
    out = enc.save_pretrained(tmp_path / "m", extra_files={"README.md": "# card\n", "blob.bin": b"\x00\x01"})
    assert (out / "README.md").read_text() == "# card\n" and (out / "blob.bin").read_bytes() == b"\x00\x01"
    for bad in ("../escape.txt", "config.json", ""):
        with pytest.raises(ValueError, match="extra_files"):
            enc.save_pretrained(tmp_path / "n", extra_files={bad: "x"})
    assert not (tmp_path / "n").exists() and not (tmp_path / "escape.txt").exists()


# ------------------------------------------------------------------ 8: --quiet and the bar's loss
def test_mining_and_teacher_bars_follow_show_progress(capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.training.teacher import add_teacher_scores

    ts = TrainingSet.from_rows(ROWS)
    n_docs = len(ts.docs)
    mine_negatives_from_scores(ts, lambda rows: np.ones((len(rows), n_docs)), k=1, show_progress=False)
    assert capsys.readouterr().err == ""
    flags: list[bool] = []

    class FakeTeacher:
        def score(self, pairs: list[tuple[str, str]], *, show_progress: bool = True) -> np.ndarray:
            flags.append(show_progress)
            return np.zeros(len(pairs), np.float32)

    add_teacher_scores(ts, FakeTeacher(), show_progress=False)  # type: ignore[arg-type]
    assert flags == [False]


def test_the_bar_shows_the_reported_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict[str, Any]] = []

    class Bar:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def update(self, n: int = 1) -> None:
            pass

        def set_postfix(self, **kw: Any) -> None:
            shown.append(kw)

        def close(self) -> None:
            pass

    monkeypatch.setattr(trainer_module, "tqdm", Bar)
    cfg = TrainConfig(steps=6, batch_size=2, lr=5e-2, negatives=1, show_progress=False, device="cpu")
    result = train_encoder(make_tiny_encoder(), TrainingSet.from_rows(ROWS), cfg)
    assert list(shown[-1].values()) == [f"{result.final_loss:.4f}"]


# ------------------------------------------------------------------ 9: negative numbers with an exponent
@pytest.mark.usefixtures("no_loading")
def test_negative_lr_with_an_exponent_reaches_the_recipe_check(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(world, tmp_path / "m", "--lr", "-1e-3")) == 2
    assert "lr must be a finite number > 0; got -0.001" in capsys.readouterr().err
    assert main(_argv(world, tmp_path / "m", "--temperature", "-5E+1")) == 2
    assert "temperature must be a finite number > 0; got -50.0" in capsys.readouterr().err


# ------------------------------------------------------------------ 10: --init-from and shape flags
def test_init_from_refuses_shape_flags(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = GaussianEncoder.from_backbone(world.base, dim=8, max_length=32, query_max_length=16)
    saved = start.save_pretrained(tmp_path / "start", include_backbone=False)
    with monkeypatch.context() as mp:
        mp.setattr(GaussianEncoder, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(_Loaded("loaded")))
        argv = _argv(world, tmp_path / "m", "--init-from", str(saved), "--dim", "4", "--pooling", "cls", shape=False)
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "--dim" in err and "--pooling" in err and "loaded" not in err
    out = tmp_path / "m"
    assert main(_argv(world, out, "--init-from", str(saved), "--split", "train", shape=False)) == 0
    recipe = _training(out)["recipe"]
    assert recipe["init_from"] == str(saved.resolve()) and recipe["split"] == "train"


# ------------------------------------------------------------------ 11: --init-from a model with no base
def test_init_from_model_without_backbone_saves_every_weight(world: World, tmp_path: Path) -> None:
    """A model built from a config records no base backbone; training on from it must save (all weights)."""
    start = make_tiny_encoder(pooling="mean")
    assert not start.config.backbone
    saved = start.save_pretrained(tmp_path / "start")
    out = tmp_path / "m"
    assert main(_argv(world, out, "--init-from", str(saved), shape=False)) == 0
    trained = GaussianEncoder.from_pretrained(out)
    texts = ["the cat sat on the mat", "green tea"]
    got = trained.encode_documents(texts)
    again = GaussianEncoder.from_pretrained(out).encode_documents(texts)
    np.testing.assert_array_equal(got.mean, again.mean)
    before = GaussianEncoder.from_pretrained(saved).encode_documents(texts)
    assert not np.allclose(got.mean, before.mean)  # it trained, and saved what it trained
