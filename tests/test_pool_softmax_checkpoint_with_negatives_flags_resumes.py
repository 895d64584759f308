"""A checkpoint an earlier version wrote with the negatives' flags on the fast path's pool softmax resumes.

Since 8a50347, ``--heads-only-cached`` with the contrastive softmax over the whole pool refuses ``--negatives``,
``--hard-negatives``, ``--mine-k`` and ``--mine-mode`` (they play no part in the loss). Earlier versions accepted
them and recorded them in the checkpoint's recipe (``config.negatives``, ``cli.hard_negatives``, ``cli.mine_k``,
``cli.mine_mode``), so such a checkpoint could not be resumed: with the flags the run was refused, without them
the recipe differed. A resume whose flags are the checkpoint's own now goes on with them, with one WARNING (their
random draws still decide which positive trains for a query judged several, so the run ends where the
uninterrupted one would have); a new run, or a resume of a checkpoint without them, still refuses them.

The earlier version is this one with the refusal taken out (it is the only difference: the recipe recorded and
the training are the same), so its checkpoints are written by training with the refusal bypassed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TrainWorld, cli_error_line, heads_cached_train_argv
from kl_retrievers.cli import main
from kl_retrievers.training import cli as train_cli

FLAGS = [
    ["--negatives", "3"],
    ["--hard-negatives", "bm25", "--mine-k", "2"],
    ["--hard-negatives", "model", "--mine-k", "2", "--mine-mode", "replace", "--negatives", "1"],
]


def _as_an_earlier_version(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """Run ``kl-retrievers train argv`` as versions before 8a50347 did: without the pool softmax's refusal."""
    with monkeypatch.context() as m:
        m.setattr(train_cli, "_refuse_flags_the_pool_softmax_ignores", lambda *args, **kwargs: None)
        assert main(argv) == 0


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def _interrupted(monkeypatch: pytest.MonkeyPatch, world: TrainWorld, out: Path, *flags: str) -> None:
    """Train ``out`` with ``flags`` as an earlier version, stopped after its first checkpoint."""
    _as_an_earlier_version(monkeypatch, heads_cached_train_argv(world, out, *flags, "--time-budget", "0"))


def _whole_and_interrupted(
    monkeypatch: pytest.MonkeyPatch, world: TrainWorld, tmp_path: Path, flags: list[str]
) -> Path:
    """Train ``tmp_path / "whole"`` to the end and ``tmp_path / "m"`` (returned) :func:`_interrupted`, both with
    ``flags`` as an earlier version."""
    _as_an_earlier_version(monkeypatch, heads_cached_train_argv(world, tmp_path / "whole", *flags))
    out = tmp_path / "m"
    _interrupted(monkeypatch, world, out, *flags)
    return out


def _resumed_with_warnings(
    world: TrainWorld,
    out: Path,
    flags: list[str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """Resume ``out`` with ``flags`` to the end; the WARNING lines that the run continues with those flags."""
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(heads_cached_train_argv(world, out, *flags, "--resume")) == 0, capsys.readouterr().err
    assert "after 3 steps (finished)" in capsys.readouterr().out
    return _warnings(caplog, "continues with the flags it started with")


def _assert_same_weights(whole: Path, resumed: Path) -> None:
    """The two trained models' ``delta.safetensors`` hold the same tensors, byte for byte."""
    expected, got = load_file(whole / "delta.safetensors"), load_file(resumed / "delta.safetensors")
    assert expected.keys() == got.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, got[key]), key


@pytest.mark.parametrize("flags", FLAGS, ids=["negatives", "bm25", "model"])
def test_an_earlier_checkpoint_resumes_with_its_flags_to_the_uninterrupted_weights(
    train_world: TrainWorld,
    tmp_path: Path,
    flags: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _whole_and_interrupted(monkeypatch, train_world, tmp_path, flags)
    warned = _resumed_with_warnings(train_world, out, flags, caplog, capsys)
    assert len(warned) == 1, warned
    assert " ".join(flags[:2]) in warned[0] and "play no part in the loss" in warned[0], warned[0]
    assert "which positive trains" in warned[0] and "a new run refuses them" in warned[0], warned[0]
    _assert_same_weights(tmp_path / "whole", out)
    # a new run with the flags is still refused
    assert main(heads_cached_train_argv(train_world, tmp_path / "new", *flags)) == 2
    assert "would play no part in the loss" in cli_error_line(capsys, "train")


def test_flags_the_checkpoint_was_not_written_with_are_still_refused_on_resume(
    train_world: TrainWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--time-budget", "0")) == 0  # a checkpoint without them
    assert main(heads_cached_train_argv(train_world, out, "--negatives", "3", "--resume")) == 2
    assert "--negatives 3 would play no part in the loss" in cli_error_line(capsys, "train")
    # an earlier checkpoint's flags with another value: refused, naming what the checkpoint was written with
    old = tmp_path / "old"
    _interrupted(monkeypatch, train_world, old, "--negatives", "3")
    with caplog.at_level(logging.WARNING):
        assert main(heads_cached_train_argv(train_world, old, "--negatives", "2", "--resume")) == 2
    err = cli_error_line(capsys, "train")
    assert "--negatives 2 would play no part in the loss" in err, err
    assert "was written with --negatives 3" in err, err
    assert not _warnings(caplog, "continues with the flags it started with")


@pytest.mark.parametrize("field", ["config", "cli"])
def test_a_damaged_recipe_is_refused_as_damaged_when_resumed_with_the_flags(
    train_world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    """A ``state.json`` whose recipe's ``config`` or ``cli`` is no object is named as damaged (the field), not
    answered with the refusal of flags that would play no part in the loss."""
    import json

    out = tmp_path / "m"
    assert main(heads_cached_train_argv(train_world, out, "--time-budget", "0")) == 0
    (state,) = tmp_path.glob("*/state.json")
    meta = json.loads(state.read_text())
    meta["recipe"][field] = "x"
    state.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(heads_cached_train_argv(train_world, out, "--negatives", "3", "--resume")) == 2
    err = cli_error_line(capsys, "train")
    assert f"field 'recipe.{field}' must be an object" in err and "would play no part" not in err, err
